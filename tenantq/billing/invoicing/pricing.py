"""Pricing: turn a tenant's usage into priced lines with the plan's prices (data in SQL).

Model, per plan:
- a base fee (``Plan.base_fee``), one line per period;
- per priced metric (``plan_price`` row): ``included_units`` free (default: the plan's quota), then
  graduated tiers over the *billable* quantity ``max(0, usage - included)``: a tier ``up_to`` 10,000
  at 0.0004 followed by an unbounded tier at 0.0003 charges the first 10,000 billable units at 0.0004
  and every unit beyond at 0.0003. A metric without a price row is not charged.

Rounding rule (one rule, everywhere): every line amount is ``quantity * unit_price`` rounded
**half-up to the currency's minor unit** (cents for usd/eur, whole units for jpy, ...); an invoice
total is the **sum of its rounded lines**, so the lines a customer reads always add up to the total.
Quantities and unit prices are never rounded.

Metrics priced: ``jobs``, ``attempts``, ``compute_seconds``, ``wall_seconds``. Usage passed in with the
metering names ``compute_ms`` / ``wall_ms`` is converted exactly (ms / 1000).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from tenantq.billing.invoicing.models import EPOCH, PlanPrice, PriceTier
from tenantq.core import audit
from tenantq.core.db import unscoped_session, utcnow
from tenantq.core.errors import InvalidInput, NotFound
from tenantq.tenants.accounts.models import Plan

PRICED_METRICS = ("jobs", "attempts", "compute_seconds", "wall_seconds")
BASE_FEE = "base_fee"

METRIC_LABELS = {
    "jobs": "Jobs",
    "attempts": "Attempts",
    "compute_seconds": "Compute seconds",
    "wall_seconds": "Wall-clock seconds",
}

# ISO 4217 currencies without a minor unit (Stripe's list of zero-decimal currencies) and with three.
ZERO_DECIMAL = frozenset(
    [
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    ]
)
THREE_DECIMAL = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])

# Seeded prices. None included units = the plan's own quota. Free plans enforce hard quotas, so their
# overage price only matters for usage that arrives late; it is zero.
DEFAULT_PRICES: dict[str, list[dict]] = {
    "free": [
        {"metric": "jobs", "tiers": [(None, "0")]},
        {"metric": "compute_seconds", "tiers": [(None, "0")]},
    ],
    "pro": [
        {"metric": "jobs", "tiers": [(None, "0.0002")]},
        {"metric": "compute_seconds", "tiers": [("10000", "0.0004"), (None, "0.0003")]},
    ],
    "enterprise": [
        {"metric": "jobs", "tiers": [(None, "0.0001")]},
        {"metric": "compute_seconds", "tiers": [("100000", "0.0003"), (None, "0.00025")]},
    ],
}


@dataclass(frozen=True)
class Line:
    """One priced line. ``tier`` is None for the base fee and for the included units."""

    metric: str
    description: str
    quantity: Decimal
    unit_price: Decimal
    amount: Decimal
    tier: int | None = None


def minor_unit(currency: str) -> Decimal:
    """The smallest amount of ``currency``: what line amounts are rounded to."""
    code = currency.lower()
    if code in ZERO_DECIMAL:
        return Decimal(1)
    if code in THREE_DECIMAL:
        return Decimal("0.001")
    return Decimal("0.01")


def round_amount(value: Decimal, currency: str) -> Decimal:
    return value.quantize(minor_unit(currency), rounding=ROUND_HALF_UP)


def format_amount(amount: Decimal, currency: str) -> str:
    """An amount as the API shows it: a Decimal string with exactly the currency's minor digits."""
    return str(round_amount(Decimal(amount), currency))


def to_minor_units(amount: Decimal, currency: str) -> int:
    """An already-rounded amount as Stripe's integer minor units (4900 for 49.00 usd)."""
    scaled = amount / minor_unit(currency)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} {currency} is not rounded to the currency's minor unit")
    return int(scaled)


def total(lines: Iterable[Line]) -> Decimal:
    """The invoice total: the sum of the already-rounded line amounts."""
    return sum((line.amount for line in lines), Decimal(0))


