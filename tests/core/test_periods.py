"""Billing-month arithmetic: calendar months in UTC, ``YYYY-MM``, ``[start, end)``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from tenantq.core.errors import InvalidInput
from tenantq.core.periods import Period, current_period, period_bounds, period_of


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


class TestParse:
    def test_bounds_of_a_month(self):
        p = Period.parse("2026-02")
        assert (p.name, p.start, p.end) == ("2026-02", at(2026, 2, 1), at(2026, 3, 1))
        assert period_bounds("2026-12") == (at(2026, 12, 1), at(2027, 1, 1))

    @pytest.mark.parametrize(
        "bad",
        ["2026-13", "2026-00", "2026-1", "26-01", "", None, "2026-01-01", " 2026-01", "2026/01", "October"],
    )
    def test_malformed_periods_are_refused_as_invalid_period(self, bad):
        with pytest.raises(InvalidInput) as caught:
            Period.parse(bad)
        assert caught.value.code == "invalid_period"


class TestContaining:
    def test_month_of_a_moment(self):
        assert period_of(at(2026, 2, 28, 23, 59, 59)) == "2026-02"
        assert period_of(at(2026, 3, 1)) == "2026-03"  # the first instant belongs to the new month

    def test_other_zones_are_converted_to_utc(self):
        # 1 March 00:30 in UTC+1 is still February in UTC.
        assert period_of(datetime(2026, 3, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))) == "2026-02"

    def test_naive_datetimes_are_utc(self):
        # SQLite hands stored UTC timestamps back without a zone.
        assert period_of(datetime(2026, 12, 31, 23, 59)) == "2026-12"  # noqa: DTZ001  (naive on purpose)

    def test_current_period(self):
        assert current_period(at(2027, 1, 15)) == "2027-01"
        assert current_period() == period_of(datetime.now(UTC))


class TestStepping:
    def test_next_and_previous_roll_over_the_year(self):
        assert Period.parse("2026-12").next() == Period(2027, 1)
        assert Period.parse("2027-01").previous() == Period(2026, 12)
        assert Period.parse("2026-06").next().name == "2026-07"
        assert Period.parse("2026-06").previous().name == "2026-05"

    def test_end_is_the_next_start(self):
        for month in range(1, 13):
            p = Period(2024, month)
            assert p.end == p.next().start and p.next().previous() == p

    def test_periods_order_chronologically(self):
        assert sorted([Period(2027, 1), Period(2026, 12), Period(2026, 2)]) == [
            Period(2026, 2),
            Period(2026, 12),
            Period(2027, 1),
        ]

    def test_due_at_adds_the_grace_window(self):
        assert Period.parse("2026-11").due_at(timedelta(days=2)) == at(2026, 12, 3)
