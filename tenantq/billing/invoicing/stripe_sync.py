"""Stripe: push tenantq's own invoices to Stripe, and take Stripe's webhooks back.

tenantq is the rating engine: it prices usage itself (``billing.pricing``) and mirrors the result in
Stripe with the official SDK (``stripe.StripeClient``; ``TENANTQ_STRIPE_API_BASE`` points it at
another address, e.g. localstripe in tests):
- one customer per tenant (``stripe_customer`` row),
- one invoice item per invoice line (``invoice_line.stripe_invoice_item_id``),
- one Stripe invoice per tenantq invoice (``invoice.stripe_invoice_id``), created from the customer's
  pending items (``pending_invoice_items_behavior=include``) with ``collection_method=send_invoice``,
  ``days_until_due`` (``TENANTQ_STRIPE_DAYS_UNTIL_DUE``) and ``auto_advance=true``, then **finalized**
  at once (``POST /v1/invoices/{id}/finalize``): an open invoice Stripe emails to the customer's
  address (the tenant's ``billing_email``, copied to the customer on every sync) and collects, so
  ``invoice.paid`` comes back. ``invoice.stripe_status`` keeps Stripe's status after the last sync; a
  synced invoice still in ``draft`` (from before finalization existed, or a crash between create and
  finalize) is finalized by the next sync.
- corrections: ``void_stripe_invoice`` voids the mirror of a voided tenantq invoice,
  ``sync_credit_note`` creates a Stripe credit note (key ``tq-cn-{credit note}``) for a tenantq one.

Exactly once, twice over: every create carries an idempotency key derived from tenantq ids
(``tq-cus-{tenant}``, ``tq-ii-{line}``, ``tq-inv-{invoice}``), so Stripe itself returns the first object
when a retry repeats a call whose answer was lost; and tenantq stores every Stripe id in the same
step, committing right after each create, and looks it up before creating, so a re-run (a new call,
a new day, an emulator that ignores idempotency keys) creates nothing twice. Before creating an
invoice the customer's Stripe invoices are also searched for ``metadata.tenantq_invoice_id``, which
recovers the one window the store cannot cover (created in Stripe, crashed before the commit).

Optionally ``stream_meter_events`` sends usage events as Billing Meter events (``billing/meter_events``,
``identifier`` = usage event id, so Stripe dedupes a re-send).

Webhooks: ``verify_event`` checks the ``Stripe-Signature`` header on the raw body with
``stripe.Webhook.construct_event`` (HMAC-SHA256, timestamp tolerance; ``verify_event`` adds the
same tolerance for timestamps in the future), ``record_event`` stores the
event once per Stripe event id, and ``process_event`` (run by the ``billing.stripe_event`` task)
applies it idempotently: ``invoice.paid`` (or ``invoice.payment_succeeded``) marks the tenantq invoice
paid, ``invoice.voided`` voids an open one; other event types are stored and ignored.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import stripe
from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tenantq.billing.invoicing.models import (
    CreditNote,
    Invoice,
    StripeCustomer,
    StripeEvent,
    StripeMeterCursor,
)
from tenantq.billing.invoicing.pricing import to_minor_units
from tenantq.billing.invoicing.service import mark_paid
from tenantq.billing.usage.models import UsageEvent
from tenantq.core.db import utcnow
from tenantq.core.errors import ServiceUnavailable, TenantqError
from tenantq.core.periods import Period
from tenantq.core.settings import get_settings
from tenantq.tenants.accounts.models import Tenant

log = logging.getLogger("tenantq.billing.stripe")


class StripeSyncError(TenantqError):
    status_code = 502
    code = "stripe_error"


class InvalidSignature(TenantqError):
    status_code = 400
    code = "invalid_signature"


def stripe_client() -> stripe.StripeClient:
    settings = get_settings()
    if not settings.stripe_api_key:
        raise ServiceUnavailable(
            "Stripe is not configured (TENANTQ_STRIPE_API_KEY).", code="stripe_not_configured"
        )
    # The SDK retries network errors itself, reusing the idempotency key we pass on each call.
    return stripe.StripeClient(
        settings.stripe_api_key,
        base_addresses={"api": settings.stripe_api_base.rstrip("/")} if settings.stripe_api_base else None,
        max_network_retries=2,
    )


def stripe_configured() -> bool:
    return bool(get_settings().stripe_api_key)


@dataclass
class SyncResult:
    invoice_id: str
    tenant_id: str
    period: str
    stripe_customer_id: str | None = None
    stripe_invoice_id: str | None = None
    customer_created: bool = False
    items_created: int = 0
    invoice_created: bool = False
    finalized: bool = False
    stripe_status: str | None = None
    skipped: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _call(what: str, func, *args, **kwargs):
    try:
        return func(*args, **kwargs)
    except stripe.StripeError as exc:
        raise StripeSyncError(
            f"Stripe refused to {what}: {exc.user_message or exc}", details={"http_status": exc.http_status}
        ) from exc


def ensure_customer(session: Session, client: stripe.StripeClient, tenant: Tenant) -> tuple[str, bool]:
    """The tenant's Stripe customer id, created once. Returns (id, created)."""
    row = session.get(StripeCustomer, tenant.id)
    if row is not None:
        if tenant.billing_email:
            # The address Stripe emails invoices to follows the tenant's billing email.
            _call(
                "update a customer",
                client.v1.customers.update,
                row.customer_id,
                params={"email": tenant.billing_email, "name": tenant.name},
            )
        return row.customer_id, False
    params: dict[str, Any] = {"name": tenant.name, "metadata": {"tenantq_tenant_id": tenant.id}}
    if tenant.billing_email:
        params["email"] = tenant.billing_email
    customer = _call(
        "create a customer",
        client.v1.customers.create,
        params=params,
        options={"idempotency_key": f"tq-cus-{tenant.id}"},
    )
    session.add(StripeCustomer(tenant_id=tenant.id, customer_id=customer.id))
    session.commit()
    return customer.id, True


