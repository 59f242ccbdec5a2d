"""Period close and invoices: hand-computed totals, idempotent close, grace window, late events, API."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from tenantq.billing.invoicing.models import BillingPeriod, Invoice
from tenantq.billing.invoicing.service import close_due_periods, close_period, due_periods
from tenantq.billing.usage.models import UsageEvent
from tenantq.core.db import session_factory
from tenantq.core.errors import Conflict, InvalidInput
from tenantq.core.periods import Period
from tests.billing.invoice_factories import UsageEventFactory, old_tenant
from tests.factories import ApiKeyFactory, auth

D = Decimal
ADMIN = {"Authorization": "Bearer test-admin-token-0123456789abcdef"}


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


pytestmark = pytest.mark.usefixtures("clean_billing")


def pro_usage(tenant, when: datetime) -> None:
    """Usage whose invoice is hand-computed below: 100,625 jobs and 47,345.678 compute seconds."""
    UsageEventFactory(tenant=tenant, metric="jobs", quantity=60_000, occurred_at=when)
    UsageEventFactory(tenant=tenant, metric="jobs", quantity=40_625, occurred_at=when + timedelta(days=1))
    UsageEventFactory(tenant=tenant, metric="compute_ms", quantity=47_345_678, occurred_at=when)
    UsageEventFactory(tenant=tenant, metric="attempts", quantity=100_700, occurred_at=when)
    UsageEventFactory(tenant=tenant, metric="wall_ms", quantity=99_000_000, occurred_at=when)


def invoices_of(session, tenant_id: str) -> list[Invoice]:
    session.expire_all()
    return list(
        session.scalars(select(Invoice).where(Invoice.tenant_id == tenant_id).order_by(Invoice.period))
    )


class TestClosePeriod:
    def test_invoice_matches_hand_computed_amount(self, db_session):
        tenant = old_tenant("pro")
        pro_usage(tenant, at(2001, 3, 10))
        result = close_period(db_session, "2001-03", now=at(2001, 4, 3))
        db_session.commit()
        assert result.created
        [invoice] = [i for i in result.invoices if i.tenant_id == tenant.id]
        # base 49.00 + jobs overage 625 x 0.0002 = 0.125 -> 0.13 + compute overage 11,345.678 s:
        # 10,000 x 0.0004 = 4.00 and 1,345.678 x 0.0003 = 0.4037034 -> 0.40  => 53.53 usd
        assert invoice.total == D("53.53") and invoice.currency == "usd" and invoice.status == "open"
        assert [(ln.metric, ln.tier, ln.quantity, ln.amount) for ln in invoice.lines] == [
            ("base_fee", None, D(1), D("49.00")),
            ("jobs", None, D(100_000), D("0")),
            ("jobs", 1, D(625), D("0.13")),
            ("compute_seconds", None, D(36_000), D("0")),
            ("compute_seconds", 1, D(10_000), D("4.00")),
            ("compute_seconds", 2, D("1345.678"), D("0.40")),
        ]
        assert sum(ln.amount for ln in invoice.lines) == invoice.total
        assert result.period.event_count == 5 and result.period.invoice_count == 1

    def test_closing_twice_changes_nothing(self, db_session):
        tenant = old_tenant("pro")
        pro_usage(tenant, at(2001, 3, 10))
        first = close_period(db_session, "2001-03", now=at(2001, 4, 3))
        db_session.commit()
        second = close_period(db_session, "2001-03", now=at(2001, 5, 1))
        db_session.commit()
        assert not second.created
        assert [i.id for i in second.invoices] == [i.id for i in first.invoices]
        [invoice] = invoices_of(db_session, tenant.id)
        assert invoice.total == D("53.53") and len(invoice.lines) == 6
        assert db_session.scalar(select(func.count()).select_from(BillingPeriod)) == 1

    def test_concurrent_closes_issue_one_invoice(self, db_session):
        tenant = old_tenant("pro")
        pro_usage(tenant, at(2001, 3, 10))
        results, errors = [], []
        barrier = threading.Barrier(3)

        def closer():
            session = session_factory()()
            try:
                barrier.wait(10)
                results.append(close_period(session, "2001-03", now=at(2001, 4, 3)).created)
                session.commit()
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
            finally:
                session.close()

        threads = [threading.Thread(target=closer) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert sorted(results) == [False, False, True]
        [invoice] = invoices_of(db_session, tenant.id)
        assert invoice.total == D("53.53")

    def test_grace_window(self, db_session):
        tenant = old_tenant("pro")
        UsageEventFactory(tenant=tenant, quantity=1, occurred_at=at(2001, 3, 31, 23, 59))
        with pytest.raises(Conflict) as not_ended:
            close_period(db_session, "2001-03", now=at(2001, 3, 31, 23, 59, 59))
        assert not_ended.value.code == "period_not_ended"
        with pytest.raises(Conflict) as inside:
            close_period(db_session, "2001-03", now=at(2001, 4, 2, 23, 59))  # grace is 2 days
        assert inside.value.code == "period_not_due"
        assert inside.value.details["due_at"] == "2001-04-03T00:00:00+00:00"
        forced = close_period(db_session, "2001-03", now=at(2001, 4, 1, 1), force=True)
        db_session.commit()
        assert forced.created and forced.period.forced

    def test_bad_period(self, db_session):
        for bad in ("2001-13", "2001-3", "march", ""):
            with pytest.raises(InvalidInput):
                close_period(db_session, bad, now=at(2002, 1, 1))

    def test_closing_a_later_month_closes_the_earlier_open_months_first(self, db_session):
        tenant = old_tenant("free")
        UsageEventFactory(tenant=tenant, occurred_at=at(2001, 2, 10))
        UsageEventFactory(tenant=tenant, occurred_at=at(2001, 4, 10))
        result = close_period(db_session, "2001-04", now=at(2001, 6, 1))
        db_session.commit()
        # Billing starts at the first month with unbilled usage; March had none but is closed too.
        assert result.created and result.also_closed == ["2001-02", "2001-03"]
        assert [i.period for i in invoices_of(db_session, tenant.id)] == ["2001-02", "2001-04"]
        again = close_period(db_session, "2001-03", now=at(2001, 6, 1))
        assert not again.created  # already closed, not refused
        with pytest.raises(Conflict) as backwards:
            close_period(db_session, "2001-01", now=at(2001, 6, 1))
        assert backwards.value.code == "period_out_of_order"

    def test_base_fees_of_a_skipped_month_are_never_lost(self, db_session):
        """Issue 14 item 3: December closed, then February: January's base fee used to be lost."""
        tenant = old_tenant("pro")  # 49.00 a month, no usage at all
        close_period(db_session, "2001-12", now=at(2002, 3, 10))
        db_session.commit()
        result = close_period(db_session, "2002-02", now=at(2002, 3, 10))
        db_session.commit()
        assert result.also_closed == ["2002-01"]
        fees = {i.period: i.total for i in invoices_of(db_session, tenant.id)}
        assert fees == {"2001-12": D("49.00"), "2002-01": D("49.00"), "2002-02": D("49.00")}


