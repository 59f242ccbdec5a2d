"""Rating: the one place that says what a tenant owes for a billing period.

Invoices (period close), the tenant's usage report (``/v1/usage/report``, ``tenantq billing report``,
the dashboard's usage and billing pages) and the operator's report (``/admin/v1/reports/usage``, the
operator dashboard) all ask this module, so they cannot disagree:

- **Which usage belongs to period P** (``period_filter``): once P is closed, exactly the usage events
  the close marked ``billed_period = P``, which includes late events of an earlier, already closed
  month (they are billed in the next open period). While P is open, the events its close would mark:
  unbilled events that occurred in P, plus unbilled late events of months that are already closed when
  P is the first open month after them.
- **How usage is priced** (``rate``): ``pricing.price_plan_usage`` with the tenant's plan, the same call
  for an open period's report and for the close that issues the invoice.
- **What a closed period charged** (``period_charges``): the lines of the tenant's current invoice
  (the latest revision that is not void). A closed period's report never re-prices anything, so late
  usage, price edits and plan changes cannot move it: it equals the invoice to the cent, forever.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import ColumnElement, and_, func, select
from sqlalchemy.orm import Session

from tenantq.billing.invoicing.models import BillingPeriod, Invoice
from tenantq.billing.invoicing.pricing import Line, price_plan_usage
from tenantq.billing.usage.models import UsageEvent
from tenantq.core.periods import Period
from tenantq.tenants.accounts.models import Plan, Tenant


def is_closed(session: Session, period: Period) -> bool:
    return session.scalar(select(BillingPeriod.id).where(BillingPeriod.period == period.name)) is not None


def last_closed_period(session: Session) -> str | None:
    return session.scalar(select(func.max(BillingPeriod.period)))


def period_filter(session: Session, period: Period) -> ColumnElement[bool]:
    """The usage events that are (closed) or will be (open) billed in ``period``; see the module doc."""
    if is_closed(session, period):
        return UsageEvent.billed_period == period.name
    unbilled = and_(UsageEvent.billed_period.is_(None), UsageEvent.occurred_at < period.end)
    last = last_closed_period(session)
    if last is not None and Period.parse(last).next() == period:
        # The first open month: every unbilled event before it is a late event of a closed month.
        return unbilled
    return and_(unbilled, UsageEvent.occurred_at >= period.start)


def usage_by_tenant(session: Session, condition: ColumnElement[bool]) -> dict[str, dict[str, Decimal]]:
    """tenant id -> metric -> summed quantity (as metering records it: jobs, attempts, compute_ms...)."""
    out: dict[str, dict[str, Decimal]] = {}
    for tenant_id, metric, quantity in session.execute(
        select(UsageEvent.tenant_id, UsageEvent.metric, func.sum(UsageEvent.quantity))
        .where(condition)
        .group_by(UsageEvent.tenant_id, UsageEvent.metric)
    ):
        out.setdefault(tenant_id, {})[metric] = Decimal(int(quantity or 0))
    return out


def rate(
    session: Session, tenant: Tenant, period: Period, usage: Mapping[str, Decimal]
) -> tuple[Plan, list[Line]]:
    """Price one tenant's usage of ``period``: the plan it is billed on and the invoice lines."""
    del period  # the plan in force at rating time prices the whole period (see docs/billing.md)
    plan = session.get_one(Plan, tenant.plan_name)
    return plan, price_plan_usage(session, plan, usage)


def current_invoice(session: Session, tenant_id: str, period: str) -> Invoice | None:
    """The tenant's invoice for ``period`` that stands: the latest revision that is not void."""
    return session.scalars(
        select(Invoice)
        .where(Invoice.tenant_id == tenant_id, Invoice.period == period, Invoice.status != "void")
        .order_by(Invoice.revision.desc())
    ).first()


@dataclass
class Charges:
    """What a tenant is charged for a period: the lines, their currency and where they came from."""

    closed: bool
    currency: str | None
    lines: list[Line]
    invoice: Invoice | None = None

    @property
    def total(self) -> Decimal:
        return sum((line.amount for line in self.lines), Decimal(0))


def invoice_lines(invoice: Invoice) -> list[Line]:
    return [
        Line(
            metric=line.metric,
            description=line.description,
            quantity=Decimal(line.quantity),
            unit_price=Decimal(line.unit_price),
            amount=Decimal(line.amount),
            tier=line.tier,
        )
        for line in invoice.lines
    ]


def period_charges(session: Session, tenant: Tenant, period: Period) -> Charges:
    """The tenant's charges for ``period``: its invoice once closed, else its usage rated as the close
    will rate it."""
    if is_closed(session, period):
        invoice = current_invoice(session, tenant.id, period.name)
        if invoice is None:
            return Charges(closed=True, currency=None, lines=[])
        return Charges(closed=True, currency=invoice.currency, lines=invoice_lines(invoice), invoice=invoice)
    usage = usage_by_tenant(session, and_(UsageEvent.tenant_id == tenant.id, period_filter(session, period)))
    plan, lines = rate(session, tenant, period, usage.get(tenant.id, {}))
    return Charges(closed=False, currency=plan.currency.lower(), lines=lines)
