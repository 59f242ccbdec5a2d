"""Rating: the one place that says what a tenant owes for a billing period.

Invoices (period close), the tenant's usage report (``/v1/usage/report``, ``tenantq billing report``,
the dashboard's usage and billing pages) and the operator's report (``/admin/v1/reports/usage``, the
operator dashboard) all ask this module, so they cannot disagree:

- **Which usage belongs to period P** (``period_filter``): once P is closed, exactly the usage events
  the close marked ``billed_period = P``, which includes late events of an earlier, already closed
  month (they are billed in the next open period). While P is open, the events its close would mark:
  unbilled events that occurred in P, plus unbilled late events of months that are already closed when
  P is the first open month after them.
- **How usage is priced** (``rate``): by the plan the tenant was on and the price version in force
  when the usage occurred (plan changes prorate base fees and included units by time); the same call
  for an open period's report, for the close that issues the invoice and for a reissue.
- **What a closed period charged** (``period_charges``): the lines of the tenant's current invoice
  (the latest revision that is not void). A closed period's report never re-prices anything, so late
  usage, price edits and plan changes cannot move it: it equals the invoice to the cent, forever.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import ColumnElement, and_, func, select
from sqlalchemy.orm import Session

from tenantq.billing.invoicing.models import BillingPeriod, Invoice, PlanPrice
from tenantq.billing.invoicing.pricing import (
    PRICED_METRICS,
    Line,
    base_fee_line,
    included_units,
    price_in_force,
    price_metric_range,
    price_versions,
)
from tenantq.billing.usage.models import UsageEvent
from tenantq.core.errors import Conflict
from tenantq.core.periods import Period
from tenantq.tenants.accounts.models import Plan, Tenant, TenantPlanChange


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


FRACTION = Decimal("0.000001")  # a plan's share of a month, as invoice lines show it


@dataclass(frozen=True)
class PlanSegment:
    start: datetime
    end: datetime
    plan: Plan


def plan_segments(session: Session, tenant: Tenant, period: Period) -> list[PlanSegment]:
    """The plans ``tenant`` was on during ``period``, in time order (``tenant_plan_change`` rows)."""
    changes = list(
        session.scalars(
            select(TenantPlanChange)
            .where(TenantPlanChange.tenant_id == tenant.id)
            .order_by(TenantPlanChange.effective_from, TenantPlanChange.id)
        )
    )

    def plan_at(moment: datetime) -> str:
        name = changes[0].from_plan if changes else tenant.plan_name
        for change in changes:
            if change.effective_from <= moment:
                name = change.to_plan
        return name

    cuts = sorted({c.effective_from for c in changes if period.start < c.effective_from < period.end})
    bounds = [period.start, *cuts, period.end]
    segments: list[PlanSegment] = []
    for start, end in itertools.pairwise(bounds):
        name = plan_at(start)
        if segments and segments[-1].plan.name == name:
            segments[-1] = PlanSegment(segments[-1].start, end, segments[-1].plan)
        else:
            segments.append(PlanSegment(start, end, session.get_one(Plan, name)))
    return segments


def _version_slices(
    session: Session, plan_name: str, metric: str, start: datetime, end: datetime
) -> list[tuple[datetime, datetime, PlanPrice | None]]:
    """[start, end) cut where a new version of the price takes effect, each with its version."""
    versions = price_versions(session, plan_name, metric)
    cuts = sorted({v.effective_from for v in versions if start < v.effective_from < end})
    bounds = [start, *cuts, end]
    return [(a, b, price_in_force(session, plan_name, metric, a)) for a, b in itertools.pairwise(bounds)]


def _quantity(
    session: Session,
    condition: ColumnElement[bool],
    period: Period,
    metric: str,
    start: datetime,
    end: datetime,
) -> Decimal:
    """A priced metric's quantity among the events matching ``condition`` that occurred in [start, end).
    Late events (before the period) count at its start; nothing billed in it occurs after its end."""
    usage_metric = {"compute_seconds": "compute_ms", "wall_seconds": "wall_ms"}.get(metric, metric)
    query = select(func.coalesce(func.sum(UsageEvent.quantity), 0)).where(
        condition, UsageEvent.metric == usage_metric
    )
    if start > period.start:
        query = query.where(UsageEvent.occurred_at >= start)
    if end < period.end:
        query = query.where(UsageEvent.occurred_at < end)
    value = Decimal(int(session.scalar(query) or 0))
    return value / 1000 if usage_metric != metric else value


def rate(
    session: Session, tenant: Tenant, period: Period, condition: ColumnElement[bool]
) -> tuple[Plan, list[Line]]:
    """Price the usage events matching ``condition`` (one tenant's usage billed in ``period``): the plan
    the invoice is issued on (the last one in the period) and its lines. See docs/billing.md:

    - each plan the tenant was on during the period rates the usage that occurred while it was in
      force; its base fee and included units are prorated by its share of the period's time;
    - within a plan, each unit of a metric is priced by the price version in force when it occurred, at
      the tier its running position in the plan's part of the period reaches;
    - late usage (from an earlier, closed month) counts as occurring at the period's start.

    With one plan and one price version all month, this is the plain price of the month's totals.
    """
    segments = plan_segments(session, tenant, period)
    currencies = {seg.plan.currency.lower() for seg in segments}
    if len(currencies) > 1:
        raise Conflict(
            f"{tenant.name} changed between plans of different currencies in {period.name}.",
            code="plan_currency_mismatch",
            details={"period": period.name, "currencies": sorted(currencies)},
        )
    span = Decimal((period.end - period.start) // timedelta(microseconds=1))
    lines: list[Line] = []
    for seg in segments:
        whole = seg.start == period.start and seg.end == period.end
        fraction = Decimal(1)
        note = ""
        if not whole:
            fraction = (Decimal((seg.end - seg.start) // timedelta(microseconds=1)) / span).quantize(FRACTION)
            note = f" ({seg.start:%Y-%m-%d %H:%M} to {seg.end:%Y-%m-%d %H:%M} UTC)"
        lines.append(base_fee_line(seg.plan, fraction, note))
        for metric in PRICED_METRICS:
            slices = _version_slices(session, seg.plan.name, metric, seg.start, seg.end)
            priced = [v for _a, _b, v in slices if v is not None]
            if not priced:
                continue
            included = included_units(seg.plan, priced[0]) * fraction
            running = Decimal(0)
            for a, b, version in slices:
                if version is None:
                    continue  # not priced then: not charged
                quantity = _quantity(session, condition, period, metric, a, b)
                slice_note = note
                if len(slices) > 1:
                    slice_note = f" (prices from {max(a, version.effective_from):%Y-%m-%d %H:%M} UTC){note}"
                lines.extend(
                    price_metric_range(
                        seg.plan,
                        version,
                        included=included,
                        start=running,
                        quantity=quantity,
                        note=slice_note,
                    )
                )
                running += quantity
    return segments[-1].plan, lines


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
    condition = and_(UsageEvent.tenant_id == tenant.id, period_filter(session, period))
    plan, lines = rate(session, tenant, period, condition)
    return Charges(closed=False, currency=plan.currency.lower(), lines=lines)