def metadata_value(obj: Any, key: str) -> str | None:
    """``obj.metadata[key]`` of a Stripe object (StripeObjects are mappings without ``.get``)."""
    try:
        return obj.metadata[key]
    except (AttributeError, KeyError, TypeError):
        return None


def _find_stripe_invoice(client: stripe.StripeClient, customer_id: str, invoice_id: str) -> Any | None:
    listing = _call("list invoices", client.v1.invoices.list, params={"customer": customer_id, "limit": 100})
    for candidate in listing.data:
        if metadata_value(candidate, "tenantq_invoice_id") == invoice_id:
            return candidate
    return None


FINAL_STRIPE_STATUSES = ("open", "paid", "void", "uncollectible")


def sync_invoice(session: Session, client: stripe.StripeClient, invoice: Invoice) -> SyncResult:
    """Mirror one tenantq invoice in Stripe, finalized; safe to call any number of times."""
    result = SyncResult(
        invoice_id=invoice.id,
        tenant_id=invoice.tenant_id,
        period=invoice.period,
        stripe_invoice_id=invoice.stripe_invoice_id,
        stripe_status=invoice.stripe_status,
    )
    if invoice.stripe_invoice_id is not None and invoice.stripe_status in FINAL_STRIPE_STATUSES:
        result.skipped = "already_synced"
        return result
    if invoice.stripe_invoice_id is None:
        if invoice.total <= 0:
            result.skipped = "zero_total"  # nothing to collect: no Stripe customer just for a receipt
            return result
        if invoice.status == "void":
            result.skipped = "void"
            return result
    tenant = session.get_one(Tenant, invoice.tenant_id)
    customer_id, result.customer_created = ensure_customer(session, client, tenant)
    result.stripe_customer_id = customer_id

    if invoice.stripe_invoice_id is not None:
        found = _call("read an invoice", client.v1.invoices.retrieve, invoice.stripe_invoice_id)
    else:
        found = _find_stripe_invoice(client, customer_id, invoice.id)
    if found is None:
        for line in invoice.lines:
            if line.stripe_invoice_item_id is not None:
                continue
            item = _call(
                "create an invoice item",
                client.v1.invoice_items.create,
                params={
                    "customer": customer_id,
                    "amount": to_minor_units(line.amount, invoice.currency),
                    "currency": invoice.currency,
                    "description": f"{line.description} x {line.quantity.normalize():f}",
                    "metadata": {"tenantq_invoice_id": invoice.id, "tenantq_line_id": line.id},
                },
                options={"idempotency_key": f"tq-ii-{line.id}"},
            )
            line.stripe_invoice_item_id = item.id
            session.commit()
            result.items_created += 1
        found = _call(
            "create an invoice",
            client.v1.invoices.create,
            params={
                "customer": customer_id,
                "description": f"tenantq usage {invoice.period}",
                "metadata": {
                    "tenantq_invoice_id": invoice.id,
                    "tenantq_period": invoice.period,
                    "tenantq_revision": str(invoice.revision),
                },
                "pending_invoice_items_behavior": "include",
                "collection_method": "send_invoice",
                "days_until_due": get_settings().stripe_days_until_due,
                "auto_advance": True,
            },
            options={"idempotency_key": f"tq-inv-{invoice.id}"},
        )
        result.invoice_created = True
    invoice.stripe_invoice_id = found.id
    invoice.stripe_status = found.status
    invoice.stripe_synced_at = utcnow()
    session.commit()
    if found.status == "draft":
        found = _call(
            "finalize an invoice",
            client.v1.invoices.finalize_invoice,
            found.id,
            params={"auto_advance": True},
            options={"idempotency_key": f"tq-fin-{invoice.id}"},
        )
        result.finalized = True
        invoice.stripe_status = found.status
        invoice.stripe_synced_at = utcnow()
        session.commit()
    result.stripe_invoice_id = found.id
    result.stripe_status = found.status
    expected = to_minor_units(invoice.total, invoice.currency)
    if getattr(found, "total", expected) != expected:
        log.warning(
            "stripe invoice %s totals %s, tenantq invoice %s totals %s",
            found.id,
            found.total,
            invoice.id,
            expected,
        )
    return result


