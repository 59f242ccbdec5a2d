"""Pricing: seeded prices, graduated tiers, the rounding rule, operator edits."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tenantq.billing.invoicing.models import EPOCH
from tenantq.billing.invoicing.pricing import (
    Line,
    normalize_usage,
    price_usage,
    round_amount,
    set_price,
    to_minor_units,
    total,
)
from tenantq.core.errors import InvalidInput, NotFound
from tenantq.tenants.accounts.models import Plan

D = Decimal


def make_plan(session, *, currency: str = "usd", base_fee: str = "0", **kwargs) -> Plan:
    plan = Plan(
        name=f"test-{uuid.uuid4().hex[:10]}",
        display_name="Test",
        currency=currency,
        base_fee=D(base_fee),
        **kwargs,
    )
    session.add(plan)
    session.commit()
    return plan


def by_key(lines: list[Line]) -> dict[tuple[str, int | None], Line]:
    return {(line.metric, line.tier): line for line in lines}


class TestSeededPrices:
    def test_pro_plan_hand_computed(self, db_session):
        # Pro: 49.00 base; jobs 100,000 included then 0.0002; compute 36,000 s included, then
        # 10,000 s at 0.0004 and the rest at 0.0003.
        lines = price_usage(
            "pro", {"jobs": D(100_625), "compute_ms": D(47_345_678), "attempts": D(7)}, db_session
        )
        got = by_key(lines)
        assert got[("base_fee", None)].amount == D("49.00")
        assert got[("jobs", None)].quantity == D(100_000) and got[("jobs", None)].amount == D("0.00")
        # 625 x 0.0002 = 0.125: half-up gives 0.13 (banker's rounding would give 0.12).
        assert got[("jobs", 1)].quantity == D(625) and got[("jobs", 1)].amount == D("0.13")
        assert got[("compute_seconds", None)].quantity == D(36_000)
        assert got[("compute_seconds", 1)].quantity == D(10_000) and got[("compute_seconds", 1)].amount == D(
            "4.00"
        )
        # 47,345.678 s - 36,000 - 10,000 = 1,345.678 s x 0.0003 = 0.4037034 -> 0.40
        assert got[("compute_seconds", 2)].quantity == D("1345.678")
        assert got[("compute_seconds", 2)].amount == D("0.40")
        assert ("attempts", None) not in got  # pro does not charge attempts: no price row, no line
        assert total(lines) == D("53.53")

    def test_usage_inside_included_costs_base_fee_only(self, db_session):
        lines = price_usage("pro", {"jobs": D(10), "compute_seconds": D(100)}, db_session)
        assert total(lines) == D("49.00")
        assert all(line.tier is None for line in lines)

    def test_free_plan_charges_nothing(self, db_session):
        lines = price_usage("free", {"jobs": D(5000), "compute_seconds": D(9999)}, db_session)
        assert total(lines) == D("0.00")

    def test_without_base_fee_for_report_slices(self, db_session):
        lines = price_usage("pro", {"jobs": D(100_625)}, db_session, include_base_fee=False)
        assert "base_fee" not in {line.metric for line in lines}
        assert total(lines) == D("0.13")

    def test_opens_its_own_session(self):
        assert total(price_usage("enterprise", {})) == D("999.00")

    def test_unknown_plan(self, db_session):
        with pytest.raises(NotFound):
            price_usage("no-such-plan", {}, db_session)


class TestRounding:
    def test_each_line_rounded_half_up_and_total_is_sum_of_rounded_lines(self, db_session):
        plan = make_plan(db_session)
        set_price(
            db_session, plan_name=plan.name, metric="jobs", included_units=D(0), tiers=[(None, D("0.005"))]
        )
        set_price(
            db_session,
            plan_name=plan.name,
            metric="attempts",
            included_units=D(0),
            tiers=[(None, D("0.005"))],
        )
        lines = price_usage(plan.name, {"jobs": D(1), "attempts": D(1)}, db_session)
        charged = [line for line in lines if line.tier]
        assert [line.amount for line in charged] == [D("0.01"), D("0.01")]
        # Rounding the unrounded sum once (0.010) would give 0.01; the rule gives what the lines show.
        assert total(lines) == D("0.02")

    def test_awkward_quantities(self, db_session):
        plan = make_plan(db_session)
        set_price(
            db_session,
            plan_name=plan.name,
            metric="compute_seconds",
            included_units=D("0.5"),
            tiers=[(D("3.333"), D("0.00333333")), (None, D("0.1234567"))],
        )
        # 7.777 s billable = 7.777 - 0.5 = 7.277: tier 1 3.333 x 0.00333333 = 0.01110998889 -> 0.01;
        # tier 2 3.944 x 0.1234567 = 0.4869132248 -> 0.49
        lines = price_usage(plan.name, {"compute_ms": D(7777)}, db_session)
        got = by_key(lines)
        assert got[("compute_seconds", 1)].quantity == D("3.333")
        assert got[("compute_seconds", 1)].amount == D("0.01")
        assert got[("compute_seconds", 2)].quantity == D("3.944")
        assert got[("compute_seconds", 2)].amount == D("0.49")
        assert total(lines) == D("0.50")

    def test_zero_decimal_currency_rounds_to_whole_units(self, db_session):
        plan = make_plan(db_session, currency="jpy", base_fee="1000")
        set_price(
            db_session, plan_name=plan.name, metric="jobs", included_units=D(0), tiers=[(None, D("0.5"))]
        )
        lines = price_usage(plan.name, {"jobs": D(3)}, db_session)  # 1.5 yen -> 2
        assert total(lines) == D("1002")
        assert to_minor_units(total(lines), "jpy") == 1002
        assert to_minor_units(D("53.53"), "usd") == 5353

    def test_round_amount_half_up(self):
        assert round_amount(D("0.125"), "usd") == D("0.13")
        assert round_amount(D("0.135"), "usd") == D("0.14")
        assert round_amount(D("0.0049999"), "usd") == D("0.00")
        with pytest.raises(ValueError, match="not rounded to the currency's minor unit"):
            to_minor_units(D("0.125"), "usd")


class TestTiers:
    def test_boundaries(self, db_session):
        plan = make_plan(db_session)
        set_price(
            db_session,
            plan_name=plan.name,
            metric="jobs",
            included_units=D(10),
            tiers=[(D(100), D("1")), (D(1000), D("0.5")), (None, D("0.1"))],
        )
        exactly_first = by_key(price_usage(plan.name, {"jobs": D(110)}, db_session))
        assert exactly_first[("jobs", 1)].quantity == D(100) and ("jobs", 2) not in exactly_first
        spanning = by_key(price_usage(plan.name, {"jobs": D(1511)}, db_session))
        assert spanning[("jobs", 1)].amount == D("100.00")
        assert spanning[("jobs", 2)].quantity == D(900) and spanning[("jobs", 2)].amount == D("450.00")
        assert spanning[("jobs", 3)].quantity == D(501) and spanning[("jobs", 3)].amount == D("50.10")

    def test_included_defaults_to_plan_quota(self, db_session):
        plan = make_plan(db_session, included_jobs=5)
        set_price(db_session, plan_name=plan.name, metric="jobs", tiers=[(None, D("1"))])
        assert total(price_usage(plan.name, {"jobs": D(8)}, db_session)) == D("3.00")

    def test_metering_units_are_normalized(self):
        usage = normalize_usage({"compute_ms": 1500, "wall_ms": D(1), "jobs": 2, "unknown": 9})
        assert usage == {
            "jobs": D(2),
            "attempts": D(0),
            "compute_seconds": D("1.5"),
            "wall_seconds": D("0.001"),
        }

    @pytest.mark.parametrize(
        "tiers",
        [
            [],
            [(D(10), D("1"))],  # last tier bounded
            [(D(10), D("1")), (D(5), D("1")), (None, D("1"))],  # bounds not increasing
            [(None, D("1")), (None, D("1"))],  # unbounded tier not last
            [(None, D("-1"))],
        ],
    )
    def test_invalid_tiers_rejected(self, db_session, tiers):
        with pytest.raises(InvalidInput):
            set_price(db_session, plan_name="pro", metric="jobs", tiers=tiers)
        db_session.rollback()


ADMIN = {"Authorization": "Bearer test-admin-token-0123456789abcdef"}


class TestOperatorPrices:
    def test_put_and_get_price(self, api, db_session):
        plan = make_plan(db_session, included_compute_seconds=60)
        body = {"tiers": [{"up_to": "100", "unit_price": "0.01"}, {"up_to": None, "unit_price": "0.005"}]}
        resp = api.put(f"/admin/v1/billing/prices/{plan.name}/compute_seconds", json=body, headers=ADMIN)
        assert resp.status_code == 200, resp.text
        first = resp.json()
        assert datetime.fromisoformat(first.pop("effective_from")) <= datetime.now(UTC)
        assert first == {
            "plan": plan.name,
            "metric": "compute_seconds",
            "included_units": "60",
            "included_from_plan": True,
            "description": "",
            "tiers": [{"up_to": "100", "unit_price": "0.01"}, {"up_to": None, "unit_price": "0.005"}],
        }
        # A new version: the listing shows the one in force now.
        body = {"included_units": "0", "tiers": [{"unit_price": "0.02"}]}
        assert (
            api.put(
                f"/admin/v1/billing/prices/{plan.name}/compute_seconds", json=body, headers=ADMIN
            ).status_code
            == 200
        )
        listed = api.get("/admin/v1/billing/prices", params={"plan": plan.name}, headers=ADMIN).json()[
            "items"
        ]
        assert len(listed) == 1 and listed[0]["tiers"] == [{"up_to": None, "unit_price": "0.02"}]
        assert total(price_usage(plan.name, {"compute_seconds": D(50)}, db_session)) == D("1.00")
        assert (
            api.delete(f"/admin/v1/billing/prices/{plan.name}/compute_seconds", headers=ADMIN).status_code
            == 204
        )
        assert (
            api.get("/admin/v1/billing/prices", params={"plan": plan.name}, headers=ADMIN).json()["items"]
            == []
        )

    @pytest.mark.usefixtures("clean_billing")
    def test_price_versions_rate_usage_by_when_it_occurred(self, api, db_session):
        """Issue 14 item 4: editing a price re-priced the open month backwards."""
        from tenantq.billing.invoicing.service import close_period
        from tests.billing.invoice_factories import UsageEventFactory, old_tenant

        plan = make_plan(db_session, included_jobs=0)
        tenant = old_tenant(plan.name)
        set_price(
            db_session, plan_name=plan.name, metric="jobs", tiers=[(None, D("1"))], effective_from=EPOCH
        )
        db_session.commit()
        UsageEventFactory(
            tenant=tenant, metric="jobs", quantity=10, occurred_at=datetime(2001, 3, 5, tzinfo=UTC)
        )
        UsageEventFactory(
            tenant=tenant, metric="jobs", quantity=4, occurred_at=datetime(2001, 3, 20, tzinfo=UTC)
        )
        resp = api.put(
            f"/admin/v1/billing/prices/{plan.name}/jobs",
            json={"tiers": [{"unit_price": "0.50"}], "effective_from": "2001-03-15T00:00:00Z"},
            headers=ADMIN,
        )
        assert resp.status_code == 200 and resp.json()["effective_from"].startswith("2001-03-15")
        bad = api.put(
            f"/admin/v1/billing/prices/{plan.name}/jobs",
            json={"tiers": [{"unit_price": "1"}], "effective_from": "2001-03-15T00:00:00"},
            headers=ADMIN,
        )
        assert bad.status_code == 422  # a time without a zone is ambiguous
        [invoice] = [
            i
            for i in close_period(db_session, "2001-03", now=datetime(2001, 4, 5, tzinfo=UTC)).invoices
            if i.tenant_id == tenant.id
        ]
        db_session.commit()
        # 10 jobs before the 15th at 1.00, 4 after at 0.50.
        assert invoice.total == D("12.00")
        assert [(line.quantity, line.unit_price) for line in invoice.lines if line.tier] == [
            (D(10), D(1)),
            (D(4), D("0.5")),
        ]

    def test_bad_prices(self, api):
        bad = api.put(
            "/admin/v1/billing/prices/pro/jobs",
            json={"tiers": [{"up_to": "5", "unit_price": "1"}]},
            headers=ADMIN,
        )
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_price"
        unknown = api.put(
            "/admin/v1/billing/prices/pro/bananas", json={"tiers": [{"unit_price": "1"}]}, headers=ADMIN
        )
        assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "invalid_price"
        missing = api.put(
            "/admin/v1/billing/prices/nope/jobs", json={"tiers": [{"unit_price": "1"}]}, headers=ADMIN
        )
        assert missing.status_code == 404
        assert api.get("/admin/v1/billing/prices").status_code == 401


class TestNormalizeUsage:
    @pytest.mark.parametrize(
        ("ms", "seconds"), [("compute_ms", "compute_seconds"), ("wall_ms", "wall_seconds")]
    )
    def test_a_time_in_both_units_is_refused(self, ms, seconds):
        # Adding both would bill the same seconds twice.
        with pytest.raises(ValueError, match="both"):
            normalize_usage({ms: 1000, seconds: 1})
