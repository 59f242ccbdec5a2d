"""Request and response bodies of the operator API for tenants and plans (``/admin/v1/tenants|plans``)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, field_validator

from tenantq.core.text_checks import SafeRequest, SafeResponse


def clean_name(value: str) -> str:
    """Names are labels: any printable unicode (RTL, emoji) is fine; control characters are not."""
    value = value.strip()
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters")
    return value


# ------------------------------------------------------------------------------------ plans + limits
INT32_MAX = 2**31 - 1


class LimitOverrides(SafeRequest):
    """The limit fields a plan carries and a tenant may override. Bounds keep one typo from becoming
    an outage (a rate of 0 would block a tenant; an absurd concurrency would starve everyone)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    submit_rate: StrictFloat | None = Field(
        default=None, gt=0, le=1_000_000, description="Jobs/s accepted at the API."
    )
    submit_burst: StrictInt | None = Field(
        default=None, ge=1, le=10_000_000, description="Submission bucket size."
    )
    exec_rate: StrictFloat | None = Field(
        default=None, gt=0, le=1_000_000, description="Jobs/s released to workers."
    )
    concurrency: StrictInt | None = Field(default=None, ge=1, le=100_000, description="Jobs running at once.")
    max_queued: StrictInt | None = Field(
        default=None, ge=1, le=1_000_000_000, description="Pending jobs allowed."
    )
    weight: StrictInt | None = Field(default=None, ge=1, le=1000, description="Fair-share weight.")
    priority_min: StrictInt | None = Field(default=None, ge=0, le=9)
    priority_max: StrictInt | None = Field(default=None, ge=0, le=9)
    max_time_limit_s: StrictInt | None = Field(default=None, ge=1, le=7 * 24 * 3600)
    max_retries: StrictInt | None = Field(default=None, ge=0, le=100)
    # INTEGER columns: 32 bits on PostgreSQL, which refuses more (a 500 before this bound).
    included_jobs: StrictInt | None = Field(default=None, ge=0, le=INT32_MAX)
    included_compute_seconds: StrictInt | None = Field(default=None, ge=0, le=INT32_MAX)
    hard_limits: StrictBool | None = None


LIMIT_FIELDS: tuple[str, ...] = tuple(LimitOverrides.model_fields)


class PlanUpdate(LimitOverrides):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"submit_rate": 50.0, "concurrency": 40, "included_jobs": 100000}]}
    )

    display_name: str | None = Field(default=None, max_length=128)
    currency: str | None = Field(default=None, pattern=r"^[a-z]{3}$", description="ISO 4217, lower case.")
    base_fee: Decimal | None = Field(default=None, ge=0, max_digits=18, decimal_places=6)

    @field_validator("display_name")
    @classmethod
    def _display(cls, v: str | None) -> str | None:
        return None if v is None else clean_name(v)


class PlanCreate(PlanUpdate):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "team",
                    "display_name": "Team",
                    "submit_rate": 20.0,
                    "submit_burst": 100,
                    "concurrency": 10,
                    "priority_min": 0,
                    "priority_max": 7,
                    "currency": "eur",
                    "base_fee": "49.00",
                }
            ]
        }
    )

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="Plan id: lower case, digits, - and _."
    )


class PlanOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    display_name: str
    submit_rate: float
    submit_burst: int
    exec_rate: float
    concurrency: int
    max_queued: int
    weight: int
    priority_min: int
    priority_max: int
    max_time_limit_s: int
    max_retries: int
    included_jobs: int
    included_compute_seconds: int
    hard_limits: bool
    currency: str
    base_fee: Decimal
    created_at: datetime


class PlanList(BaseModel):
    items: list[PlanOut]


# ------------------------------------------------------------------------------------------- tenants
class TenantCreate(SafeRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "Acme", "plan": "free", "overrides": {"concurrency": 20}}]},
    )

    name: str = Field(min_length=1, max_length=128)
    plan: str = Field(default="free", max_length=64)
    overrides: dict[str, Any] = Field(default_factory=dict, description="Per-tenant limit overrides.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        v = clean_name(v)
        if not v:
            raise ValueError("must not be blank")
        return v


class TenantUpdate(SafeRequest):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "Acme Corp", "overrides": {}}]}
    )

    name: str | None = Field(default=None, min_length=1, max_length=128)
    plan: str | None = Field(default=None, max_length=64)
    overrides: dict[str, Any] | None = Field(
        default=None, description="Replaces all overrides ({} clears them). Only limit fields are accepted."
    )
    billing_email: str | None = Field(
        default=None,
        max_length=254,
        description='Where invoices are emailed (copied to the Stripe customer); null or "" clears it.',
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return None if v is None else clean_name(v)


class TenantOut(SafeResponse):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    plan: str = Field(validation_alias="plan_name")
    status: str
    overrides: dict[str, Any]
    billing_email: str | None = None
    created_at: datetime


class TenantList(BaseModel):
    items: list[TenantOut]
