"""Request and response bodies of the schedules API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from tenantq.core.text_checks import SafeRequest, SafeResponse
from tenantq.platform.jobs.schemas import TaskName

MAX_INTERVAL_S = 366 * 24 * 3600

_CRON = (
    "Standard 5-field cron expression (minute hour day-of-month month day-of-week), e.g. '0 8 * * 1', "
    "or @hourly/@daily/@weekly/@monthly/@yearly. Give either cron or interval_seconds."
)
_TZ = "IANA time zone the cron expression is read in, e.g. 'Europe/Paris' (default UTC). DST is honoured."
_INTERVAL = "Fire every N seconds (bounded below by the plan). Give either cron or interval_seconds."


class ScheduleCreate(SafeRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "nightly export",
                    "task": "demo.echo",
                    "args": {"report": "daily"},
                    "cron": "0 3 * * *",
                    "timezone": "Europe/Paris",
                }
            ]
        },
    )

    name: str = Field(default="", max_length=128, description="A label for humans.")
    task: TaskName
    args: dict[str, Any] = Field(default_factory=dict, description="Arguments, validated like a job's.")
    priority: StrictInt = Field(default=5, ge=0, le=9, description="Priority of the jobs it creates, 0-9.")
    max_retries: StrictInt | None = Field(
        default=None, ge=0, le=100, description="max_retries of the jobs it creates (bounded by plan)."
    )
    cron: str | None = Field(default=None, min_length=1, max_length=128, description=_CRON)
    timezone: str = Field(default="UTC", min_length=1, max_length=64, description=_TZ)
    interval_seconds: StrictInt | None = Field(default=None, ge=1, le=MAX_INTERVAL_S, description=_INTERVAL)
    enabled: StrictBool = Field(
        default=True, description="Disabled schedules keep their settings but never fire."
    )


class ScheduleUpdate(SafeRequest):
    """Only the fields given change. Setting cron clears interval_seconds and vice versa."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"enabled": False}]})

    name: str | None = Field(default=None, max_length=128)
    task: TaskName | None = None
    args: dict[str, Any] | None = None
    priority: StrictInt | None = Field(default=None, ge=0, le=9)
    max_retries: StrictInt | None = Field(default=None, ge=0, le=100)
    cron: str | None = Field(default=None, min_length=1, max_length=128, description=_CRON)
    timezone: str | None = Field(default=None, min_length=1, max_length=64, description=_TZ)
    interval_seconds: StrictInt | None = Field(default=None, ge=1, le=MAX_INTERVAL_S, description=_INTERVAL)
    enabled: StrictBool | None = None


class ScheduleOut(SafeResponse):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    task: str
    args: dict[str, Any]
    priority: int
    max_retries: int | None = None
    cron: str | None = None
    timezone: str
    interval_seconds: int | None = None
    enabled: bool
    next_run_at: datetime | None = Field(default=None, description="Next firing (UTC); null while disabled.")
    last_run_at: datetime | None = Field(default=None, description="When it last fired (UTC).")
    last_job_id: str | None = Field(default=None, description="The job created by the last firing.")
    last_error: str | None = Field(
        default=None,
        description="Why the last firing created no job (e.g. rate limited, quota), if it did not.",
    )
    runs: int = Field(description="How many times it fired.")
    created_at: datetime
    updated_at: datetime


class ScheduleList(BaseModel):
    items: list[ScheduleOut]
    next_cursor: str | None = None
