"""HTTP routes: tenants' invoices and priced usage reports, the Stripe webhook, and the operator's periods
and prices."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.orm import Session

from tenantq.billing.invoicing import pricing, reports, service
from tenantq.billing.invoicing.models import BillingPeriod
from tenantq.billing.invoicing.repository import InvoiceRepository
from tenantq.billing.invoicing.schemas import (
    BillingPeriodOut,
    BillingPeriodsOut,
    CloseIn,
    CloseOut,
    InvoiceList,
    InvoiceOut,
    PriceIn,
    PriceList,
    PriceOut,
    UsageReport,
)
from tenantq.billing.invoicing.stripe_sync import parse_event, record_event
from tenantq.billing.invoicing.tasks import stripe_event
from tenantq.billing.usage import quotas
from tenantq.core.db import session_factory
from tenantq.core.dependencies import SessionDep
from tenantq.core.errors import NotFound
from tenantq.core.settings import get_settings
from tenantq.tenants.access.dependencies import BillingRead, Operator, UsageRead
from tenantq.tenants.accounts.models import Plan

log = logging.getLogger("tenantq.billing")

router = APIRouter()


@router.get(
    "/v1/invoices", response_model=InvoiceList, tags=["billing"], summary="List your invoices, newest first"
)
def list_invoices(
    ctx: BillingRead,
    session: SessionDep,
    status: Annotated[
        Literal["open", "paid", "void"] | None, Query(description="Only invoices in this status.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 24,
    cursor: Annotated[
        str | None, Query(max_length=512, description="next_cursor of the previous page.")
    ] = None,
) -> InvoiceList:
    items, next_cursor = InvoiceRepository(session, ctx.tenant_id).list(
        status=status, limit=limit, cursor=cursor
    )
    return InvoiceList(items=[InvoiceOut.of(i) for i in items], next_cursor=next_cursor)


@router.get(
    "/v1/invoices/{invoice_id}", response_model=InvoiceOut, tags=["billing"], summary="Get an invoice"
)
def get_invoice(invoice_id: str, ctx: BillingRead, session: SessionDep) -> InvoiceOut:
    return InvoiceOut.of(InvoiceRepository(session, ctx.tenant_id).get(invoice_id))


PeriodParam = Annotated[
    str | None, Query(max_length=7, description="Calendar month, UTC: YYYY-MM. Default: the current month.")
]


@router.get(
    "/v1/usage/report",
    response_model=UsageReport,
    tags=["usage"],
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


def _accept_event(payload: bytes, signature: str | None) -> dict[str, Any]:
    event = parse_event(payload, signature)
    session = session_factory()()
    try:
        row, created = record_event(session, event)
        processed = row.processed_at is not None
    finally:
        session.close()
    if not processed:
        # After the commit (record_event committed). Queued again for a redelivery of an event not yet
        # applied (the task is idempotent); if the broker is down, billing.stripe_event_sweep applies it.
        try:
            stripe_event.apply_async(args=(event["id"],))
        except Exception:  # the stored event is picked up by the sweep
            log.warning(
                "could not queue stripe event %s; the sweep will apply it", event["id"], exc_info=True
            )
    return {"received": True, "id": event["id"], "duplicate": not created, "processed": processed}


@router.post(
    "/v1/stripe/webhook",
    tags=["billing"],
    summary="Stripe webhook endpoint",
    description="Verifies the `Stripe-Signature` header over the raw body (400 `invalid_signature` if it "
    "does not match or is older than the tolerance), stores the event once per Stripe event id and applies "
    "it in the `billing.stripe_event` task. A replayed event answers 200 with `duplicate: true` and changes "
    "nothing.",
)
async def stripe_webhook(request: Request) -> dict[str, Any]:
    # The signature covers the exact bytes Stripe sent: read them before anything parses the body.
    payload = await request.body()
    return await run_in_threadpool(_accept_event, payload, request.headers.get("stripe-signature"))


# --- Operator -------------------------------------------------------------------------------------


@router.get(
    "/admin/v1/billing/periods",
    response_model=BillingPeriodsOut,
    tags=["admin"],
    summary="Closed billing periods and the ones due",
)
def list_periods(_op: Operator, session: SessionDep) -> BillingPeriodsOut:
    rows = session.scalars(select(BillingPeriod).order_by(BillingPeriod.period.desc()))
    return BillingPeriodsOut(
        items=[BillingPeriodOut.model_validate(r) for r in rows],
        due=service.due_periods(session),
        grace_seconds=get_settings().billing_grace_seconds,
    )


@router.post(
    "/admin/v1/billing/close",
    response_model=CloseOut,
    tags=["admin"],
    summary="Close a billing period and issue its invoices",
    description="Idempotent: closing a closed period returns its invoices with `created: false`. Earlier "
    "months that are still open are closed first, oldest first, in the same transaction (`also_closed` "
    "names them), so no month's base fees are skipped. 409 `period_not_due` inside the grace window unless "
    "`force`, `period_not_ended` before the month ended, `period_out_of_order` for a month before the last "
    "closed one.",
)
def close(body: CloseIn, op: Operator, session: SessionDep, response: Response) -> CloseOut:
    result = service.close_period(session, body.period, force=body.force, closed_by=op.subject)
    response.status_code = 201 if result.created else 200
    return CloseOut.of(result)


def _plan(session: Session, name: str) -> Plan:
    plan = session.get(Plan, name)
    if plan is None:
        raise NotFound(f"No plan named {name!r}.", details={"plan": name})
    return plan


@router.get(
    "/admin/v1/billing/prices", response_model=PriceList, tags=["admin"], summary="Every plan's prices"
)
def get_prices(
    _op: Operator, session: SessionDep, plan: Annotated[str | None, Query(max_length=64)] = None
) -> PriceList:
    prices = pricing.list_prices(session, plan)
    return PriceList(items=[PriceOut.of(p, _plan(session, p.plan_name)) for p in prices])


@router.put(
    "/admin/v1/billing/prices/{plan}/{metric}",
    response_model=PriceOut,
    tags=["admin"],
    summary="Create or replace a plan's price for one metric",
    description="Takes effect at the next period close; closed invoices keep their lines.",
)
def put_price(plan: str, metric: str, body: PriceIn, _op: Operator, session: SessionDep) -> PriceOut:
    price = pricing.set_price(
        session,
        plan_name=plan,
        metric=metric,
        included_units=body.included_units,
        description=body.description,
        tiers=[(t.up_to, t.unit_price) for t in body.tiers],
    )
    return PriceOut.of(price, _plan(session, plan))


@router.delete(
    "/admin/v1/billing/prices/{plan}/{metric}",
    status_code=204,
    tags=["admin"],
    summary="Stop charging a metric on a plan",
)
def delete_price(plan: str, metric: str, _op: Operator, session: SessionDep) -> Response:
    pricing.delete_price(session, plan_name=plan, metric=metric)
    return Response(status_code=204)
