"""Corrections of issued invoices: void (and reissue), credit notes. Every one is audited.

- **Void** an open invoice (a paid one needs a credit note: money already moved). Its status becomes
  ``void``, with ``voided_at`` and ``void_reason``; it stays readable. With ``reissue`` a new revision
  of the same tenant and period is issued at once, re-rated by ``rating.rate`` from exactly the usage
  events the period billed for that tenant (the close's marking does not change), by the plans and
  price versions in force when the usage occurred: to correct a wrong price, add a price version
  effective from the period's start (or when the error began), then void and reissue. ``replaced_by_id`` links
  the void invoice to its successor. The period's report then reads the reissued invoice.
- **Credit note**: an amount (in the invoice's currency, at most its minor unit) credited against an
  open or paid invoice; the credit notes of an invoice never exceed its total. An open invoice whose
  credit notes reach its total is marked paid (nothing left to collect). The invoice's lines and
  total never change, so the period's report still equals the invoice; ``credited`` shows the notes.

Each function adds to the caller's session and flushes; the caller commits, then pushes the change to
Stripe (``stripe_sync.void_stripe_invoice``, ``sync_invoice`` for the reissue, ``sync_credit_note``).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tenantq.billing.invoicing import rating
from tenantq.billing.invoicing.models import CreditNote, Invoice
from tenantq.billing.invoicing.pricing import format_amount, minor_unit
from tenantq.billing.invoicing.service import build_invoice
from tenantq.billing.usage.models import UsageEvent
from tenantq.core import audit
from tenantq.core.db import utcnow
from tenantq.core.errors import Conflict, InvalidInput, NotFound
from tenantq.core.periods import Period
from tenantq.tenants.accounts.models import Tenant


def get_invoice(session: Session, invoice_id: str) -> Invoice:
    invoice = session.get(Invoice, invoice_id)
    if invoice is None:
        raise NotFound("Invoice not found.", details={"id": invoice_id})
    return invoice


def invoice_snapshot(invoice: Invoice) -> dict:
    return {
        "id": invoice.id,
        "tenant_id": invoice.tenant_id,
        "period": invoice.period,
        "revision": invoice.revision,
        "status": invoice.status,
        "plan": invoice.plan_name,
        "currency": invoice.currency,
        "total": Decimal(invoice.total),
        "void_reason": invoice.void_reason,
        "replaced_by_id": invoice.replaced_by_id,
    }


def credited(session: Session, invoice_id: str) -> Decimal:
    """The sum of an invoice's credit notes."""
    value = session.scalar(select(func.sum(CreditNote.amount)).where(CreditNote.invoice_id == invoice_id))
    return Decimal(value or 0)


def _reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("Say why (reason).", code="reason_required")
    return reason[:255]


def void_invoice(
    session: Session,
    invoice: Invoice,
    *,
    reason: str,
    actor: str,
    reissue: bool = False,
    now: datetime | None = None,
) -> Invoice | None:
    """Void ``invoice``; with ``reissue`` issue its next revision and return it. See the module doc."""
    reason = _reason(reason)
    now = now or utcnow()
    if invoice.status == "void":
        raise Conflict("The invoice is already void.", code="invoice_void", details={"id": invoice.id})
    if invoice.status == "paid" and invoice.total > 0:
        raise Conflict(
            "A paid invoice cannot be voided; issue a credit note instead.",
            code="invoice_paid",
            details={"id": invoice.id},
        )
    if credited(session, invoice.id) > 0:
        raise Conflict(
            "The invoice has credit notes; credit the rest instead of voiding it.",
            code="invoice_credited",
            details={"id": invoice.id},
        )
    before = invoice_snapshot(invoice)
    invoice.status = "void"
    invoice.voided_at = now
    invoice.void_reason = reason
    new: Invoice | None = None
    if reissue:
        tenant = session.get(Tenant, invoice.tenant_id)
        if tenant is None:
            raise NotFound("The invoice's tenant no longer exists.", details={"tenant_id": invoice.tenant_id})
        p = Period.parse(invoice.period)
        condition = (UsageEvent.billed_period == p.name) & (UsageEvent.tenant_id == tenant.id)
        plan, lines = rating.rate(session, tenant, p, condition)
        last = session.scalar(
            select(func.max(Invoice.revision)).where(
                Invoice.tenant_id == tenant.id, Invoice.period == invoice.period
            )
        )
        new = build_invoice(session, tenant, p, plan, lines, now, revision=int(last or 1) + 1)
        session.flush()
        invoice.replaced_by_id = new.id
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="invoice.void",
        entity_type="invoice",
        entity_id=invoice.id,
        tenant_id=invoice.tenant_id,
        before=before,
        after=invoice_snapshot(invoice),
        at=now,
    )
    if new is not None:
        audit.record(
            session,
            actor=actor,
            action="invoice.reissue",
            entity_type="invoice",
            entity_id=new.id,
            tenant_id=new.tenant_id,
            before=None,
            after={**invoice_snapshot(new), "replaces_id": invoice.id, "reason": reason},
            at=now,
        )
    session.flush()
    return new


def issue_credit_note(
    session: Session,
    invoice: Invoice,
    *,
    amount: Decimal | str,
    reason: str,
    actor: str,
    now: datetime | None = None,
) -> CreditNote:
    reason = _reason(reason)
    now = now or utcnow()
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        raise InvalidInput("amount must be a decimal number.", code="invalid_amount") from None
    if not value.is_finite() or value <= 0:
        raise InvalidInput("amount must be positive.", code="invalid_amount", details={"amount": str(amount)})
    if value != value.quantize(minor_unit(invoice.currency)):
        raise InvalidInput(
            f"amount has more digits than {invoice.currency} allows.",
            code="invalid_amount",
            details={"amount": str(amount), "minor_unit": str(minor_unit(invoice.currency))},
        )
    if invoice.status == "void":
        raise Conflict("A void invoice cannot be credited.", code="invoice_void", details={"id": invoice.id})
    already = credited(session, invoice.id)
    remaining = Decimal(invoice.total) - already
    if value > remaining:
        raise Conflict(
            "The credit notes would exceed the invoice's total.",
            code="credit_exceeds_invoice",
            details={
                "id": invoice.id,
                "remaining": format_amount(remaining, invoice.currency),
                "amount": format_amount(value, invoice.currency),
            },
        )
    before = {**invoice_snapshot(invoice), "credited": already}
    note = CreditNote(
        invoice_id=invoice.id,
        tenant_id=invoice.tenant_id,
        currency=invoice.currency,
        amount=value,
        reason=reason,
        created_at=now,
        created_by=actor,
    )
    session.add(note)
    if invoice.status == "open" and value == remaining:
        invoice.status = "paid"  # nothing left to collect
        invoice.paid_at = now
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="invoice.credit_note",
        entity_type="invoice",
        entity_id=invoice.id,
        tenant_id=invoice.tenant_id,
        before=before,
        after={
            **invoice_snapshot(invoice),
            "credited": already + value,
            "credit_note_id": note.id,
            "reason": reason,
        },
        at=now,
    )
    session.flush()
    return note