class TestLateEvents:
    def test_event_recorded_inside_grace_lands_in_its_period(self, db_session):
        tenant = old_tenant("pro")
        # Occurred at the last second of March, reached SQL on April 2nd (inside the 2-day grace).
        UsageEventFactory(
            tenant=tenant,
            metric="compute_ms",
            quantity=37_000_000,
            occurred_at=at(2001, 3, 31, 23, 59, 59),
            recorded_at=at(2001, 4, 2, 12),
        )
        close_period(db_session, "2001-03", now=at(2001, 4, 3))
        db_session.commit()
        [march] = invoices_of(db_session, tenant.id)
        assert march.period == "2001-03"
        # 37,000 s - 36,000 included = 1,000 s x 0.0004 = 0.40
        assert march.total == D("49.40")

    def test_event_recorded_after_close_lands_in_next_open_period(self, db_session):
        tenant = old_tenant("pro")
        UsageEventFactory(
            tenant=tenant, metric="compute_ms", quantity=36_000_000, occurred_at=at(2001, 3, 20)
        )
        march = close_period(db_session, "2001-03", now=at(2001, 4, 3))
        db_session.commit()
        # A worker's buffer was stuck: a March attempt reaches SQL after March was closed.
        late = UsageEventFactory(
            tenant=tenant,
            metric="compute_ms",
            quantity=2_500_000,
            occurred_at=at(2001, 3, 31, 22),
            recorded_at=at(2001, 4, 5),
        )
        UsageEventFactory(
            tenant=tenant, metric="compute_ms", quantity=36_000_000, occurred_at=at(2001, 4, 10)
        )
        # Closing March again does not touch it: March's invoice is final.
        assert not close_period(db_session, "2001-03", now=at(2001, 4, 6)).created
        april = close_period(db_session, "2001-04", now=at(2001, 5, 3))
        db_session.commit()
        assert april.period.late_event_count == 1
        by_period = {i.period: i for i in invoices_of(db_session, tenant.id)}
        assert by_period["2001-03"].total == D("49.00")  # exactly the included 36,000 s
        # April: 36,000 + 2,500 late seconds = 38,500 s; 2,500 over included x 0.0004 = 1.00
        assert by_period["2001-04"].total == D("50.00")
        db_session.expire_all()
        assert db_session.get(UsageEvent, late.id).billed_period == "2001-04"
        assert march.invoices[0].id == by_period["2001-03"].id

    def test_next_month_usage_is_not_swept_into_this_one(self, db_session):
        tenant = old_tenant("pro")
        may = UsageEventFactory(tenant=tenant, metric="jobs", quantity=200_000, occurred_at=at(2001, 5, 1))
        close_period(db_session, "2001-04", now=at(2001, 5, 3))
        db_session.commit()
        [april] = invoices_of(db_session, tenant.id)
        assert april.total == D("49.00")
        db_session.expire_all()
        assert db_session.get(UsageEvent, may.id).billed_period is None