def normalize_usage(usage: Mapping[str, Decimal | int | float | str]) -> dict[str, Decimal]:
    """Metering names -> priced metrics; milliseconds become seconds exactly; unknown keys are ignored.

    A time given both in milliseconds and in seconds is refused: the two would add up and bill the same
    CPU or wall time twice.
    """
    for ms_name in ("compute_ms", "wall_ms"):
        seconds_name = ms_name.replace("_ms", "_seconds")
        if ms_name in usage and seconds_name in usage:
            raise ValueError(f"usage gives both {ms_name} and {seconds_name}: pass one unit per metric")
    out = {m: Decimal(0) for m in PRICED_METRICS}
    for key, raw in usage.items():
        value = Decimal(str(raw)) if not isinstance(raw, Decimal) else raw
        if key in ("compute_ms", "wall_ms"):
            out[key.replace("_ms", "_seconds")] += value / 1000
        elif key in out:
            out[key] += value
    return out


def _fmt(value: Decimal) -> str:
    """Human quantity for descriptions: thousands separators, no trailing zeros."""
    return f"{value.normalize():,f}"


def included_units(plan: Plan, price: PlanPrice) -> Decimal:
    if price.included_units is not None:
        return Decimal(price.included_units)
    if price.metric == "jobs":
        return Decimal(plan.included_jobs)
    if price.metric == "compute_seconds":
        return Decimal(plan.included_compute_seconds)
    return Decimal(0)


def price_metric(plan: Plan, price: PlanPrice, quantity: Decimal) -> list[Line]:
    """Lines for one metric over a whole period: the included part (amount 0), then one line per tier
    actually used."""
    return price_metric_range(
        plan, price, included=included_units(plan, price), start=Decimal(0), quantity=quantity
    )


def price_metric_range(
    plan: Plan,
    price: PlanPrice,
    *,
    included: Decimal,
    start: Decimal,
    quantity: Decimal,
    note: str = "",
) -> list[Line]:
    """Lines for the units ``[start, start + quantity)`` of a metric's running total in a period (or a
    plan's part of it), priced by ``price``: the part below ``included`` at 0, the rest by the tiers its
    position reaches. Rating a period in slices (one per price version) with running ``start`` gives
    the same lines as rating it whole when nothing changed."""
    currency = plan.currency
    label = price.description or METRIC_LABELS.get(price.metric, price.metric)
    end = start + quantity
    lines = [
        Line(
            metric=price.metric,
            description=f"{label}: included ({_fmt(included)} per period){note}",
            quantity=max(Decimal(0), min(end, included) - min(start, included)),
            unit_price=Decimal(0),
            amount=round_amount(Decimal(0), currency),
        )
    ]
    billable_from = max(Decimal(0), start - included)
    billable_to = max(Decimal(0), end - included)
    lower = Decimal(0)
    for index, tier in enumerate(price.tiers):
        if billable_to <= lower:
            break
        upper = Decimal(tier.up_to) if tier.up_to is not None else None
        top = billable_to if upper is None else min(billable_to, upper)
        in_tier = top - max(billable_from, lower)
        if in_tier > 0:
            unit_price = Decimal(tier.unit_price)
            if upper is None:
                span = f"above {_fmt(lower)}" if lower else "all"
            else:
                span = f"{_fmt(lower)}-{_fmt(upper)}"
            lines.append(
                Line(
                    metric=price.metric,
                    description=f"{label}: overage tier {index + 1} ({span} over included){note}",
                    quantity=in_tier,
                    unit_price=unit_price,
                    amount=round_amount(in_tier * unit_price, currency),
                    tier=index + 1,
                )
            )
        if upper is None:
            break
        lower = upper
    return lines


def base_fee_line(plan: Plan, fraction: Decimal = Decimal(1), note: str = "") -> Line:
    """The plan's base fee for ``fraction`` of a period (1: the whole period)."""
    return Line(
        metric=BASE_FEE,
        description=f"{plan.display_name or plan.name} plan: base fee{note}",
        quantity=fraction,
        unit_price=Decimal(plan.base_fee),
        amount=round_amount(fraction * Decimal(plan.base_fee), plan.currency),
    )