def void_stripe_invoice(session: Session, client: stripe.StripeClient, invoice: Invoice) -> str | None:
    """Void the Stripe mirror of a voided tenantq invoice (a draft one is finalized first, as Stripe only
    voids open invoices). Returns Stripe's status, or None if the invoice was never pushed. Commits."""
    if invoice.stripe_invoice_id is None:
        return None
    found = _call("read an invoice", client.v1.invoices.retrieve, invoice.stripe_invoice_id)
    if found.status == "draft":
        found = _call(
            "finalize an invoice",
            client.v1.invoices.finalize_invoice,
            found.id,
            params={"auto_advance": False},
            options={"idempotency_key": f"tq-fin-{invoice.id}"},
        )
    if found.status == "open":
        found = _call(
            "void an invoice",
            client.v1.invoices.void_invoice,
            found.id,
            options={"idempotency_key": f"tq-void-{invoice.id}"},
        )
    invoice.stripe_status = found.status
    invoice.stripe_synced_at = utcnow()
    session.commit()
    return found.status


def sync_credit_note(session: Session, client: stripe.StripeClient, note: CreditNote) -> str | None:
    """Create the Stripe credit note of a tenantq one on its invoice's Stripe mirror (once). Returns the
    Stripe credit note id, or None when the invoice is not in Stripe. Commits."""
    if note.stripe_credit_note_id is not None:
        return note.stripe_credit_note_id
    invoice = session.get_one(Invoice, note.invoice_id)
    if invoice.stripe_invoice_id is None:
        return None
    stripe_invoice = _call("read an invoice", client.v1.invoices.retrieve, invoice.stripe_invoice_id)
    amount = to_minor_units(note.amount, note.currency)
    params: dict[str, Any] = {
        "invoice": invoice.stripe_invoice_id,
        "lines": [
            {
                "type": "custom_line_item",
                "description": note.reason[:250],
                "quantity": 1,
                "unit_amount": amount,
            }
        ],
        "memo": note.reason[:250],
        "metadata": {"tenantq_credit_note_id": note.id, "tenantq_invoice_id": invoice.id},
    }
    if stripe_invoice.status == "paid":
        params["credit_amount"] = amount  # to the customer's balance, used by their next invoice
    created = _call(
        "create a credit note",
        client.v1.credit_notes.create,
        params=params,
        options={"idempotency_key": f"tq-cn-{note.id}"},
    )
    note.stripe_credit_note_id = created.id
    session.commit()
    return created.id


def sync_period(session: Session, period: str, client: stripe.StripeClient | None = None) -> list[SyncResult]:
    """Sync every invoice of ``period`` (YYYY-MM). Commits as it goes."""
    name = Period.parse(period).name
    client = client or stripe_client()
    invoices = list(
        session.scalars(select(Invoice).where(Invoice.period == name).order_by(Invoice.tenant_id))
    )
    return [sync_invoice(session, client, invoice) for invoice in invoices]