class TestScheduledClose:
    def test_due_periods_and_close_due(self, db_session):
        tenant = old_tenant("free")
        UsageEventFactory(tenant=tenant, occurred_at=at(2001, 1, 5))
        # Tenants exist since 2000-01 (factory), so every month from then is a candidate.
        assert due_periods(db_session, now=at(2000, 3, 2, 23)) == ["2000-01"]
        assert due_periods(db_session, now=at(2000, 3, 3)) == ["2000-01", "2000-02"]
        db_session.commit()
        closed = close_due_periods(now=at(2001, 2, 3))
        assert closed[0] == "2000-01" and closed[-1] == "2001-01" and len(closed) == 13
        assert close_due_periods(now=at(2001, 2, 3)) == []
        [invoice] = invoices_of(db_session, tenant.id)  # free: only the month with usage has an invoice
        assert invoice.period == "2001-01" and invoice.total == D("0.00") and invoice.status == "paid"

    def test_beat_schedules_the_close(self):
        import tenantq.billing.invoicing.tasks  # noqa: F401
        from tenantq.core.celery import app

        assert app.conf.beat_schedule["billing.close_due_periods"]["task"] == "billing.close_due_periods"
        assert "billing.close_due_periods" in app.tasks

    def test_cli_close(self, db_session):
        from tenantq.cli import app

        tenant = old_tenant("pro")
        pro_usage(tenant, at(2001, 3, 10))
        runner = CliRunner()
        first = runner.invoke(app, ["billing", "close", "--period", "2001-03", "--json"])
        assert first.exit_code == 0, first.output
        import json

        body = json.loads(first.output)
        assert body["created"] is True
        assert [i["total"] for i in body["invoices"] if i["tenant_id"] == tenant.id] == ["53.53"]
        again = json.loads(runner.invoke(app, ["billing", "close", "--period", "2001-03", "--json"]).output)
        assert again["created"] is False and again["invoices"] == body["invoices"]
        bad = runner.invoke(app, ["billing", "close", "--period", "2999-01", "--json"])
        assert bad.exit_code == 1 and json.loads(bad.output)["error"]["code"] == "period_not_ended"


