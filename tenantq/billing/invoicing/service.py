"""Billing periods and invoices: close a calendar month (UTC) into one invoice per tenant.

Closing period P (``close_period``):
1. refuses until P ended plus the grace window (``TENANTQ_BILLING_GRACE_SECONDS``, default 2 days;
   the operator may ``force`` it any time after P ended); then closes every earlier month that is
   still open first, oldest first, in the same transaction (periods always close in order, and no
   month's base fees are skipped). The months to catch up are those after the last closed month; when
   no month was ever closed, those from the first month with unbilled usage (billing starts there).
   A month before the last closed one is refused (``period_out_of_order``);
2. inserts the ``billing_period`` row first: its unique ``period`` makes a second or concurrent close a
   no-op that returns the invoices of the first;
3. marks every usage event that is still unbilled and occurred before P's end with
   ``billed_period = P`` (one UPDATE), then sums exactly the marked events per tenant and metric.

Late events therefore follow one rule, decided by when the event reached SQL, not by its timestamp:
- an event that occurred in P and was recorded before P closed (typically inside the grace window)
  is billed in P;
- an event that occurred in P but was recorded after P closed is still unbilled at the next close and
  is billed in the next open period (its line quantities include it; ``late_event_count`` counts it).
Marking before summing means an event committed while a close runs is either in this invoice or in
the next one, never in both and never in neither.

Who gets an invoice: every tenant with billed usage in P, and every tenant that existed before P
ended on a plan with a base fee. Lines come from ``rating.rate``, the function the usage reports use.
An invoice with a zero total is issued as ``paid`` (nothing to collect) and is not pushed to Stripe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tenantq.billing.invoicing import rating
from tenantq.billing.invoicing.models import BillingPeriod, Invoice, InvoiceLine
from tenantq.billing.invoicing.pricing import Line, total
from tenantq.billing.usage.models import UsageEvent
from tenantq.core import audit
from tenantq.core.db import unscoped_session, utcnow
from tenantq.core.errors import Conflict
from tenantq.core.periods import Period
from tenantq.core.settings import get_settings
from tenantq.tenants.accounts.models import Plan, Tenant


@dataclass
class CloseResult:
    period: BillingPeriod
    created: bool
    invoices: list[Invoice] = field(default_factory=list)
    also_closed: list[str] = field(default_factory=list)  # earlier open months closed first


def grace_window() -> timedelta:
    return timedelta(seconds=get_settings().billing_grace_seconds)


def _existing(session: Session, name: str) -> BillingPeriod | None:
    return session.scalars(select(BillingPeriod).where(BillingPeriod.period == name)).first()


def _invoices_of(session: Session, name: str) -> list[Invoice]:
    return list(session.scalars(select(Invoice).where(Invoice.period == name).order_by(Invoice.tenant_id)))


last_closed_period = rating.last_closed_period


def close_period(
    session: Session,
    period: str,
    *,
    now: datetime | None = None,
    force: bool = False,
    closed_by: str = "system",
) -> CloseResult:
    """Close ``period`` (YYYY-MM) and issue its invoices; see the module docstring.

    Earlier months that are still open are closed first, oldest first, in the same transaction
    (``CloseResult.also_closed`` names them), so no month's base fees are ever skipped. Call it at the
    start of a transaction: a lost race with another closer rolls the session back and starts over.
    The caller commits. Closing an already closed period returns the existing result unchanged.
    """
    p = Period.parse(period)
    now = now or utcnow()
    for _attempt in range(3):
        existing = _existing(session, p.name)
        if existing is not None:
            return CloseResult(period=existing, created=False, invoices=_invoices_of(session, p.name))
        if now < p.end:
            raise Conflict(
                f"Period {p.name} has not ended yet.",
                code="period_not_ended",
                details={"period": p.name, "ends_at": p.end.isoformat()},
            )
        due = p.due_at(grace_window())
        if now < due and not force:
            raise Conflict(
                f"Period {p.name} is still inside its grace window for late usage.",
                code="period_not_due",
                details={"period": p.name, "due_at": due.isoformat()},
            )
        last = last_closed_period(session)
        if last is not None and last > p.name:
            # Billing was already running past this month when it was first asked for: its usage, if
            # any, was swept into a later invoice.
            raise Conflict(
                f"Period {p.name} precedes the last closed period {last}.",
                code="period_out_of_order",
                details={"period": p.name, "last_closed": last},
            )
        also_closed: list[str] = []
        lost_race = False
        for earlier in unclosed_before(session, p):
            result = _close_one(session, earlier, now=now, force=force, closed_by=closed_by)
            if result is None:
                lost_race = True
                break
            also_closed.append(earlier.name)
        if lost_race:
            continue
        result = _close_one(session, p, now=now, force=force, closed_by=closed_by)
        if result is None:
            continue
        result.also_closed = also_closed
        return result
    raise Conflict(
        f"Another close of {p.name} kept winning; try again.",
        code="close_contended",
        details={"period": p.name},
    )


def unclosed_before(session: Session, p: Period) -> list[Period]:
    """The open months before ``p`` that must close first: every month after the last closed one; if
    none was ever closed, every month from the first one with unbilled usage (billing starts there)."""
    last = last_closed_period(session)
    if last is not None:
        start = Period.parse(last).next()
    else:
        earliest = session.scalar(
            select(func.min(UsageEvent.occurred_at)).where(
                UsageEvent.billed_period.is_(None), UsageEvent.occurred_at < p.start
            )
        )
        if earliest is None:
            return []
        start = Period.containing(earliest)
    out = []
    while start < p:
        out.append(start)
        start = start.next()
    return out


def _close_one(
    session: Session, p: Period, *, now: datetime, force: bool, closed_by: str
) -> CloseResult | None:
    """Insert ``p``'s period row and issue its invoices; None if a concurrent closer won (rolled back)."""
    due = p.due_at(grace_window())
    row = BillingPeriod(
        period=p.name,
        starts_at=p.start,
        ends_at=p.end,
        status="closed",
        closed_at=now,
        closed_by=closed_by,
        forced=bool(force and now < due),
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        # Another closer inserted the row first (it blocked us until it committed): start over.
        session.rollback()
        return None

    session.execute(
        update(UsageEvent)
        .where(UsageEvent.billed_period.is_(None), UsageEvent.occurred_at < p.end)
        .values(billed_period=p.name)
        .execution_options(synchronize_session=False)
    )
    usage = rating.usage_by_tenant(session, UsageEvent.billed_period == p.name)
    event_count = session.scalar(
        select(func.count()).select_from(UsageEvent).where(UsageEvent.billed_period == p.name)
    )
    late = session.scalar(
        select(func.count())
        .select_from(UsageEvent)
        .where(UsageEvent.billed_period == p.name, UsageEvent.occurred_at < p.start)
    )

    fee_tenants = session.scalars(
        select(Tenant.id)
        .join(Plan, Plan.name == Tenant.plan_name)
        .where(Tenant.created_at < p.end, Plan.base_fee > 0)
    )
    tenant_ids = sorted(set(usage) | set(fee_tenants))
    issued = (_issue(session, p, tenant_id, now) for tenant_id in tenant_ids)
    invoices = [inv for inv in issued if inv is not None]
    row.invoice_count = len(invoices)
    row.event_count = int(event_count or 0)
    row.late_event_count = int(late or 0)
    session.flush()
    audit.record(
        session,
        actor=closed_by,
        action="period.close",
        entity_type="billing_period",
        entity_id=p.name,
        before=None,
        after={
            "forced": row.forced,
            "invoices": {i.tenant_id: {"id": i.id, "total": Decimal(i.total)} for i in invoices},
            "event_count": row.event_count,
            "late_event_count": row.late_event_count,
        },
        at=now,
    )
    return CloseResult(period=row, created=True, invoices=invoices)


def _issue(session: Session, p: Period, tenant_id: str, now: datetime) -> Invoice | None:
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:  # usage of a deleted tenant: nobody to bill
        return None
    condition = (UsageEvent.billed_period == p.name) & (UsageEvent.tenant_id == tenant.id)
    plan, lines = rating.rate(session, tenant, p, condition)
    return build_invoice(session, tenant, p, plan, lines, now)


def build_invoice(
    session: Session,
    tenant: Tenant,
    p: Period,
    plan: Plan,
    lines: list[Line],
    now: datetime,
    *,
    revision: int = 1,
) -> Invoice:
    amount = total(lines)
    invoice = Invoice(
        tenant_id=tenant.id,
        period=p.name,
        revision=revision,
        plan_name=plan.name,
        currency=plan.currency.lower(),
        status="open" if amount > 0 else "paid",
        total=amount,
        period_start=p.start,
        period_end=p.end,
        issued_at=now,
        paid_at=None if amount > 0 else now,
    )
    invoice.lines = [
        InvoiceLine(
            position=i,
            metric=line.metric,
            tier=line.tier,
            description=line.description,
            quantity=line.quantity,
            unit_price=line.unit_price,
            amount=line.amount,
        )
        for i, line in enumerate(lines)
    ]
    session.add(invoice)
    return invoice


def due_periods(session: Session, now: datetime | None = None) -> list[str]:
    """Months whose grace window has passed and that are not closed yet, oldest first."""
    now = now or utcnow()
    last = last_closed_period(session)
    if last is not None:
        start = Period.parse(last).next()
    else:
        candidates = [
            session.scalar(
                select(func.min(UsageEvent.occurred_at)).where(UsageEvent.billed_period.is_(None))
            ),
            session.scalar(select(func.min(Tenant.created_at))),
        ]
        found = [c for c in candidates if c is not None]
        if not found:
            return []
        start = Period.containing(min(found))
    grace = grace_window()
    out: list[str] = []
    p = start
    while p.due_at(grace) <= now:
        out.append(p.name)
        p = p.next()
    return out


def close_due_periods(now: datetime | None = None) -> list[str]:
    """Close every due period, oldest first, each in its own transaction. Returns the periods closed."""
    with unscoped_session() as session:
        names = due_periods(session, now)
    closed = []
    for name in names:
        with unscoped_session() as session:
            result = close_period(session, name, now=now)
            if result.created:
                closed.append(name)
    return closed


def mark_paid(session: Session, invoice: Invoice, when: datetime | None = None) -> bool:
    """Mark an invoice paid; False if it already was (so a replayed event changes nothing)."""
    if invoice.status == "paid":
        return False
    if invoice.status == "void":
        raise Conflict("A void invoice cannot be paid.", code="invoice_void", details={"id": invoice.id})
    invoice.status = "paid"
    invoice.paid_at = when or utcnow()
    session.flush()
    return True
