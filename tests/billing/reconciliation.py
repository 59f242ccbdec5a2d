"""Helpers shared by the month-reconciliation tests (test_reconciliation.py with usage written in SQL,
test_reconciliation_workers.py with usage produced by real workers): the hand calculation of what an
invoice must say, written independently of the pricing engine."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

D = Decimal
CENT = D("0.01")
MAY_START, JUNE_START = datetime(2001, 5, 1, tzinfo=UTC), datetime(2001, 6, 1, tzinfo=UTC)
CHANGE_AT = datetime(2001, 5, 16, tzinfo=UTC)  # a tenant moves from plan A to plan B
NEW_PRICE_AT = datetime(2001, 5, 20, tzinfo=UTC)  # plan B's jobs price changes
# Shares of May (31 days) before and after the plan change, as invoice lines show them (6 places).
A_PART = (D(15 * 86400 * 10**6) / D(31 * 86400 * 10**6)).quantize(D("0.000001"))
B_PART = (D(16 * 86400 * 10**6) / D(31 * 86400 * 10**6)).quantize(D("0.000001"))


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, ROUND_HALF_UP)


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def graduated(
    first: Decimal, last: Decimal, included: Decimal, tiers: list[tuple[Decimal | None, Decimal]]
) -> Decimal:
    """By hand: the sum of the rounded tier amounts for the units [first, last) of a running total."""
    amount = D(0)
    lo_units, hi_units = max(D(0), first - included), max(D(0), last - included)
    lower = D(0)
    for up_to, price in tiers:
        upper = hi_units if up_to is None else min(hi_units, up_to)
        units = upper - max(lo_units, lower)
        if units > 0:
            amount += cents(units * price)
        if up_to is None:
            break
        lower = up_to
    return amount
