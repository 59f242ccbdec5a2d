"""Tenant usage route: the current period's usage against the plan's quotas (``/v1/usage``).

The priced usage report (``/v1/usage/report``) is served by the invoicing router, which owns prices.
"""

from __future__ import annotations

from fastapi import APIRouter

from tenantq.billing.usage import service
from tenantq.billing.usage.schemas import UsageOut
from tenantq.core.dependencies import SessionDep
from tenantq.tenants.access.dependencies import UsageRead

router = APIRouter(prefix="/v1", tags=["usage"])


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
    return UsageOut.model_validate(service.usage_summary(session, ctx.tenant))
