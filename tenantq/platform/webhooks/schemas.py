"""Request and response bodies of the webhooks API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tenantq.core.text_checks import SafeRequest, SafeResponse

# A webhook URL: http(s), a host, no credentials, no white space.
URL_PATTERN = r"^https?://[^/?#@\s]+([/?#]\S*)?$"

WebhookEvent = Literal["job.succeeded", "job.failed"]
EVENT_TYPES: tuple[str, ...] = ("job.succeeded", "job.failed")


class WebhookCreate(SafeRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://hooks.example.com/tenantq",
                    "events": ["job.succeeded", "job.failed"],
                    "description": "order service",
                }
            ]
        },
    )

    url: str = Field(
        min_length=8,
        max_length=2048,
        # Published; the service checks it (422 webhook_url_not_allowed), then the network policy.
        json_schema_extra={"format": "uri", "pattern": URL_PATTERN},
        description="https:// (or http://) URL to POST events to. "
        "Private and loopback addresses are refused unless the operator allows them.",
    )
    events: list[WebhookEvent] = Field(min_length=1, max_length=10, description="Event types to receive.")
    description: str = Field(default="", max_length=512)


class WebhookOut(SafeResponse):
    model_config = ConfigDict(from_attributes=True)

    id: str
    url: str
    events: list[str]
    description: str
    enabled: bool
    created_at: datetime


class WebhookCreated(WebhookOut):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "0192f3c4-9b2c-7e3f-a011-6c7d8e9f0a12",
                    "url": "https://hooks.example.com/tenantq",
                    "events": ["job.succeeded", "job.failed"],
                    "description": "order service",
                    "enabled": True,
                    "created_at": "2026-11-30T12:00:00Z",
                    "secret": "whsec_3q2-7wXf0cK1mZ9aLr5yT8uVb4nE6hJd",
                }
            ]
        }
    )

    secret: str = Field(description="Signing secret (shown once). Verify 'tenantq-signature' with it.")


class WebhookList(BaseModel):
    items: list[WebhookOut]


class DeliveryAttemptOut(SafeResponse):
    model_config = ConfigDict(from_attributes=True)

    attempt: int
    status_code: int | None = None
    error: str | None = None
    duration_ms: float
    created_at: datetime


class DeliveryOut(SafeResponse):
    id: str
    event_id: str
    event_type: str
    job_id: str | None = None
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    next_attempt_at: datetime | None = None
    created_at: datetime
    finished_at: datetime | None = None
    attempt_log: list[DeliveryAttemptOut]


class DeliveryList(BaseModel):
    items: list[DeliveryOut]
