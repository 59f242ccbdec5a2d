"""Operator usage report across tenants (``/admin/v1/reports/usage``)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from tenantq.billing.invoicing import reports
from tenantq.billing.invoicing.schemas import OperatorUsageReport
from tenantq.billing.usage import quotas
from tenantq.core.dependencies import PeriodQuery, SessionDep
from tenantq.tenants.access.dependencies import Operator

router = APIRouter(prefix="/admin/v1", tags=["admin"])


@router.get(
    "/reports/usage",
    summary="Usage and revenue across tenants for a period",
    description="One row per tenant (jobs, attempts, compute and wall seconds, charges including fixed "
    "fees) for a calendar month (UTC), and revenue per plan. `format=csv` answers a CSV attachment of the "
    "tenant rows.",
    response_model=OperatorUsageReport,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
def usage_report(
    _operator: Operator,
    session: SessionDep,
    period: PeriodQuery = None,
    format: Annotated[Literal["json", "csv"], Query(description="Response format.")] = "json",
) -> OperatorUsageReport | Response:
    # Absent means the current month; an empty value is a malformed period (422 invalid_period).
    period = quotas.current_period() if period is None else period
    report = reports.operator_report(session, period)
    if format == "csv":
        return Response(
            reports.operator_report_csv(report),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="usage-{period}-tenants.csv"'},
        )
    return OperatorUsageReport.model_validate(report)
