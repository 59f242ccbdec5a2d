"""Response bodies of the tenant usage routes (``/v1/usage`` and ``/v1/usage/report``)."""

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


class UsageFigures(BaseModel):
    """Quantities and amounts are decimal strings (seconds to the millisecond, charges to the cent)."""

    jobs: int
    attempts: int
    compute_seconds: str
    wall_seconds: str
    charges: str


class UsageReportRow(BaseModel):
    key: str = Field(description="Task type or UTC day (YYYY-MM-DD), per group_by.")
    jobs: int
    attempts: int
    compute_seconds: str
    wall_seconds: str
    charges: str


class UsageReportTotals(UsageFigures):
    fixed_charges: str = Field(description="Fixed fees of the period (not spread over rows).")
    total_charges: str


class UsageReport(BaseModel):
    period: str
    group_by: Literal["task", "day"]
    currency: str | None
    priced: bool
    rows: list[UsageReportRow]
    totals: UsageReportTotals
