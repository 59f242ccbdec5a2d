"""Response body of the tenant usage route (``/v1/usage``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class UsagePeriod(BaseModel):
    start: str = Field(description="First instant of the calendar month, UTC (ISO 8601, 'Z').")
    end: str = Field(description="First instant of the next month, UTC: the period ends before it.")


class QuotaOut(BaseModel):
    name: Literal["jobs", "compute_seconds", "concurrent_jobs", "queued_jobs"]
    used: int | float
    limit: int | float
    unit: Literal["jobs", "seconds"]
    hard: bool = Field(description="Over a hard limit new jobs are refused; soft overage is billed.")
    resets_at: str | None = Field(description="When the count starts again (period quotas only).")


class UsageOut(BaseModel):
    period: UsagePeriod
    quotas: list[QuotaOut]