# --- Billing Meter events (optional) -----------------------------------------------------------------

# Stripe accepts meter events up to 35 days old; older ones are counted and skipped.
METER_BACKDATE_LIMIT = timedelta(days=35)
# Only events recorded at least this long ago are streamed: a usage batch whose transaction is still
# open has recorded_at values behind the cursor and would otherwise be skipped forever.
METER_SETTLE = timedelta(seconds=60)


@dataclass
class MeterStreamResult:
    sent: int = 0
    duplicates: int = 0
    too_old: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _is_duplicate_identifier(exc: stripe.StripeError) -> bool:
    code = getattr(exc, "code", None) or ""
    message = str(getattr(exc, "user_message", None) or exc).lower()
    return code in ("resource_already_exists", "duplicate_meter_event") or (
        "identifier" in message and ("already" in message or "duplicate" in message)
    )


def stream_meter_events(
    session: Session, client: stripe.StripeClient, *, now: datetime | None = None, batch: int = 500
) -> MeterStreamResult:
    """Send usage events as Stripe Billing Meter events, ``identifier`` = usage event id.

    Configured by ``TENANTQ_STRIPE_METERS`` (metric -> meter event_name). Progress is a keyset cursor
    per metric on (recorded_at, id), committed after each event, so a crash re-sends at most one
    event, which Stripe's identifier dedup rejects (counted in ``duplicates``). Meters only bill
    through a metered Stripe price: use them for usage visibility, or instead of the invoice items
    ``sync_invoice`` pushes, never for the same usage as both.
    """
    meters = get_settings().stripe_meters
    now = now or utcnow()
    result = MeterStreamResult()
    for metric, event_name in sorted(meters.items()):
        cursor = session.get(StripeMeterCursor, metric)
        query = select(UsageEvent).where(
            UsageEvent.metric == metric, UsageEvent.recorded_at <= now - METER_SETTLE
        )
        if cursor is not None:
            query = query.where(
                or_(
                    UsageEvent.recorded_at > cursor.recorded_at,
                    and_(UsageEvent.recorded_at == cursor.recorded_at, UsageEvent.id > cursor.event_id),
                )
            )
        events = list(session.scalars(query.order_by(UsageEvent.recorded_at, UsageEvent.id).limit(batch)))
        customers: dict[str, str] = {}
        for event in events:
            if event.occurred_at < now - METER_BACKDATE_LIMIT:
                result.too_old += 1
            else:
                if event.tenant_id not in customers:
                    tenant = session.get_one(Tenant, event.tenant_id)
                    customers[event.tenant_id] = ensure_customer(session, client, tenant)[0]
                try:
                    client.v1.billing.meter_events.create(
                        params={
                            "event_name": event_name,
                            "identifier": event.id,
                            "timestamp": int(event.occurred_at.timestamp()),
                            "payload": {
                                "stripe_customer_id": customers[event.tenant_id],
                                "value": str(event.quantity),
                            },
                        },
                        options={"idempotency_key": f"tq-me-{event.id}"},
                    )
                    result.sent += 1
                except stripe.StripeError as exc:
                    if not _is_duplicate_identifier(exc):
                        raise StripeSyncError(
                            f"Stripe refused a meter event: {exc.user_message or exc}",
                            details={"usage_event": event.id},
                        ) from exc
                    result.duplicates += 1
            if cursor is None:
                cursor = StripeMeterCursor(metric=metric, recorded_at=event.recorded_at, event_id=event.id)
                session.add(cursor)
            cursor.recorded_at, cursor.event_id = event.recorded_at, event.id
            session.commit()
    return result


# --- Webhooks --------------------------------------------------------------------------------------