class TestInvoiceApi:
    def test_list_and_get(self, api, db_session):
        key = ApiKeyFactory(tenant=old_tenant("pro"))
        pro_usage(key.tenant, at(2001, 3, 10))
        close_period(db_session, "2001-03", now=at(2001, 4, 3))
        close_period(db_session, "2001-04", now=at(2001, 5, 3))
        db_session.commit()
        listed = api.get("/v1/invoices", headers=auth(key))
        assert listed.status_code == 200, listed.text
        items = listed.json()["items"]
        assert [i["period"] for i in items] == ["2001-04", "2001-03"]
        march = api.get(f"/v1/invoices/{items[1]['id']}", headers=auth(key)).json()
        assert set(march) >= {"id", "period", "status", "currency", "total", "lines"}
        assert march["total"] == "53.53" and march["currency"] == "usd" and march["status"] == "open"
        assert march["lines"][2] == {
            "metric": "jobs",
            "description": march["lines"][2]["description"],
            "quantity": "625",
            "unit_price": "0.0002",
            "amount": "0.13",
        }
        assert march["lines"][5]["quantity"] == "1345.678" and march["lines"][5]["amount"] == "0.40"
        assert items[0]["total"] == "49.00"
        page = api.get("/v1/invoices", params={"limit": 1}, headers=auth(key)).json()
        assert len(page["items"]) == 1 and page["next_cursor"]
        rest = api.get(
            "/v1/invoices", params={"limit": 1, "cursor": page["next_cursor"]}, headers=auth(key)
        ).json()
        assert [i["period"] for i in rest["items"]] == ["2001-03"] and rest["next_cursor"] is None
        assert api.get("/v1/invoices", params={"status": "paid"}, headers=auth(key)).json()["items"] == []

    def test_other_tenants_invoice_is_404(self, api, db_session):
        mine = ApiKeyFactory(tenant=old_tenant("pro"))
        theirs = ApiKeyFactory(tenant=old_tenant("pro"))
        close_period(db_session, "2001-03", now=at(2001, 4, 3))
        db_session.commit()
        [their_invoice] = invoices_of(db_session, theirs.tenant_id)
        resp = api.get(f"/v1/invoices/{their_invoice.id}", headers=auth(mine))
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
        assert [i["id"] for i in api.get("/v1/invoices", headers=auth(mine)).json()["items"]] != [
            their_invoice.id
        ]
        assert len(api.get("/v1/invoices", headers=auth(mine)).json()["items"]) == 1

    def test_scope_and_auth(self, api):
        no_scope = ApiKeyFactory(scopes=["jobs:read"])
        resp = api.get("/v1/invoices", headers=auth(no_scope))
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "missing_scope"
        assert api.get("/v1/invoices").status_code == 401
        assert (
            api.get("/v1/invoices", params={"cursor": "!!"}, headers=auth(ApiKeyFactory())).status_code == 422
        )


class TestAdminPeriods:
    def test_close_and_list(self, api, db_session):
        tenant = old_tenant("pro")
        pro_usage(tenant, at(2001, 3, 10))
        created = api.post("/admin/v1/billing/close", json={"period": "2001-03"}, headers=ADMIN)
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["created"] is True and body["period"]["closed_by"] == "operator"
        assert [i["total"] for i in body["invoices"]] == ["53.53"]
        again = api.post("/admin/v1/billing/close", json={"period": "2001-03"}, headers=ADMIN)
        assert again.status_code == 200 and again.json()["created"] is False
        periods = api.get("/admin/v1/billing/periods", headers=ADMIN).json()
        assert [p["period"] for p in periods["items"]] == ["2001-03"]
        assert periods["grace_seconds"] == 2 * 24 * 3600

    def test_errors(self, api):
        future = (datetime.now(UTC) + timedelta(days=62)).strftime("%Y-%m")
        resp = api.post("/admin/v1/billing/close", json={"period": future, "force": True}, headers=ADMIN)
        assert resp.status_code == 409 and resp.json()["error"]["code"] == "period_not_ended"
        resp = api.post("/admin/v1/billing/close", json={"period": "2001-3"}, headers=ADMIN)
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid_input"
        assert api.post("/admin/v1/billing/close", json={"period": "2001-03"}).status_code == 401
        tenant_key = ApiKeyFactory()
        assert api.get("/admin/v1/billing/periods", headers=auth(tenant_key)).status_code == 401

    def test_period_helpers(self):
        p = Period.parse("2001-12")
        assert p.start == at(2001, 12, 1) and p.end == at(2002, 1, 1) and p.next().name == "2002-01"
