"""HTTP routes: tenants' invoices and priced usage reports, the Stripe webhook, and the operator's periods
and prices."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import AwareDatetime
from sqlalchemy import select
from sqlalchemy.orm import Session

from tenantq.billing.invoicing import corrections, pricing, reports, service, stripe_sync
from tenantq.billing.invoicing.models import BillingPeriod, CreditNote, Invoice
from tenantq.billing.invoicing.repository import InvoiceRepository
from tenantq.billing.invoicing.schemas import (
    AuditEntryOut,
    AuditList,
    BillingPeriodOut,
    BillingPeriodsOut,
    BillingSettings,
    BillingSettingsIn,
    CloseIn,
    CloseOut,
    CreditNoteIn,
    CreditNoteOut,
    InvoiceList,
    InvoiceOut,
    PriceIn,
    PriceList,
    PriceOut,
    StripeEventAck,
    StripeOutcome,
    UsageReport,
    VoidIn,
    VoidOut,
)
from tenantq.billing.invoicing.stripe_sync import StripeSyncError, parse_event, record_event
from tenantq.billing.invoicing.tasks import stripe_event
from tenantq.billing.usage import quotas
from tenantq.core import audit
from tenantq.core.db import session_factory
from tenantq.core.dependencies import CursorQuery, PeriodQuery, SessionDep
from tenantq.core.errors import InvalidInput, NotFound
from tenantq.core.openapi import errors
from tenantq.core.repository import decode_cursor, encode_cursor
from tenantq.core.settings import get_settings
from tenantq.tenants.access.dependencies import BillingRead, KeysManage, Operator, UsageRead
from tenantq.tenants.accounts.models import Plan, Tenant
from tenantq.tenants.accounts.service import update_tenant

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
    cursor: CursorQuery = None,
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
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
def get_usage_report(
    ctx: UsageRead,
    session: SessionDep,
    period: PeriodQuery = None,
    group_by: Annotated[Literal["task", "day"], Query(description="Row key: task type or UTC day.")] = "task",
    format: Annotated[Literal["json", "csv"], Query(description="Response format.")] = "json",
) -> UsageReport | Response:
    # Absent means the current month; an empty value is a malformed period (422 invalid_period).
    period = quotas.current_period() if period is None else period
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
    response_model=StripeEventAck,
    responses=errors(
        400,
        503,
        s400="Missing or wrong `Stripe-Signature` (code `invalid_signature`), or a body that is not an "
        "event.",
        s503="Stripe webhooks are not configured (code `stripe_webhook_not_configured`).",
    ),
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
    responses={201: {"model": CloseOut, "description": "The period was closed now."}, **errors(409)},
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
    summary="Add a version of a plan's price for one metric",
    description="The version takes effect at `effective_from` (default now) and lasts until the next one: "
    "usage is rated by the version in force when it occurred, in open periods and in a reissue; issued "
    "invoices never change. A version with the same `effective_from` is replaced. Audited.",
)
def put_price(plan: str, metric: str, body: PriceIn, op: Operator, session: SessionDep) -> PriceOut:
    price = pricing.set_price(
        session,
        actor=f"operator:{op.subject}",
        plan_name=plan,
        metric=metric,
        included_units=body.included_units,
        description=body.description,
        tiers=[(t.up_to, t.unit_price) for t in body.tiers],
        effective_from=body.effective_from,
    )
    return PriceOut.of(price, _plan(session, plan))


@router.delete(
    "/admin/v1/billing/prices/{plan}/{metric}",
    status_code=204,
    tags=["admin"],
    summary="Stop charging a metric on a plan",
    description="From `effective_from` (ISO 8601, default now): usage that occurred earlier keeps its "
    "price. Audited.",
)
def delete_price(
    plan: str,
    metric: str,
    op: Operator,
    session: SessionDep,
    effective_from: Annotated[AwareDatetime | None, Query()] = None,
) -> Response:
    pricing.delete_price(
        session, plan_name=plan, metric=metric, actor=f"operator:{op.subject}", effective_from=effective_from
    )
    return Response(status_code=204)


# --- Operator: corrections and the audit log ----------------------------------------------------------


def _stripe_void_and_reissue(session: Session, voided: Invoice, reissued: Invoice | None) -> StripeOutcome:
    if not stripe_sync.stripe_configured():
        return StripeOutcome(configured=False)
    outcome = StripeOutcome(configured=True)
    try:
        client = stripe_sync.stripe_client()
        outcome.status = stripe_sync.void_stripe_invoice(session, client, voided)
        if reissued is not None:
            outcome.reissued_stripe_invoice_id = stripe_sync.sync_invoice(
                session, client, reissued
            ).stripe_invoice_id
    except StripeSyncError as exc:
        outcome.error = exc.message
    return outcome


@router.post(
    "/admin/v1/billing/invoices/{invoice_id}/void",
    response_model=VoidOut,
    tags=["admin"],
    summary="Void an invoice, optionally reissuing it",
    description="Voids an open invoice (409 `invoice_paid` for a paid one: issue a credit note; 409 "
    "`invoice_void` if already void). With `reissue`, the next revision is issued at once, re-rated from "
    "the usage the period billed for this tenant with the prices and plan in force now. Both are "
    "recorded in the audit log and, when Stripe is configured, pushed to Stripe (the Stripe invoice is "
    "voided, the reissue synced); a Stripe failure is reported in `stripe.error` and the correction "
    "stands (retry with `tenantq billing stripe-sync`).",
)
def void_invoice(invoice_id: str, body: VoidIn, op: Operator, session: SessionDep) -> VoidOut:
    invoice = corrections.get_invoice(session, invoice_id)
    reissued = corrections.void_invoice(
        session, invoice, reason=body.reason, reissue=body.reissue, actor=f"operator:{op.subject}"
    )
    session.commit()
    outcome = _stripe_void_and_reissue(session, invoice, reissued)
    return VoidOut(
        voided=InvoiceOut.of(invoice),
        reissued=InvoiceOut.of(reissued) if reissued is not None else None,
        stripe=outcome,
    )


def credit_note_out(session: Session, note: CreditNote, outcome: StripeOutcome) -> CreditNoteOut:
    invoice = session.get_one(Invoice, note.invoice_id)
    cur = note.currency
    return CreditNoteOut(
        id=note.id,
        invoice_id=note.invoice_id,
        tenant_id=note.tenant_id,
        currency=cur,
        amount=pricing.format_amount(note.amount, cur),
        reason=note.reason,
        created_at=note.created_at,
        created_by=note.created_by,
        stripe_credit_note_id=note.stripe_credit_note_id,
        invoice=InvoiceOut.of(invoice),
        invoice_credited=pricing.format_amount(corrections.credited(session, invoice.id), cur),
        stripe=outcome,
    )


@router.post(
    "/admin/v1/billing/invoices/{invoice_id}/credit-notes",
    response_model=CreditNoteOut,
    status_code=201,
    tags=["admin"],
    summary="Credit part or all of an invoice",
    description="Issues a credit note against an open or paid invoice; the invoice's lines and total do "
    "not change. 409 `credit_exceeds_invoice` if the invoice's credit notes would exceed its total, "
    "`invoice_void` for a void invoice; 422 `invalid_amount` for more digits than the currency has. An "
    "open invoice credited in full is marked paid. Recorded in the audit log and, when Stripe is "
    "configured and the invoice was pushed, created as a Stripe credit note (for a paid invoice, credited "
    "to the customer's balance).",
)
def create_credit_note(
    invoice_id: str, body: CreditNoteIn, op: Operator, session: SessionDep
) -> CreditNoteOut:
    invoice = corrections.get_invoice(session, invoice_id)
    note = corrections.issue_credit_note(
        session, invoice, amount=body.amount, reason=body.reason, actor=f"operator:{op.subject}"
    )
    session.commit()
    outcome = StripeOutcome(configured=stripe_sync.stripe_configured())
    if outcome.configured:
        try:
            outcome.credit_note_id = stripe_sync.sync_credit_note(session, stripe_sync.stripe_client(), note)
        except StripeSyncError as exc:
            outcome.error = exc.message
    return credit_note_out(session, note, outcome)


@router.get(
    "/admin/v1/billing/invoices/{invoice_id}",
    response_model=InvoiceOut,
    tags=["admin"],
    summary="Any tenant's invoice (including void revisions)",
)
def admin_get_invoice(invoice_id: str, _op: Operator, session: SessionDep) -> InvoiceOut:
    return InvoiceOut.of(corrections.get_invoice(session, invoice_id))


@router.get(
    "/admin/v1/audit",
    response_model=AuditList,
    tags=["admin"],
    summary="The audit log: plan, price, tenant plan/override/billing email and invoice changes",
    description="Newest first. Each entry says who (`actor`: `operator:<subject>`, `cli`, `tenant:<id>`, "
    "`system`), when, what (`action`, `entity_type`, `entity_id`) and the changed fields before and after "
    "(decimals as strings). Filter by `entity_type`, `entity_id`, `tenant_id` or `action`; page with "
    "`cursor` (the previous page's `next_cursor`).",
)
def list_audit(
    _op: Operator,
    session: SessionDep,
    entity_type: Annotated[
        Literal["plan", "price", "tenant", "invoice", "billing_period"] | None, Query()
    ] = None,
    entity_id: Annotated[str | None, Query(max_length=128)] = None,
    tenant_id: Annotated[str | None, Query(max_length=36)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> AuditList:
    before = None
    if cursor:
        raw_at, last_id = decode_cursor(cursor)
        try:
            before = (datetime.fromisoformat(raw_at), last_id)
        except ValueError:
            raise InvalidInput("Invalid cursor.", code="invalid_cursor") from None
    rows = audit.entries(
        session,
        entity_type=entity_type,
        entity_id=entity_id,
        tenant_id=tenant_id,
        action=action,
        limit=limit + 1,
        before_id=before,
    )
    next_cursor = encode_cursor(rows[limit - 1].at, rows[limit - 1].id) if len(rows) > limit else None
    return AuditList(items=[AuditEntryOut.model_validate(r) for r in rows[:limit]], next_cursor=next_cursor)


# --- Tenant: billing settings ---------------------------------------------------------------------


@router.get(
    "/v1/billing/settings",
    response_model=BillingSettings,
    tags=["billing"],
    summary="Your billing settings",
    description="`billing_email`: where invoices are emailed (scope `billing:read`).",
)
def get_billing_settings(ctx: BillingRead) -> BillingSettings:
    return BillingSettings(billing_email=ctx.tenant.billing_email)


@router.put(
    "/v1/billing/settings",
    response_model=BillingSettings,
    tags=["billing"],
    summary="Change your billing email",
    description='Needs the account-administration scope `keys:manage`. `billing_email` null or "" '
    "clears it; 422 `invalid_billing_email` if it is not an address. Stripe's customer gets the new "
    "address at the next invoice sync. Recorded in the audit log as `tenant:<id>`.",
)
def put_billing_settings(body: BillingSettingsIn, ctx: KeysManage, session: SessionDep) -> BillingSettings:
    tenant = session.get_one(Tenant, ctx.tenant_id)
    update_tenant(session, tenant, billing_email=body.billing_email, actor=f"tenant:{ctx.tenant_id}")
    session.commit()
    return BillingSettings(billing_email=tenant.billing_email)
