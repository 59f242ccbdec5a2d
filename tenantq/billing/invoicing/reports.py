"""Usage reports: per tenant (by task type or by day) and across tenants for the operator.

Figures come from the ``usage_event`` table (what the flusher has written): jobs, attempts, compute
seconds (CPU) and wall seconds, per calendar month in UTC. Quantities are Decimal and serialised as
strings; seconds keep millisecond precision.

Charges come from the pricing engine that prices invoices (``pricing.price_usage``), fed the same
metering quantities a period close feeds it, so a report's ``total_charges`` equals the invoice that
the same usage would produce. Usage lines are priced on the whole period (included units and tiers
apply to the period, not to a row) and each usage line's amount is spread over the rows in proportion
to the row's share of that metric, rounded half-up to the cent with the rounding remainder on the
largest row, so the rows add up exactly to the priced usage. Lines that are not usage (the plan's base
fee) appear in ``totals.fixed_charges`` only.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from tenantq.billing.invoicing.pricing import price_usage
from tenantq.billing.usage.models import UsageEvent
from tenantq.billing.usage.repository import UsageRepository
from tenantq.core.errors import InvalidInput
from tenantq.core.periods import period_bounds
from tenantq.tenants.accounts.models import Plan, Tenant

CENT = Decimal("0.01")
MILLI = Decimal("0.001")
GROUP_BYS = ("task", "day")
COLUMNS = ("key", "jobs", "attempts", "compute_seconds", "wall_seconds", "charges")
OPERATOR_COLUMNS = (
    "tenant_id",
    "tenant",
    "plan",
    "jobs",
    "attempts",
    "compute_seconds",
    "wall_seconds",
    "charges",
)

# Which report quantity a pricing line's metric is spread by; other lines (the base fee) are fixed.
_LINE_METRIC_TO_FIELD = {
    "jobs": "jobs",
    "attempts": "attempts",
    "compute_seconds": "compute_ms",
    "wall_seconds": "wall_ms",
}


@dataclass
class Usage:
    jobs: int = 0
    attempts: int = 0
    compute_ms: int = 0
    wall_ms: int = 0
    charges: Decimal = field(default_factory=lambda: Decimal(0))

    def add(self, metric: str, quantity: int) -> None:
        setattr(self, metric, getattr(self, metric) + int(quantity))

    def for_pricing(self) -> dict[str, Decimal]:
        """The metrics as stored on usage events: what a period close passes to the pricer."""
        return {
            "jobs": Decimal(self.jobs),
            "attempts": Decimal(self.attempts),
            "compute_ms": Decimal(self.compute_ms),
            "wall_ms": Decimal(self.wall_ms),
        }

    def figures(self) -> dict[str, str | int]:
        return {
            "jobs": self.jobs,
            "attempts": self.attempts,
            "compute_seconds": str((Decimal(self.compute_ms) / 1000).quantize(MILLI)),
            "wall_seconds": str((Decimal(self.wall_ms) / 1000).quantize(MILLI)),
            "charges": str(self.charges.quantize(CENT, ROUND_HALF_UP)),
        }


def price(session: Session, plan_name: str, usage: Usage) -> list[tuple[str, Decimal]]:
    """[(metric, amount)] of the period's usage, priced as the invoice prices it."""
    return [(line.metric, line.amount) for line in price_usage(plan_name, usage.for_pricing(), session)]


def allocate(amount: Decimal, weights: dict[str, int]) -> dict[str, Decimal]:
    """Split ``amount`` over keys by weight, to the cent, summing exactly to ``amount`` (rounded)."""
    amount = amount.quantize(CENT, ROUND_HALF_UP)
    total = sum(weights.values())
    if total <= 0 or not weights:
        return {}
    shares = {k: (amount * w / total).quantize(CENT, ROUND_HALF_UP) for k, w in weights.items()}
    largest = max(weights, key=lambda k: (weights[k], k))
    shares[largest] += amount - sum(shares.values())
    return shares


def _check_group_by(group_by: str) -> None:
    if group_by not in GROUP_BYS:
        raise InvalidInput(
            "group_by must be 'task' or 'day'.",
            code="invalid_group_by",
            details={"group_by": group_by, "allowed": list(GROUP_BYS)},
        )


def _day_expr(session: Session) -> ColumnElement[str]:
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", UsageEvent.occurred_at), "YYYY-MM-DD")
    return func.strftime("%Y-%m-%d", UsageEvent.occurred_at)


def tenant_usage(session: Session, tenant_id: str, period: str, group_by: str) -> dict[str, Usage]:
    """Usage per task type or per UTC day for one tenant (tenant-scoped query)."""
    _check_group_by(group_by)
    start, end = period_bounds(period)
    key = UsageEvent.task if group_by == "task" else _day_expr(session)
    rows: dict[str, Usage] = defaultdict(Usage)
    for k, metric, qty in UsageRepository(session, tenant_id).sums_by(key, start, end):
        rows[str(k)].add(metric, qty or 0)
    return dict(sorted(rows.items()))


