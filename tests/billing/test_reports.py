"""Usage reports: exact figures and charges for a known set of usage events, JSON, CSV and CLI.

Charges come from the real pricing engine with prices stored on a test plan, and are checked against
amounts computed by hand; a closed period's report must equal its invoice.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import select

from tenantq.billing.invoicing import reports
from tenantq.billing.invoicing.models import EPOCH, Invoice
from tenantq.billing.invoicing.pricing import set_price
from tenantq.billing.invoicing.service import close_period
from tenantq.billing.usage.buffer import insert_events
from tests.billing.invoice_factories import old_tenant
from tests.conftest import ROOT
from tests.factories import ApiKeyFactory, TenantFactory, auth

D = Decimal
PERIOD = "2026-10"


def events(
    tenant_id: str,
    job_id: str,
    attempt: int,
    task: str,
    at: datetime,
    *,
    compute_ms: int,
    wall_ms: int,
    state: str = "succeeded",
) -> list[dict]:
    quantities = {"attempts": 1, "compute_ms": compute_ms, "wall_ms": wall_ms}
    if attempt == 1:
        quantities["jobs"] = 1
    return [
        {
            "id": f"{job_id}:{attempt}:{m}",
            "tenant_id": tenant_id,
            "job_id": job_id,
            "attempt": attempt,
            "task": task,
            "metric": m,
            "quantity": q,
            "state": state,
            "worker": "w@h",
            "occurred_at": at,
        }
        for m, q in quantities.items()
    ]


def seed_known_usage(session, tenant_id: str, year: int = 2026) -> None:
    """October of ``year``: demo.cpu 2 jobs, 3 attempts, 3.5 s CPU, 8.7 s wall; demo.echo 1 job, 0.12 s
    CPU, 0.25 s wall. Totals: 3 jobs, 4 attempts, 3.620 s CPU, 8.950 s wall."""
    a, b, c, late = (str(uuid.uuid4()) for _ in range(4))
    rows = [
        *events(
            tenant_id,
            a,
            1,
            "demo.echo",
            datetime(year, 10, 3, 10, 0, tzinfo=UTC),
            compute_ms=120,
            wall_ms=250,
        ),
        *events(
            tenant_id,
            b,
            1,
            "demo.cpu",
            datetime(year, 10, 3, 23, 59, 59, 500000, tzinfo=UTC),
            compute_ms=1500,
            wall_ms=1600,
            state="retried",
        ),
        *events(
            tenant_id,
            b,
            2,
            "demo.cpu",
            datetime(year, 10, 4, 0, 0, 1, tzinfo=UTC),
            compute_ms=2000,
            wall_ms=2100,
        ),
        *events(
            tenant_id,
            c,
            1,
            "demo.cpu",
            datetime(year, 10, 4, 12, 0, tzinfo=UTC),
            compute_ms=0,
            wall_ms=5000,
            state="lost",
        ),
        # The first instant of November belongs to November.
        *events(
            tenant_id,
            late,
            1,
            "demo.cpu",
            datetime(year, 11, 1, 0, 0, tzinfo=UTC),
            compute_ms=9999,
            wall_ms=9999,
        ),
    ]
    insert_events(session, rows)
    session.commit()


@pytest.fixture
def priced_plan(db_session, make_plan):
    """A plan priced like a real one: base fee 10.00; jobs 0.10 each after 1 included (its quota);
    CPU 0.50/s for the first 2 s, then 0.25/s, nothing included; wall 0.01/s.

    For the known usage (3 jobs, 3.620 s CPU, 8.950 s wall), by hand:
    jobs 2 x 0.10 = 0.20; CPU 2 x 0.50 + 1.620 x 0.25 = 1.405 -> 1.41; wall 8.950 x 0.01 = 0.0895 -> 0.09;
    usage 1.70, plus the 10.00 base fee: 11.70.
    """
    plan = make_plan(base_fee=D("10.00"), included_jobs=1)
    set_price(db_session, plan_name=plan.name, metric="jobs", tiers=[(None, D("0.10"))], effective_from=EPOCH)
    set_price(
        db_session,
        plan_name=plan.name,
        metric="compute_seconds",
        included_units=D(0),
        tiers=[(D(2), D("0.50")), (None, D("0.25"))],
        effective_from=EPOCH,
    )
    set_price(
        db_session,
        plan_name=plan.name,
        metric="wall_seconds",
        tiers=[(None, D("0.01"))],
        effective_from=EPOCH,
    )
    db_session.commit()
    return plan


@pytest.fixture
def tenant_key(db_session, priced_plan):
    key = ApiKeyFactory(tenant=TenantFactory(plan_name=priced_plan.name))
    seed_known_usage(db_session, key.tenant_id)
    return key


class TestAllocation:
    def test_rounding_remainder_goes_to_the_largest_row(self):
        assert reports.allocate(Decimal("1.00"), {"a": 1, "b": 1, "c": 1}) == {
            "a": Decimal("0.33"),
            "b": Decimal("0.33"),
            "c": Decimal("0.34"),
        }
        assert reports.allocate(Decimal("1.81"), {"x": 3500, "y": 120}) == {
            "x": Decimal("1.75"),
            "y": Decimal("0.06"),
        }
        assert reports.allocate(Decimal(5), {"x": 0}) == {}


class TestTenantReport:
    def test_csv_by_task_exact(self, api, tenant_key):
        # Each priced line is spread over the rows by the row's share of its metric: jobs 0.20 -> 0.13 /
        # 0.07 (2 : 1 jobs); CPU tier 1 1.00 -> 0.97 / 0.03 and tier 2 0.41 -> 0.40 / 0.01 (3500 : 120 ms);
        # wall 0.09 -> 0.09 / 0.00 (8700 : 250 ms).
        response = api.get(
            f"/v1/usage/report?period={PERIOD}&group_by=task&format=csv", headers=auth(tenant_key)
        )
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        assert response.headers["content-disposition"] == f'attachment; filename="usage-{PERIOD}-by-task.csv"'
        assert response.text == (
            "key,jobs,attempts,compute_seconds,wall_seconds,charges\n"
            "demo.cpu,2,3,3.500,8.700,1.59\n"
            "demo.echo,1,1,0.120,0.250,0.11\n"
            "usage,3,4,3.620,8.950,1.70\n"
            "fixed: test plan plan: base fee,,,,,10.00\n"
            "total,3,4,3.620,8.950,11.70\n"
        )

    def test_csv_by_day_exact(self, api, tenant_key):
        # Jobs 0.20 -> 0.13 / 0.07 (2 : 1); CPU tier 1 1.00 -> 0.45 / 0.55 and tier 2 0.41 -> 0.18 / 0.23
        # (1620 : 2000 ms); wall 0.09 -> 0.02 / 0.07 (1850 : 7100 ms).
        response = api.get(
            f"/v1/usage/report?period={PERIOD}&group_by=day&format=csv", headers=auth(tenant_key)
        )
        assert response.text == (
            "key,jobs,attempts,compute_seconds,wall_seconds,charges\n"
            "2026-10-03,2,2,1.620,1.850,0.78\n"
            "2026-10-04,1,2,2.000,7.100,0.92\n"
            "usage,3,4,3.620,8.950,1.70\n"
            "fixed: test plan plan: base fee,,,,,10.00\n"
            "total,3,4,3.620,8.950,11.70\n"
        )

    def test_json_has_decimal_strings_and_fixed_charges(self, api, tenant_key):
        body = api.get(f"/v1/usage/report?period={PERIOD}", headers=auth(tenant_key)).json()
        assert body["period"] == PERIOD and body["group_by"] == "task" and body["priced"] is True
        assert body["rows"][0] == {
            "key": "demo.cpu",
            "jobs": 2,
            "attempts": 3,
            "compute_seconds": "3.500",
            "wall_seconds": "8.700",
            "charges": "1.59",
        }
        assert body["totals"] == {
            "jobs": 3,
            "attempts": 4,
            "compute_seconds": "3.620",
            "wall_seconds": "8.950",
            "charges": "1.70",
            "usage_charges": "1.70",
            "fixed_charges": "10.00",
            "total_charges": "11.70",
        }
        assert body["fixed"] == [{"description": "test plan plan: base fee", "amount": "10.00"}]
        assert body["closed"] is False and body["invoice_id"] is None

    def test_a_plan_without_usage_prices_charges_its_base_fee_only(self, api, db_session, make_plan):
        key = ApiKeyFactory(tenant=TenantFactory(plan_name=make_plan(base_fee=D("4.50")).name))
        seed_known_usage(db_session, key.tenant_id)
        body = api.get(f"/v1/usage/report?period={PERIOD}", headers=auth(key)).json()
        assert {r["charges"] for r in body["rows"]} == {"0.00"}
        assert body["totals"]["fixed_charges"] == "4.50" and body["totals"]["total_charges"] == "4.50"

    def test_another_tenant_sees_only_its_own_usage(self, api, tenant_key):
        other = ApiKeyFactory()
        body = api.get(f"/v1/usage/report?period={PERIOD}", headers=auth(other)).json()
        assert body["rows"] == [] and body["totals"]["jobs"] == 0

    @pytest.mark.parametrize(
        ("query", "code"),
        [
            ("period=2026-13", "invalid_period"),
            ("group_by=week", "invalid_input"),
            ("format=xml", "invalid_input"),
        ],
    )
    def test_bad_parameters_answer_422(self, api, tenant_key, query, code):
        response = api.get(f"/v1/usage/report?{query}", headers=auth(tenant_key))
        assert response.status_code == 422 and response.json()["error"]["code"] == code

    def test_requires_usage_scope(self, api):
        key = ApiKeyFactory(scopes=["jobs:write"])
        assert api.get(f"/v1/usage/report?period={PERIOD}", headers=auth(key)).status_code == 403


class TestOperatorReport:
    def test_rows_per_tenant_and_revenue_per_plan(self, api, db_session, priced_plan):
        plan = priced_plan
        first = TenantFactory(plan_name=plan.name)
        second = TenantFactory(plan_name=plan.name)
        seed_known_usage(db_session, first.id)
        insert_events(
            db_session,
            events(
                second.id,
                str(uuid.uuid4()),
                1,
                "demo.cpu",
                datetime(2026, 10, 20, tzinfo=UTC),
                compute_ms=1000,
                wall_ms=1000,
            ),
        )
        db_session.commit()
        response = api.get(
            f"/admin/v1/reports/usage?period={PERIOD}",
            headers={"Authorization": "Bearer test-admin-token-0123456789abcdef"},
        )
        assert response.status_code == 200
        body = response.json()
        rows = {r["tenant_id"]: r for r in body["rows"]}
        assert rows[first.id] == {
            "tenant_id": first.id,
            "tenant": first.name,
            "plan": plan.name,
            "jobs": 3,
            "attempts": 4,
            "compute_seconds": "3.620",
            "wall_seconds": "8.950",
            "charges": "11.70",
        }
        # 10.00 base + 0.00 (its one job is included) + 1 s x 0.50 CPU + 1 s x 0.01 wall.
        assert rows[second.id]["charges"] == "10.51"
        revenue = next(p for p in body["revenue_by_plan"] if p["plan"] == plan.name)
        assert revenue == {"plan": plan.name, "currency": "usd", "tenants": 2, "revenue": "22.21"}

    def test_csv_and_operator_credential(self, api, tenant_key):
        assert api.get(f"/admin/v1/reports/usage?period={PERIOD}").status_code == 401
        assert (
            api.get(f"/admin/v1/reports/usage?period={PERIOD}", headers=auth(tenant_key)).status_code == 401
        )
        response = api.get(
            f"/admin/v1/reports/usage?period={PERIOD}&format=csv",
            headers={"Authorization": "Bearer test-admin-token-0123456789abcdef"},
        )
        lines = response.text.splitlines()
        assert lines[0] == "tenant_id,tenant,plan,jobs,attempts,compute_seconds,wall_seconds,charges"
        assert any(
            line.startswith(f"{tenant_key.tenant_id},") and ",3,4,3.620,8.950,11.70" in line
            for line in lines[1:]
        )


@pytest.mark.usefixtures("clean_billing")
class TestReportEqualsInvoice:
    """The report prices usage exactly as the period close does: same engine, same quantities."""

    def test_closed_period_report_equals_its_invoice(self, db_session, priced_plan):
        tenant = old_tenant(priced_plan.name)
        seed_known_usage(db_session, tenant.id, year=2001)
        report = reports.tenant_report(db_session, tenant, "2001-10")
        operator = reports.operator_report(db_session, "2001-10")
        result = close_period(db_session, "2001-10", now=datetime(2001, 11, 5, tzinfo=UTC))
        db_session.commit()
        [invoice] = [i for i in result.invoices if i.tenant_id == tenant.id]
        assert invoice.total == D("11.70")
        assert D(report["totals"]["total_charges"]) == invoice.total
        assert D(report["totals"]["fixed_charges"]) == sum(
            (line.amount for line in invoice.lines if line.metric == "base_fee"), D(0)
        )
        assert D(report["totals"]["usage_charges"]) == sum(
            (line.amount for line in invoice.lines if line.metric != "base_fee"), D(0)
        )
        [row] = [r for r in operator["rows"] if r["tenant_id"] == tenant.id]
        assert D(row["charges"]) == invoice.total

    def test_a_closed_report_never_moves(self, db_session, priced_plan, make_plan):
        """Issue 14 item 2: late usage, a price edit and a plan change after close used to move the
        closed month's report (39 jobs / 11.19 against an invoice of 36 / 10.73; 46.08; revenue 0.00)."""
        tenant = old_tenant(priced_plan.name)
        seed_known_usage(db_session, tenant.id, year=2001)
        close_period(db_session, "2001-10", now=datetime(2001, 11, 5, tzinfo=UTC))
        db_session.commit()
        before = reports.tenant_report(db_session, tenant, "2001-10")
        # Late: an October job that reached SQL after October closed, then a price edit and a plan change.
        late = str(uuid.uuid4())
        insert_events(
            db_session,
            events(
                tenant.id,
                late,
                1,
                "demo.cpu",
                datetime(2001, 10, 20, tzinfo=UTC),
                compute_ms=4000,
                wall_ms=4000,
            ),
        )
        set_price(  # even backdated into the closed month
            db_session,
            plan_name=priced_plan.name,
            metric="jobs",
            tiers=[(None, D("7.00"))],
            effective_from=datetime(2001, 10, 1, tzinfo=UTC),
        )
        tenant.plan_name = make_plan(base_fee=D("0")).name
        db_session.commit()
        after = reports.tenant_report(db_session, tenant, "2001-10")
        assert after == before
        invoice = db_session.scalars(select(Invoice).where(Invoice.tenant_id == tenant.id)).one()
        assert after["closed"] is True and after["invoice_id"] == invoice.id
        assert D(after["totals"]["total_charges"]) == invoice.total == D("11.70")
        operator = reports.operator_report(db_session, "2001-10")
        [entry] = [e for e in operator["revenue_by_plan"] if e["plan"] == priced_plan.name]
        assert D(entry["revenue"]) == D("11.70")
        # The late job is billed in November: November's open report shows it, priced as its invoice.
        november = reports.tenant_report(db_session, tenant, "2001-11")
        # The seed has one job at 2001-11-01 00:00 (November) besides the late October job.
        assert november["totals"]["jobs"] == 2 and november["closed"] is False
        result = close_period(db_session, "2001-11", now=datetime(2001, 12, 5, tzinfo=UTC))
        db_session.commit()
        [nov_invoice] = [i for i in result.invoices if i.tenant_id == tenant.id]
        assert D(november["totals"]["total_charges"]) == nov_invoice.total
        assert reports.tenant_report(db_session, tenant, "2001-11")["totals"] == november["totals"]

    def test_csv_total_row_equals_the_invoice(self, db_session, priced_plan):
        """Issue 14 item 12: the CSV total row left the base fee out (1.70 against an 11.70 invoice)."""
        tenant = old_tenant(priced_plan.name)
        seed_known_usage(db_session, tenant.id, year=2001)
        result = close_period(db_session, "2001-10", now=datetime(2001, 11, 5, tzinfo=UTC))
        db_session.commit()
        [invoice] = [i for i in result.invoices if i.tenant_id == tenant.id]
        last = reports.tenant_report_csv(reports.tenant_report(db_session, tenant, "2001-10")).splitlines()[
            -1
        ]
        assert last.split(",")[0] == "total" and D(last.split(",")[-1]) == invoice.total == D("11.70")


class TestCli:
    def run(self, platform_env, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tenantq.cli", "billing", "report", *args],
            check=False,
            cwd=ROOT,
            env={**platform_env, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=120,
        )

    def test_cli_matches_the_api(self, api, platform_env, tenant_key):
        via_api = api.get(f"/v1/usage/report?period={PERIOD}&format=csv", headers=auth(tenant_key)).text
        done = self.run(platform_env, "--period", PERIOD, "--tenant", tenant_key.tenant_id, "--format", "csv")
        assert done.returncode == 0, done.stderr
        assert done.stdout == via_api
        as_json = self.run(
            platform_env, "--period", PERIOD, "--tenant", tenant_key.tenant_id, "--group-by", "day"
        )
        assert [r["key"] for r in json.loads(as_json.stdout)["rows"]] == ["2026-10-03", "2026-10-04"]
        everyone = json.loads(self.run(platform_env, "--period", PERIOD).stdout)
        assert tenant_key.tenant_id in {r["tenant_id"] for r in everyone["rows"]}

    def test_cli_rejects_a_bad_period(self, platform_env):
        done = self.run(platform_env, "--period", "October")
        assert done.returncode == 1
        assert json.loads(done.stdout)["error"]["code"] == "invalid_period"
