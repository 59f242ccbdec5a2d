"""Billing periods: calendar months in UTC, named ``YYYY-MM``, each the half-open range ``[start, end)``.

Quotas reset, reports group and invoices close on these months, so every area asks this module rather
than doing month arithmetic itself. Naive datetimes are taken as UTC: the database stores UTC and
SQLite hands timestamps back without a zone.

Periods run from ``1970-01`` to ``9998-12``: every period's ``start`` and ``end`` (and its neighbours)
must be representable as a ``datetime``, whose years stop at 9999, and nothing is metered before the
Unix epoch. A well-formed name outside that range is refused like a malformed one, so no caller turns
``0000-01`` into a 500.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tenantq.core.errors import InvalidInput

PERIOD_RE = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
# PERIOD_RE and the MIN_YEAR..MAX_YEAR range in one regular expression, for schemas: 1970-01 to 9998-12.
PERIOD_PATTERN = r"^(19[7-9]\d|[2-8]\d{3}|9[0-8]\d{2}|99[0-8]\d|999[0-8])-(0[1-9]|1[0-2])$"
MIN_YEAR = 1970
MAX_YEAR = 9998


@dataclass(frozen=True, order=True)
class Period:
    """One calendar month in UTC: ``[start, end)``. Orders chronologically."""

    year: int
    month: int

    @classmethod
    def parse(cls, text: str | None) -> Period:
        """``YYYY-MM`` -> Period; anything else (or a year outside ``MIN_YEAR``..``MAX_YEAR``) raises
        InvalidInput ``invalid_period`` (HTTP 422)."""
        match = PERIOD_RE.fullmatch(text or "")  # match() would take a trailing newline
        if not match or not MIN_YEAR <= int(match.group(1)) <= MAX_YEAR:
            raise InvalidInput(
                f"Period must be YYYY-MM (a calendar month, UTC) between {MIN_YEAR}-01 and {MAX_YEAR}-12.",
                code="invalid_period",
                details={"period": text, "min": f"{MIN_YEAR}-01", "max": f"{MAX_YEAR}-12"},
            )
        return cls(int(match.group(1)), int(match.group(2)))

    @classmethod
    def containing(cls, moment: datetime) -> Period:
        """The month ``moment`` falls in, in UTC."""
        moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
        return cls(moment.year, moment.month)

    @property
    def name(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        """The first instant of the next month: it belongs to the next period."""
        return self.next().start

    def next(self) -> Period:
        return Period(self.year + (self.month == 12), self.month % 12 + 1)

    def previous(self) -> Period:
        return Period(self.year - (self.month == 1), (self.month - 2) % 12 + 1)

    def due_at(self, grace: timedelta) -> datetime:
        """When the period may be closed: its end plus the grace window for late usage."""
        return self.end + grace

    def __str__(self) -> str:
        return self.name


def period_of(moment: datetime) -> str:
    """``YYYY-MM`` of the month ``moment`` falls in (UTC)."""
    return Period.containing(moment).name


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """``YYYY-MM`` -> ``[start, end)`` in UTC. Raises InvalidInput for anything else."""
    p = Period.parse(period)
    return p.start, p.end


def current_period(now: datetime | None = None) -> str:
    """``YYYY-MM`` of the month in progress (or of ``now``)."""
    return period_of(now or datetime.now(UTC))
