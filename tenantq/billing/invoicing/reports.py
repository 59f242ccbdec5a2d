"""Usage reports: per tenant (by task type or by day) and across tenants for the operator.

Which usage and which charges belong to a period is decided by ``rating`` (the module invoices use):
- a **closed** period shows the usage events its close billed (including late events of an earlier
  month, which are billed in the next open month) and charges read from the tenant's invoice lines,
  so its ``total_charges`` equals the invoice to the cent, whatever happens to prices, plans or late
  usage afterwards;
- an **open** period shows the usage its close will bill, priced by ``rating.rate`` exactly as the
  close will price it.

Quantities are Decimal and serialised as strings; seconds keep millisecond precision. Usage lines are
priced on the whole period (included units and tiers apply to the period, not to a row) and each usage
line's amount is spread over the rows in proportion to the row's share of that metric, rounded half-up
to the cent with the rounding remainder on the largest row, so the rows add up exactly to the priced
usage (``totals.usage_charges``). Lines that are not usage (the plan's base fee) are listed in
``fixed`` and summed in ``totals.fixed_charges``; ``totals.total_charges`` is the grand total.
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

from tenantq.billing.invoicing import rating
from tenantq.billing.invoicing.models import Invoice
from tenantq.billing.usage.models import UsageEvent
from tenantq.billing.usage.repository import UsageRepository
from tenantq.core.errors import InvalidInput
from tenantq.core.periods import Period
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

    def figures(self) -> dict[str, str | int]:
        return {
            "jobs": self.jobs,
            "attempts": self.attempts,
            "compute_seconds": str((Decimal(self.compute_ms) / 1000).quantize(MILLI)),
            "wall_seconds": str((Decimal(self.wall_ms) / 1000).quantize(MILLI)),
            "charges": str(self.charges.quantize(CENT, ROUND_HALF_UP)),
        }


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


def tenant_usage(
    session: Session, tenant_id: str, period: str, group_by: str, condition: ColumnElement[bool] | None = None
) -> dict[str, Usage]:
    """Usage per task type or per UTC day for one tenant (tenant-scoped query): the events billed (or to
    be billed) in ``period`` (``rating.period_filter``)."""
    _check_group_by(group_by)
    if condition is None:
        condition = rating.period_filter(session, Period.parse(period))
    key = UsageEvent.task if group_by == "task" else _day_expr(session)
    rows: dict[str, Usage] = defaultdict(Usage)
    for k, metric, qty in UsageRepository(session, tenant_id).sums_where(key, condition):
        rows[str(k)].add(metric, qty or 0)
    return dict(sorted(rows.items()))


def _cents(value: Decimal) -> str:
    return str(value.quantize(CENT, ROUND_HALF_UP))


def tenant_report(session: Session, tenant: Tenant, period: str, group_by: str = "task") -> dict[str, Any]:
    p = Period.parse(period)
    rows = tenant_usage(session, tenant.id, p.name, group_by)
    totals = Usage()
    for usage in rows.values():
        for metric in ("jobs", "attempts", "compute_ms", "wall_ms"):
            totals.add(metric, getattr(usage, metric))
    charges = rating.period_charges(session, tenant, p)
    fixed = Decimal(0)
    fixed_lines: list[dict[str, str]] = []
    for line in charges.lines:
        target = _LINE_METRIC_TO_FIELD.get(line.metric)
        shares = allocate(line.amount, {k: getattr(u, target) for k, u in rows.items()}) if target else {}
        if not shares:
            # Fixed charges (the base fee), and any amount no row carries.
            if line.amount or target is None:
                fixed += line.amount
                fixed_lines.append({"description": line.description, "amount": _cents(line.amount)})
            continue
        for k, share in shares.items():
            rows[k].charges += share
    totals.charges = sum((u.charges for u in rows.values()), Decimal(0))
    if charges.currency is None:
        plan = session.get(Plan, tenant.plan_name)
        currency = plan.currency.lower() if plan is not None else None
    else:
        currency = charges.currency
    return {
        "period": p.name,
        "group_by": group_by,
        "currency": currency,
        "priced": True,
        "closed": charges.closed,
        "invoice_id": charges.invoice.id if charges.invoice is not None else None,
        "rows": [{"key": k, **u.figures()} for k, u in rows.items()],
        "fixed": fixed_lines,
        "totals": {
            **totals.figures(),
            "usage_charges": _cents(totals.charges),
            "fixed_charges": _cents(fixed),
            "total_charges": _cents(charges.total),
        },
    }


def operator_report(session: Session, period: str) -> dict[str, Any]:
    """Every tenant's usage and charges in ``period``, and revenue per plan (system view, unscoped).

    Charges are ``rating.period_charges``: the invoices once the period is closed (revenue by the plan
    each invoice was issued on), the usage rated as the close will rate it while it is open."""
    p = Period.parse(period)
    usage: dict[str, Usage] = defaultdict(Usage)
    for tenant_id, metrics in rating.usage_by_tenant(session, rating.period_filter(session, p)).items():
        for metric, qty in metrics.items():
            usage[tenant_id].add(metric, int(qty))
    # Tenants that existed during the period owe their base fee even without usage; once closed, every
    # tenant with an invoice appears.
    tenants = session.scalars(select(Tenant).where(Tenant.created_at < p.end).order_by(Tenant.name)).all()
    known = {t.id for t in tenants}
    invoiced = set(session.scalars(select(Invoice.tenant_id).where(Invoice.period == p.name)))
    extra = (set(usage) | invoiced) - known
    if extra:
        tenants = [
            *tenants,
            *session.scalars(select(Tenant).where(Tenant.id.in_(extra)).order_by(Tenant.name)),
        ]
    plans = {pl.name: pl for pl in session.scalars(select(Plan))}
    by_plan: dict[str, dict[str, Any]] = {}
    rows = []
    totals = Usage()
    for tenant in tenants:
        u = usage.get(tenant.id, Usage())
        charges = rating.period_charges(session, tenant, p)
        u.charges = charges.total
        for metric in ("jobs", "attempts", "compute_ms", "wall_ms"):
            totals.add(metric, getattr(u, metric))
        plan_name = charges.invoice.plan_name if charges.invoice is not None else tenant.plan_name
        plan = plans.get(plan_name)
        currency = charges.currency or (plan.currency.lower() if plan else None)
        entry = by_plan.setdefault(
            plan_name, {"plan": plan_name, "currency": currency, "tenants": 0, "revenue": Decimal(0)}
        )
        entry["tenants"] += 1
        entry["revenue"] += u.charges
        rows.append({"tenant_id": tenant.id, "tenant": tenant.name, "plan": plan_name, **u.figures()})
    revenue_by_currency: dict[str, Decimal] = defaultdict(Decimal)
    for entry in by_plan.values():
        revenue_by_currency[entry["currency"] or ""] += entry["revenue"]
    totals_out = totals.figures()
    totals_out.pop("charges")
    return {
        "period": p.name,
        "priced": True,
        "closed": rating.is_closed(session, p),
        "rows": rows,
        "revenue_by_plan": [
            {**e, "revenue": _cents(e["revenue"])} for e in sorted(by_plan.values(), key=lambda e: e["plan"])
        ],
        "totals": {
            **totals_out,
            "tenants": len(rows),
            "revenue": {c: _cents(v) for c, v in sorted(revenue_by_currency.items())},
        },
    }


def to_csv(
    rows: list[dict[str, Any]], columns: tuple[str, ...], extra: list[dict[str, Any]] | None = None
) -> str:
    """CSV with a header row; ``extra`` rows (subtotals, fixed charges, the total) follow the data."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in [*rows, *(extra or [])]:
        writer.writerow([row.get(c, "") for c in columns])
    return out.getvalue()


def tenant_report_csv(report: dict[str, Any]) -> str:
    """The rows, then ``usage`` (their sum), one ``fixed: ...`` row per fixed charge (the base fee) and
    ``total``, whose charges are the period's grand total: the invoice's total once it is closed."""
    totals = report["totals"]
    extra = [
        {**totals, "key": "usage", "charges": totals["usage_charges"]},
        *({"key": f"fixed: {f['description']}", "charges": f["amount"]} for f in report.get("fixed", [])),
        {**totals, "key": "total", "charges": totals["total_charges"]},
    ]
    return to_csv(report["rows"], COLUMNS, extra)


def operator_report_csv(report: dict[str, Any]) -> str:
    return to_csv(report["rows"], OPERATOR_COLUMNS)