def price_plan_usage(
    session: Session,
    plan: Plan,
    usage: Mapping[str, Decimal | int],
    *,
    include_base_fee: bool = True,
    at: datetime | None = None,
) -> list[Line]:
    """A whole period's usage priced with one plan and the price versions in force at ``at`` (default
    now). Invoices are rated by ``rating.rate``, which splits a period by plan and price version."""
    prices = list_prices(session, plan.name, at)
    quantities = normalize_usage(usage)
    lines: list[Line] = [base_fee_line(plan)] if include_base_fee else []
    order = {m: i for i, m in enumerate(PRICED_METRICS)}
    for price in sorted(prices, key=lambda p: order.get(p.metric, len(order))):
        lines.extend(price_metric(plan, price, quantities.get(price.metric, Decimal(0))))
    return lines


def price_usage(
    plan_name: str,
    usage: dict[str, Decimal],
    session: Session | None = None,
    *,
    include_base_fee: bool = True,
) -> list[Line]:
    """Price ``usage`` (metric -> quantity) with ``plan_name``'s prices; see the module docstring.

    Reports that charge a slice of a period (one task type, one day) pass ``include_base_fee=False``
    and should note that included units apply per call. Without a session one is opened (read only).
    """
    if session is None:
        with unscoped_session() as own:
            return price_usage(plan_name, usage, own, include_base_fee=include_base_fee)
    plan = session.get(Plan, plan_name)
    if plan is None:
        raise NotFound(f"No plan named {plan_name!r}.", details={"plan": plan_name})
    return price_plan_usage(session, plan, usage, include_base_fee=include_base_fee)


# --- Operator: read and edit prices -------------------------------------------------------------


def validate_tiers(tiers: list[tuple[Decimal | None, Decimal]]) -> None:
    if not tiers:
        raise InvalidInput("A price needs at least one tier.", code="invalid_price")
    if tiers[-1][0] is not None:
        raise InvalidInput("The last tier must be unbounded (up_to null).", code="invalid_price")
    previous = Decimal(0)
    for up_to, unit_price in tiers:
        if unit_price < 0:
            raise InvalidInput("Unit prices cannot be negative.", code="invalid_price")
        if up_to is not None:
            if up_to <= previous:
                raise InvalidInput(
                    "Tier bounds must increase.", code="invalid_price", details={"up_to": str(up_to)}
                )
            previous = up_to
    if any(up_to is None for up_to, _ in tiers[:-1]):
        raise InvalidInput("Only the last tier may be unbounded.", code="invalid_price")


def set_price(
    session: Session,
    *,
    plan_name: str,
    metric: str,
    tiers: list[tuple[Decimal | None, Decimal]],
    included_units: Decimal | None = None,
    description: str = "",
    actor: str = "system",
    effective_from: datetime | None = None,
) -> PlanPrice:
    """Add a version of the price of ``metric`` on ``plan_name``, in force from ``effective_from``
    (default now) until the next version. Usage that occurred earlier keeps the version in force then;
    issued invoices never change (a version effective inside a closed period only matters to a
    void-and-reissue of it). A version with exactly the same ``effective_from`` is replaced. Audited
    (``price.set``) with ``actor``."""
    if metric not in PRICED_METRICS:
        raise InvalidInput(
            f"Unknown metric {metric!r}.", code="invalid_price", details={"allowed": list(PRICED_METRICS)}
        )
    if session.get(Plan, plan_name) is None:
        raise NotFound(f"No plan named {plan_name!r}.", details={"plan": plan_name})
    if included_units is not None and included_units < 0:
        raise InvalidInput("included_units cannot be negative.", code="invalid_price")
    validate_tiers(tiers)
    when = effective_from or utcnow()
    previous = price_in_force(session, plan_name, metric, when)
    before = price_snapshot(previous) if previous is not None else None
    price = session.scalars(
        select(PlanPrice).where(
            PlanPrice.plan_name == plan_name, PlanPrice.metric == metric, PlanPrice.effective_from == when
        )
    ).first()
    if price is None:
        price = PlanPrice(plan_name=plan_name, metric=metric, effective_from=when)
        session.add(price)
    price.included_units = included_units
    price.description = description
    price.retired = False
    price.tiers.clear()
    session.flush()  # delete the old tiers before inserting new ones with the same positions
    price.tiers.extend(
        PriceTier(position=i, up_to=up_to, unit_price=unit_price)
        for i, (up_to, unit_price) in enumerate(tiers)
    )
    session.flush()
    after = price_snapshot(price)
    if after != before:
        audit.record(
            session,
            actor=actor,
            action="price.set",
            entity_type="price",
            entity_id=f"{plan_name}/{metric}",
            before=before,
            after=after,
        )
        session.flush()
    return price


