"""Corrections and the audit log: void and reissue, credit notes, who changed which price, plan, tenant
or invoice. API, CLI and the service, against a real database (Stripe pushes: test_stripe.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from tenantq.billing.invoicing import reports
from tenantq.billing.invoicing.corrections import issue_credit_note, void_invoice
from tenantq.billing.invoicing.models import EPOCH, Invoice
from tenantq.billing.invoicing.pricing import set_price
from tenantq.billing.invoicing.service import close_period
from tenantq.core.audit import AuditEntry
from tenantq.core.errors import Conflict, InvalidInput
from tests.billing.invoice_factories import UsageEventFactory, old_tenant
from tests.factories import ApiKeyFactory, TenantFactory, auth

D = Decimal
ADMIN = {"Authorization": "Bearer test-admin-token-0123456789abcdef"}


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


pytestmark = pytest.mark.usefixtures("clean_billing")


@pytest.fixture
def march(db_session, make_plan):
    """A tenant on its own plan (base fee 10.00, jobs 0.50 each, none included) with 3 jobs in March
    2001, closed: invoice 11.50."""
    plan = make_plan(base_fee=D("10.00"), included_jobs=0)
    set_price(db_session, plan_name=plan.name, metric="jobs", tiers=[(None, D("0.50"))], effective_from=EPOCH)
    db_session.commit()
    tenant = old_tenant(plan.name)
    for day in (3, 4, 5):
        UsageEventFactory(tenant=tenant, metric="jobs", quantity=1, occurred_at=at(2001, 3, day))
    result = close_period(db_session, "2001-03", now=at(2001, 4, 10))
    db_session.commit()
    [invoice] = [i for i in result.invoices if i.tenant_id == tenant.id]
    assert invoice.total == D("11.50")
    return tenant, plan, invoice


def audit_of(session, **where) -> list[AuditEntry]:
    session.expire_all()
    query = select(AuditEntry).order_by(AuditEntry.at, AuditEntry.id)
    for key, value in where.items():
        query = query.where(getattr(AuditEntry, key) == value)
    return list(session.scalars(query))


class TestVoidAndReissue:
    def test_reissue_rates_the_billed_usage_with_the_fixed_price(self, db_session, march):
        tenant, plan, invoice = march
        # The correction: a price version effective from the start of the wrong month.
        set_price(
            db_session,
            plan_name=plan.name,
            metric="jobs",
            tiers=[(None, D("0.40"))],
            actor="test",
            effective_from=at(2001, 3, 1),
        )
        new = void_invoice(db_session, invoice, reason="price was wrong", reissue=True, actor="test")
        db_session.commit()
        assert invoice.status == "void" and invoice.void_reason == "price was wrong"
        assert new is not None and new.revision == 2 and invoice.replaced_by_id == new.id
        assert new.total == D("11.20")  # 10.00 + 3 x 0.40
        # The closed period's report now reads the reissued invoice, to the cent.
        report = reports.tenant_report(db_session, tenant, "2001-03")
        assert report["invoice_id"] == new.id and D(report["totals"]["total_charges"]) == D("11.20")
        operator = reports.operator_report(db_session, "2001-03")
        [row] = [r for r in operator["rows"] if r["tenant_id"] == tenant.id]
        assert D(row["charges"]) == D("11.20")

    def test_void_without_reissue_leaves_nothing_to_pay(self, db_session, march):
        tenant, _plan, invoice = march
        assert void_invoice(db_session, invoice, reason="duplicate", actor="test") is None
        db_session.commit()
        assert D(reports.tenant_report(db_session, tenant, "2001-03")["totals"]["total_charges"]) == 0

    def test_refusals(self, db_session, march):
        _tenant, _plan, invoice = march
        with pytest.raises(InvalidInput):
            void_invoice(db_session, invoice, reason="  ", actor="test")
        invoice.status = "paid"
        with pytest.raises(Conflict) as paid:
            void_invoice(db_session, invoice, reason="x", actor="test")
        assert paid.value.code == "invoice_paid"
        invoice.status = "open"
        void_invoice(db_session, invoice, reason="x", actor="test")
        with pytest.raises(Conflict) as twice:
            void_invoice(db_session, invoice, reason="x", actor="test")
        assert twice.value.code == "invoice_void"


class TestCreditNotes:
    def test_credits_add_up_to_the_total_and_no_further(self, db_session, march):
        _tenant, _plan, invoice = march
        issue_credit_note(db_session, invoice, amount="1.50", reason="late job", actor="test")
        with pytest.raises(Conflict) as over:
            issue_credit_note(db_session, invoice, amount="10.01", reason="too much", actor="test")
        assert over.value.code == "credit_exceeds_invoice" and over.value.details["remaining"] == "10.00"
        issue_credit_note(db_session, invoice, amount="10.00", reason="the rest", actor="test")
        db_session.commit()
        assert invoice.status == "paid" and invoice.total == D("11.50")  # the invoice itself never changes

    @pytest.mark.parametrize("amount", ["0", "-1", "0.001", "NaN", "abc"])
    def test_bad_amounts_are_refused(self, db_session, march, amount):
        with pytest.raises(InvalidInput):
            issue_credit_note(db_session, march[2], amount=amount, reason="x", actor="test")

    def test_api_answers_4xx_in_the_error_shape(self, api, db_session, march):
        _tenant, _plan, invoice = march
        url = f"/admin/v1/billing/invoices/{invoice.id}/credit-notes"
        for body, status in [
            ({"amount": "0.001", "reason": "x"}, 422),
            ({"amount": "-2", "reason": "x"}, 422),
            ({"amount": "12.00", "reason": "x"}, 409),
            ({"amount": "1.00"}, 422),
        ]:
            resp = api.post(url, json=body, headers=ADMIN)
            assert resp.status_code == status, resp.text
            assert set(resp.json()["error"]) >= {"code", "message"}
        missing = api.post("/admin/v1/billing/invoices/nope/void", json={"reason": "x"}, headers=ADMIN)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


class TestAuditLog:
    def test_price_plan_tenant_and_invoice_changes_are_recorded(self, api, db_session, march):
        tenant, plan, invoice = march
        resp = api.put(
            f"/admin/v1/billing/prices/{plan.name}/jobs",
            json={"tiers": [{"unit_price": "0.45"}]},
            headers=ADMIN,
        )
        assert resp.status_code == 200, resp.text
        assert (
            api.patch(f"/admin/v1/plans/{plan.name}", json={"base_fee": "12"}, headers=ADMIN).status_code
            == 200
        )
        resp = api.patch(
            f"/admin/v1/tenants/{tenant.id}",
            json={"plan": "pro", "billing_email": "ap@example.com"},
            headers=ADMIN,
        )
        assert resp.status_code == 200 and resp.json()["billing_email"] == "ap@example.com"
        resp = api.post(
            f"/admin/v1/billing/invoices/{invoice.id}/void", json={"reason": "moved plan"}, headers=ADMIN
        )
        assert resp.status_code == 200, resp.text

        [price] = audit_of(
            db_session, entity_type="price", entity_id=f"{plan.name}/jobs", actor="operator:operator"
        )
        assert price.action == "price.set"
        assert price.before["tiers"][0][1].rstrip("0") == "0.5" and price.after["tiers"][0][1] == "0.45"
        [plan_change] = audit_of(db_session, entity_type="plan", entity_id=plan.name)
        assert D(plan_change.before["base_fee"]) == 10 and D(plan_change.after["base_fee"]) == 12
        [tenant_change] = audit_of(db_session, entity_type="tenant", entity_id=tenant.id)
        assert tenant_change.before == {"plan": plan.name, "billing_email": None}
        assert tenant_change.after == {"plan": "pro", "billing_email": "ap@example.com"}
        resp = api.patch(
            f"/admin/v1/tenants/{tenant.id}", json={"overrides": {"concurrency": 1}}, headers=ADMIN
        )
        assert resp.status_code == 200, resp.text
        override = audit_of(db_session, entity_type="tenant", entity_id=tenant.id)[-1]
        assert override.before == {"overrides": {}} and override.after == {"overrides": {"concurrency": 1}}
        [void] = audit_of(db_session, action="invoice.void", entity_id=invoice.id)
        assert void.before["status"] == "open" and void.after["status"] == "void"
        assert void.actor == "operator:operator" and void.tenant_id == tenant.id

        listed = api.get(f"/admin/v1/audit?tenant_id={tenant.id}", headers=ADMIN).json()["items"]
        assert [e["action"] for e in listed] == ["tenant.update", "invoice.void", "tenant.update"]
        page = api.get("/admin/v1/audit?limit=1", headers=ADMIN).json()
        second = api.get(f"/admin/v1/audit?limit=1&cursor={page['next_cursor']}", headers=ADMIN).json()
        assert page["items"][0]["id"] != second["items"][0]["id"]
        assert api.get("/admin/v1/audit?cursor=%%%", headers=ADMIN).status_code == 422

    def test_cli_void_credit_note_and_audit(self, platform_env, db_session, march):
        from tenantq.cli import app

        tenant, _plan, invoice = march
        runner = CliRunner()
        out = runner.invoke(app, ["billing", "void", invoice.id, "--reason", "typo", "--reissue", "--json"])
        assert out.exit_code == 0, out.output
        payload = json.loads(out.output)
        assert payload["voided"]["status"] == "void" and payload["reissued"]["revision"] == 2
        new_id = payload["reissued"]["id"]
        out = runner.invoke(
            app, ["billing", "credit-note", new_id, "--amount", "2.50", "--reason", "sorry", "--json"]
        )
        assert out.exit_code == 0, out.output
        assert json.loads(out.output)["credited"] == "2.50"
        out = runner.invoke(
            app, ["billing", "credit-note", new_id, "--amount", "99", "--reason", "x", "--json"]
        )
        assert out.exit_code == 1 and json.loads(out.output)["error"]["code"] == "credit_exceeds_invoice"
        out = runner.invoke(
            app, ["tenant", "update", tenant.id, "--billing-email", "cli@example.com", "--json"]
        )
        assert out.exit_code == 0 and json.loads(out.output)["billing_email"] == "cli@example.com"
        out = runner.invoke(app, ["billing", "audit", "--tenant", tenant.id, "--json"])
        actions = [e["action"] for e in json.loads(out.output)["items"]]
        # Newest first; the void and its reissue are one change at one instant (either order).
        assert actions[:2] == ["tenant.update", "invoice.credit_note"]
        assert sorted(actions[2:]) == ["invoice.reissue", "invoice.void"]
        assert {e["actor"] for e in json.loads(out.output)["items"]} == {"cli"}
        db_session.expire_all()
        assert db_session.get(Invoice, new_id).status == "open"


class TestTenantBillingSettings:
    def test_tenant_sets_its_billing_email(self, api, db_session):
        key = ApiKeyFactory(tenant=TenantFactory(), scopes=["billing:read", "keys:manage"])
        resp = api.put("/v1/billing/settings", json={"billing_email": "pay@acme.example"}, headers=auth(key))
        assert resp.status_code == 200 and resp.json() == {"billing_email": "pay@acme.example"}
        assert api.get("/v1/billing/settings", headers=auth(key)).json() == {
            "billing_email": "pay@acme.example"
        }
        [entry] = audit_of(db_session, entity_id=key.tenant_id)
        assert entry.actor == f"tenant:{key.tenant_id}" and entry.after == {
            "billing_email": "pay@acme.example"
        }
        for bad in ("not-an-email", "a b@c.d", "x@y", "a" * 250 + "@example.com"):
            resp = api.put("/v1/billing/settings", json={"billing_email": bad}, headers=auth(key))
            assert resp.status_code == 422, (bad, resp.text)
            assert resp.json()["error"]["code"] in ("invalid_billing_email", "invalid_input"), resp.text
        # Nothing half-written: the address stayed.
        assert api.get("/v1/billing/settings", headers=auth(key)).json() == {
            "billing_email": "pay@acme.example"
        }
        resp = api.put("/v1/billing/settings", json={"billing_email": "x@y"}, headers=auth(key))
        assert resp.json()["error"]["code"] == "invalid_billing_email"
        cleared = api.put("/v1/billing/settings", json={"billing_email": ""}, headers=auth(key))
        assert cleared.json() == {"billing_email": None}

    def test_reading_scope_cannot_write(self, api):
        key = ApiKeyFactory(tenant=TenantFactory(), scopes=["billing:read"])
        resp = api.put("/v1/billing/settings", json={"billing_email": "x@y.example"}, headers=auth(key))
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "missing_scope"


class TestPlanChangeMidPeriod:
    """Issue 14 item 4: the plan at close time priced the whole month (10.23 of usage, then a move to
    free: an invoice of 0.00)."""

    def test_each_plan_rates_its_part_and_base_fees_are_prorated(self, api, db_session, make_plan):
        from tenantq.tenants.accounts.models import TenantPlanChange

        a = make_plan(base_fee=D("30.00"), included_jobs=0)
        b = make_plan(base_fee=D("62.00"), included_jobs=0)
        set_price(
            db_session, plan_name=a.name, metric="jobs", tiers=[(None, D("1.00"))], effective_from=EPOCH
        )
        set_price(
            db_session, plan_name=b.name, metric="jobs", tiers=[(None, D("0.10"))], effective_from=EPOCH
        )
        tenant = old_tenant(b.name)
        db_session.add(
            TenantPlanChange(
                tenant_id=tenant.id, from_plan=a.name, to_plan=b.name, effective_from=at(2001, 3, 11)
            )
        )
        db_session.commit()
        UsageEventFactory(tenant=tenant, metric="jobs", quantity=5, occurred_at=at(2001, 3, 5))
        UsageEventFactory(tenant=tenant, metric="jobs", quantity=20, occurred_at=at(2001, 3, 20))
        open_report = reports.tenant_report(db_session, tenant, "2001-03")
        [invoice] = [
            i
            for i in close_period(db_session, "2001-03", now=at(2001, 4, 5)).invoices
            if i.tenant_id == tenant.id
        ]
        db_session.commit()
        # 10 of 31 days on A: 30.00 x 0.322581 = 9.68; 21 days on B: 62.00 x 0.677419 = 42.00;
        # 5 jobs under A at 1.00 = 5.00; 20 jobs under B at 0.10 = 2.00.
        fees = [(line.quantity, line.amount) for line in invoice.lines if line.metric == "base_fee"]
        assert fees == [(D("0.322581"), D("9.68")), (D("0.677419"), D("42.00"))]
        assert invoice.total == D("58.68") and invoice.plan_name == b.name
        assert D(open_report["totals"]["total_charges"]) == invoice.total
        assert D(reports.tenant_report(db_session, tenant, "2001-03")["totals"]["total_charges"]) == D(
            "58.68"
        )

    def test_a_plan_change_is_recorded_with_its_time(self, api, db_session, make_plan):
        from tenantq.tenants.accounts.models import TenantPlanChange

        tenant = TenantFactory()
        old = tenant.plan_name
        target = make_plan().name
        assert (
            api.patch(f"/admin/v1/tenants/{tenant.id}", json={"plan": target}, headers=ADMIN).status_code
            == 200
        )
        db_session.expire_all()
        [change] = db_session.scalars(select(TenantPlanChange).where(TenantPlanChange.tenant_id == tenant.id))
        assert (change.from_plan, change.to_plan, change.actor) == (old, target, "operator:operator")
