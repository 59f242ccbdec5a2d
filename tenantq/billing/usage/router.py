"""Tenant usage routes: current quotas (``/v1/usage``) and usage reports (``/v1/usage/report``)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from tenantq.billing.invoicing import reports
from tenantq.billing.usage import quotas
from tenantq.billing.usage.schemas import UsageOut, UsageReport
from tenantq.core.dependencies import SessionDep
from tenantq.tenants.access.dependencies import UsageRead

router = APIRouter(prefix="/v1", tags=["usage"])

PeriodParam = Annotated[
    str | None, Query(max_length=7, description="Calendar month, UTC: YYYY-MM. Default: the current month.")
]


@router.get(
    "/usage",
    response_model=UsageOut,
    summary="Current period usage against every quota",
    description="Jobs and compute seconds used in the current calendar month (UTC) against the plan's "
    "included amounts (`hard`: over the limit new jobs answer 402; soft: overage is billed), plus running "
    "and queued jobs against the plan's concurrency and queue limits. Jobs count when accepted; compute "
    "seconds when the attempt's usage has been recorded (within seconds of its end).",
)
def get_usage(ctx: UsageRead, session: SessionDep) -> UsageOut:
    return UsageOut.model_validate(quotas.usage_summary(session, ctx.tenant))


@router.get(
    "/usage/report",
    response_model=UsageReport,
    summary="Usage report for a period, by task type or by day",
    description="Jobs, attempts, compute (CPU) seconds, wall seconds and charges for one calendar month "
    "(UTC), grouped by task type or by UTC day. Quantities and amounts are decimal strings. "
    "`format=csv` answers a CSV attachment with the columns key, jobs, attempts, compute_seconds, "
    "wall_seconds, charges and a final `total` row. Row charges are the period's usage charges spread "
    "over the rows pro rata (to the cent); fixed fees appear in `totals.fixed_charges`.",
    responses={200: {"content": {"application/json": {}, "text/csv": {}}}},
)
def get_usage_report(
    ctx: UsageRead,
    session: SessionDep,
    period: PeriodParam = None,
    group_by: Annotated[Literal["task", "day"], Query(description="Row key: task type or UTC day.")] = "task",
    format: Annotated[Literal["json", "csv"], Query(description="Response format.")] = "json",
) -> UsageReport | Response:
    period = period or quotas.current_period()
    report = reports.tenant_report(session, ctx.tenant, period, group_by)
    if format == "csv":
        return Response(
            reports.tenant_report_csv(report),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="usage-{period}-by-{group_by}.csv"'},
        )
    return UsageReport.model_validate(report)