def price_versions(session: Session, plan_name: str, metric: str | None = None) -> list[PlanPrice]:
    """Every version of a plan's prices (of one metric), oldest first."""
    query = select(PlanPrice).where(PlanPrice.plan_name == plan_name)
    if metric is not None:
        query = query.where(PlanPrice.metric == metric)
    return list(session.scalars(query.order_by(PlanPrice.metric, PlanPrice.effective_from)))


def price_in_force(session: Session, plan_name: str, metric: str, when: datetime) -> PlanPrice | None:
    """The version of (plan, metric) in force at ``when`` (None: never priced, or retired)."""
    price = session.scalars(
        select(PlanPrice)
        .where(PlanPrice.plan_name == plan_name, PlanPrice.metric == metric, PlanPrice.effective_from <= when)
        .order_by(PlanPrice.effective_from.desc())
    ).first()
    return None if price is None or price.retired else price


def price_snapshot(price: PlanPrice) -> dict:
    return {
        "effective_from": price.effective_from,
        "included_units": price.included_units,
        "description": price.description,
        "tiers": [[t.up_to, t.unit_price] for t in price.tiers],
    }


def delete_price(
    session: Session,
    *,
    plan_name: str,
    metric: str,
    actor: str = "system",
    effective_from: datetime | None = None,
) -> None:
    """Stop charging ``metric`` on ``plan_name`` from ``effective_from`` (default now): a retired
    version. Usage that occurred before keeps its price."""
    when = effective_from or utcnow()
    current = price_in_force(session, plan_name, metric, when)
    if current is None:
        raise NotFound(f"Plan {plan_name!r} has no price for {metric!r}.")
    before = price_snapshot(current)
    if current.effective_from == when:
        current.retired = True
    else:
        session.add(PlanPrice(plan_name=plan_name, metric=metric, effective_from=when, retired=True))
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="price.delete",
        entity_type="price",
        entity_id=f"{plan_name}/{metric}",
        before=before,
        after={"effective_from": when, "retired": True},
    )
    session.flush()


def list_prices(
    session: Session, plan_name: str | None = None, at: datetime | None = None
) -> list[PlanPrice]:
    """The versions in force at ``at`` (default now), per plan and metric."""
    when = at or utcnow()
    query = select(PlanPrice).where(PlanPrice.effective_from <= when)
    if plan_name:
        query = query.where(PlanPrice.plan_name == plan_name)
    latest: dict[tuple[str, str], PlanPrice] = {}
    for price in session.scalars(
        query.order_by(PlanPrice.plan_name, PlanPrice.metric, PlanPrice.effective_from)
    ):
        latest[(price.plan_name, price.metric)] = price
    return [p for _key, p in sorted(latest.items()) if not p.retired]


def seed_prices(session: Session) -> None:
    """Default prices for the default plans; existing rows (operator edits) are left alone."""
    for plan_name, specs in DEFAULT_PRICES.items():
        if session.get(Plan, plan_name) is None:
            continue
        for spec in specs:
            exists = session.scalars(
                select(PlanPrice.id).where(
                    PlanPrice.plan_name == plan_name, PlanPrice.metric == spec["metric"]
                )
            ).first()
            if exists is None:
                set_price(
                    session,
                    plan_name=plan_name,
                    metric=spec["metric"],
                    tiers=[(Decimal(u) if u is not None else None, Decimal(p)) for u, p in spec["tiers"]],
                    effective_from=EPOCH,
                )
    session.flush()