def verify_event(payload: bytes, signature: str | None) -> stripe.Event:
    """The event, if ``signature`` is Stripe's signature of exactly ``payload`` and is fresh enough."""
    settings = get_settings()
    if not settings.stripe_webhook_secret:
        raise ServiceUnavailable(
            "Stripe webhooks are not configured (TENANTQ_STRIPE_WEBHOOK_SECRET).",
            code="stripe_webhook_not_configured",
        )
    if not signature:
        raise InvalidSignature("Missing Stripe-Signature header.")
    try:
        event = stripe.Webhook.construct_event(
            payload,
            signature,
            settings.stripe_webhook_secret,
            tolerance=settings.stripe_webhook_tolerance_seconds,
        )
    except stripe.SignatureVerificationError as exc:
        # The SDK says which check failed (no valid signature, or timestamp outside the tolerance).
        raise InvalidSignature(f"Stripe signature rejected: {exc.user_message or exc}") from None
    except json.JSONDecodeError:
        raise TenantqError("Webhook body is not valid JSON.", code="malformed_json") from None
    except Exception:  # noqa: BLE001 - signed, but the SDK cannot build an event from it (a JSON array)
        raise TenantqError("Webhook body is not a Stripe event.", code="invalid_event") from None
    # The SDK only refuses timestamps too far in the past; one far in the future would let a captured
    # signature be replayed for as long as it lies ahead.
    if signature_timestamp(signature) > time.time() + settings.stripe_webhook_tolerance_seconds:
        raise InvalidSignature("Stripe signature rejected: its timestamp is in the future.")
    return event


def signature_timestamp(signature: str) -> int:
    """The ``t=`` of a ``Stripe-Signature`` header the SDK has verified (so it is there and numeric)."""
    for item in signature.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t":
            return int(value)
    raise InvalidSignature("Stripe signature rejected: it has no timestamp.")


def parse_event(payload: bytes, signature: str | None) -> dict[str, Any]:
    """Verify the signature, then return the event's JSON object (it must carry an id and a type)."""
    verify_event(payload, signature)
    event = json.loads(payload)
    if (
        not isinstance(event, dict)
        or not isinstance(event.get("id"), str)
        or not event["id"]
        or not isinstance(event.get("type"), str)
    ):
        raise TenantqError("Webhook body is not a Stripe event (id and type required).", code="invalid_event")
    return event


def record_event(session: Session, event: dict[str, Any]) -> tuple[StripeEvent, bool]:
    """Store a verified event (its JSON body) once per Stripe event id. Returns (row, created); commits."""
    existing = session.get(StripeEvent, event["id"])
    if existing is not None:
        return existing, False
    row = StripeEvent(id=event["id"], type=str(event.get("type", "")), payload=event)
    session.add(row)
    try:
        session.commit()
    except IntegrityError:  # the same event delivered twice at once: the other request stored it
        session.rollback()
        return session.get_one(StripeEvent, event["id"]), False
    return row, True


def _stripe_time(value: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(value), tz=UTC) if value else None
    except (TypeError, ValueError):
        return None


def _invoice_for(session: Session, obj: dict[str, Any]) -> Invoice | None:
    stripe_id = obj.get("id")
    if stripe_id:
        invoice = session.scalars(select(Invoice).where(Invoice.stripe_invoice_id == stripe_id)).first()
        if invoice is not None:
            return invoice
    local_id = (obj.get("metadata") or {}).get("tenantq_invoice_id")
    if local_id:
        invoice = session.get(Invoice, local_id)
        # Trust the metadata only for an invoice not yet linked to another Stripe invoice.
        if invoice is not None and invoice.stripe_invoice_id in (None, stripe_id):
            return invoice
    return None


# Stripe sends both for a paid invoice (and some emulators only the second); the second changes nothing.
PAID_EVENTS = ("invoice.paid", "invoice.payment_succeeded")


def process_event(session: Session, event_id: str) -> str:
    """Apply a stored event once; returns what happened. Commits."""
    row = session.get(StripeEvent, event_id, with_for_update=True)
    if row is None:
        return "unknown_event"
    if row.processed_at is not None:
        return "already_processed"
    obj = ((row.payload or {}).get("data") or {}).get("object") or {}
    outcome = "ignored"
    if row.type in PAID_EVENTS or row.type == "invoice.voided":
        invoice = _invoice_for(session, obj)
        if invoice is None:
            outcome = "unknown_invoice"
        elif invoice.status == "void":
            outcome = "left_void"
        elif row.type in PAID_EVENTS:
            paid_at = _stripe_time((obj.get("status_transitions") or {}).get("paid_at"))
            outcome = "marked_paid" if mark_paid(session, invoice, paid_at) else "already_paid"
        elif invoice.status == "open":
            invoice.status = "void"
            outcome = "marked_void"
        else:
            outcome = f"left_{invoice.status}"
    row.processed_at = utcnow()
    row.outcome = outcome
    session.commit()
    log.info("stripe event %s (%s): %s", row.id, row.type, outcome)
    return outcome