def tenant_report(session: Session, tenant: Tenant, period: str, group_by: str = "task") -> dict[str, Any]:
    rows = tenant_usage(session, tenant.id, period, group_by)
    totals = Usage()
    for usage in rows.values():
        for metric in ("jobs", "attempts", "compute_ms", "wall_ms"):
            totals.add(metric, getattr(usage, metric))
    lines = price(session, tenant.plan_name, totals)
    fixed = Decimal(0)
    for metric, amount in lines:
        target = _LINE_METRIC_TO_FIELD.get(metric)
        if target is None:
            fixed += amount
            continue
        for k, share in allocate(amount, {k: getattr(u, target) for k, u in rows.items()}).items():
            rows[k].charges += share
    totals.charges = sum((u.charges for u in rows.values()), Decimal(0))
    plan = session.get(Plan, tenant.plan_name)
    return {
        "period": period,
        "group_by": group_by,
        "currency": plan.currency if plan is not None else None,
        "priced": True,
        "rows": [{"key": k, **u.figures()} for k, u in rows.items()],
        "totals": {
            **totals.figures(),
            "fixed_charges": str(fixed.quantize(CENT, ROUND_HALF_UP)),
            "total_charges": str((totals.charges + fixed).quantize(CENT, ROUND_HALF_UP)),
        },
    }


def operator_report(session: Session, period: str) -> dict[str, Any]:
    """Every tenant's usage and charges in ``period``, and revenue per plan (system view, unscoped)."""
    start, end = period_bounds(period)
    stmt = (
        select(UsageEvent.tenant_id, UsageEvent.metric, func.sum(UsageEvent.quantity))
        .where(UsageEvent.occurred_at >= start, UsageEvent.occurred_at < end)
        .group_by(UsageEvent.tenant_id, UsageEvent.metric)
    )
    usage: dict[str, Usage] = defaultdict(Usage)
    for tenant_id, metric, qty in session.execute(stmt):
        usage[tenant_id].add(metric, qty or 0)
    # Tenants that existed during the period owe their base fee even without usage.
    tenants = session.scalars(select(Tenant).where(Tenant.created_at < end).order_by(Tenant.name)).all()
    known = {t.id for t in tenants}
    tenants = [*tenants, *session.scalars(select(Tenant).where(Tenant.id.in_(set(usage) - known)))]
    plans = {p.name: p for p in session.scalars(select(Plan))}
    by_plan: dict[str, dict[str, Any]] = {}
    rows = []
    totals = Usage()
    for tenant in tenants:
        u = usage.get(tenant.id, Usage())
        lines = price(session, tenant.plan_name, u)
        u.charges = sum((a.quantize(CENT, ROUND_HALF_UP) for _m, a in lines), Decimal(0))
        for metric in ("jobs", "attempts", "compute_ms", "wall_ms"):
            totals.add(metric, getattr(u, metric))
        plan = plans.get(tenant.plan_name)
        entry = by_plan.setdefault(
            tenant.plan_name,
            {
                "plan": tenant.plan_name,
                "currency": plan.currency if plan else None,
                "tenants": 0,
                "revenue": Decimal(0),
            },
        )
        entry["tenants"] += 1
        entry["revenue"] += u.charges
        rows.append({"tenant_id": tenant.id, "tenant": tenant.name, "plan": tenant.plan_name, **u.figures()})
    revenue_by_currency: dict[str, Decimal] = defaultdict(Decimal)
    for entry in by_plan.values():
        revenue_by_currency[entry["currency"] or ""] += entry["revenue"]
    totals_out = totals.figures()
    totals_out.pop("charges")
    return {
        "period": period,
        "priced": True,
        "rows": rows,
        "revenue_by_plan": [
            {**e, "revenue": str(e["revenue"].quantize(CENT, ROUND_HALF_UP))}
            for e in sorted(by_plan.values(), key=lambda e: e["plan"])
        ],
        "totals": {
            **totals_out,
            "tenants": len(rows),
            "revenue": {
                c: str(v.quantize(CENT, ROUND_HALF_UP)) for c, v in sorted(revenue_by_currency.items())
            },
        },
    }


def to_csv(rows: list[dict[str, Any]], columns: tuple[str, ...], total: dict[str, Any] | None = None) -> str:
    """CSV with a header row; ``total`` (if given) is appended as a last row keyed ``total``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row.get(c, "") for c in columns])
    if total is not None:
        writer.writerow(["total" if i == 0 else total.get(c, "") for i, c in enumerate(columns)])
    return out.getvalue()


def tenant_report_csv(report: dict[str, Any]) -> str:
    return to_csv(report["rows"], COLUMNS, report["totals"])


def operator_report_csv(report: dict[str, Any]) -> str:
    return to_csv(report["rows"], OPERATOR_COLUMNS)
