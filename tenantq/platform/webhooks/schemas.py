"""Request and response bodies of the webhooks API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tenantq.core.text_checks import SafeRequest, SafeResponse

WebhookEvent = Literal["job.succeeded", "job.failed"]
EVENT_TYPES: tuple[str, ...] = ("job.succeeded", "job.failed")


class WebhookCreate(SafeRequest):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=8,
        max_length=2048,
        # Scheme and host, as check_url requires; whether the host is allowed is decided on registration.
        pattern=r"^https?://[^/?#@\s]+([/?#]\S*)?$",
        json_schema_extra={"format": "uri"},
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
