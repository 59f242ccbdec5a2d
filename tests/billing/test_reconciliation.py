"""Reconciliation of one month, end to end, on the suite's database (SQLite, or PostgreSQL when
TENANTQ_DATABASE_URL points at it: .ci/run runs both).

What it covers: May 2001 for three tenants and 500 jobs written as metering records them (1-3
attempts each; succeeded, retried, failed, cancelled, terminated and lost attempts; workflow steps and
batch members are jobs like any other), a plan change on the 16th, a price version from the 20th, late
usage inside the grace window (billed in May) and after the close (billed in June: 500 jobs in all
with June's own), the close, a void
and reissue after a backdated price correction, a credit note, and the Stripe push against
localstripe. It asserts, to the cent: each tenant's report equals its invoice; each invoice equals its
Stripe invoice; the operator report's revenue equals the sum of invoices; and amounts computed here
by hand (an independent calculation, not the pricing engine) equal the invoices.

What it does not cover: the usage is inserted in SQL rather than produced by real workers, so the
states and quantities are chosen here (lost and terminated attempts, hundreds of CPU seconds crossing
tiers, which real jobs in a test's minute cannot reach). test_reconciliation_workers.py runs the same
month with 500 jobs that real workers run (their usage moved into May after it was metered), and
test_metering.py covers exactly-once metering through real workers attempt by attempt.
"""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from tenantq.billing.invoicing import reports
from tenantq.billing.invoicing.corrections import issue_credit_note, void_invoice
from tenantq.billing.invoicing.models import EPOCH, Invoice
from tenantq.billing.invoicing.pricing import set_price
from tenantq.billing.invoicing.service import close_period
from tenantq.billing.invoicing.stripe_sync import stripe_client, sync_invoice, void_stripe_invoice
from tenantq.billing.usage.buffer import insert_events
from tenantq.tenants.accounts.models import Plan, TenantPlanChange
from tests.billing.invoice_factories import old_tenant
from tests.billing.reconciliation import (
    A_PART,
    B_PART,
    CHANGE_AT,
    JUNE_START,
    MAY_START,
    NEW_PRICE_AT,
    D,
    at,
    cents,
    graduated,
)
from tests.billing.test_stripe import localstripe, stripe_env  # noqa: F401 (fixtures)

STATES = ("succeeded", "failed", "cancelled", "terminated", "lost")


pytestmark = pytest.mark.usefixtures("clean_billing")


def make_jobs(rng: random.Random, tenant_id: str, count: int, start: datetime, end: datetime) -> list[dict]:
    """``count`` jobs of 1-3 attempts; every attempt but the last is ``retried``. Returns usage rows."""
    rows = []
    span = int((end - start).total_seconds())
    for n in range(count):
        job = str(uuid.uuid4())
        attempts = rng.choice((1, 1, 1, 2, 3))
        when = start + timedelta(seconds=rng.randrange(span - 3600))
        task = rng.choice(("demo.echo", "demo.cpu", "wf.step", "batch.item"))
        for attempt in range(1, attempts + 1):
            state = "retried" if attempt < attempts else rng.choice(STATES)
            cpu = 0 if state == "lost" else rng.randrange(0, 4000)
            quantities = {"attempts": 1, "compute_ms": cpu, "wall_ms": cpu + rng.randrange(0, 3000)}
            if attempt == 1:
                quantities["jobs"] = 1
            occurred = when + timedelta(seconds=attempt * 10)
            for metric, quantity in quantities.items():
                rows.append(
                    {
                        "id": f"{job}:{attempt}:{metric}",
                        "tenant_id": tenant_id,
                        "job_id": job,
                        "attempt": attempt,
                        "task": task,
                        "metric": metric,
                        "quantity": quantity,
                        "state": state,
                        "worker": f"w{n % 3}@h",
                        "occurred_at": occurred,
                    }
                )
    return rows


def totals(
    rows: list[dict], start: datetime | None = None, end: datetime | None = None
) -> dict[str, Decimal]:
    out = {"jobs": D(0), "attempts": D(0), "compute_seconds": D(0), "wall_seconds": D(0)}
    for r in rows:
        if (start and r["occurred_at"] < start) or (end and r["occurred_at"] >= end):
            continue
        if r["metric"] in ("compute_ms", "wall_ms"):
            out[r["metric"].replace("_ms", "_seconds")] += D(r["quantity"]) / 1000
        else:
            out[r["metric"]] += D(r["quantity"])
    return out


def test_a_month_reconciles_to_the_cent(stripe_env, db_session):  # noqa: F811 (fixture)
    rng = random.Random(14)
    # Plan A: 20.00 a month; 100 jobs included then 0.01; 50 CPU seconds included, then 0.002 for the
    # next 100, 0.001 beyond; wall 0.0001/s. Plan B: 50.00; 200 jobs included then 0.005 (0.004 from
    # the 20th); CPU 0.001/s with 0 included.
    a = Plan(
        name=f"recon-a-{uuid.uuid4().hex[:6]}",
        base_fee=D("20.00"),
        included_jobs=100,
        included_compute_seconds=50,
    )
    b = Plan(
        name=f"recon-b-{uuid.uuid4().hex[:6]}",
        base_fee=D("50.00"),
        included_jobs=200,
        included_compute_seconds=0,
    )
    db_session.add_all([a, b])
    db_session.flush()
    a_cpu = [(D(100), D("0.002")), (None, D("0.001"))]
    set_price(db_session, plan_name=a.name, metric="jobs", tiers=[(None, D("0.01"))], effective_from=EPOCH)
    set_price(db_session, plan_name=a.name, metric="compute_seconds", tiers=a_cpu, effective_from=EPOCH)
    set_price(
        db_session, plan_name=a.name, metric="wall_seconds", tiers=[(None, D("0.0001"))], effective_from=EPOCH
    )
    set_price(db_session, plan_name=b.name, metric="jobs", tiers=[(None, D("0.005"))], effective_from=EPOCH)
    set_price(
        db_session, plan_name=b.name, metric="jobs", tiers=[(None, D("0.004"))], effective_from=NEW_PRICE_AT
    )
    set_price(
        db_session,
        plan_name=b.name,
        metric="compute_seconds",
        tiers=[(None, D("0.001"))],
        effective_from=EPOCH,
    )
    t1, t2, t3 = old_tenant(a.name), old_tenant(b.name), old_tenant(b.name)
    db_session.add(
        TenantPlanChange(tenant_id=t2.id, from_plan=a.name, to_plan=b.name, effective_from=CHANGE_AT)
    )
    db_session.commit()

    may = {
        t1.id: make_jobs(rng, t1.id, 200, MAY_START, JUNE_START),
        t2.id: make_jobs(rng, t2.id, 150, MAY_START, JUNE_START),
        t3.id: make_jobs(rng, t3.id, 120, MAY_START, JUNE_START),
    }
    # Late, inside the grace window: occurred on May 31st, recorded on June 1st (before the close).
    grace = make_jobs(rng, t1.id, 10, at(2001, 5, 31), at(2001, 5, 31, 23))
    for r in grace:
        r["recorded_at"] = at(2001, 6, 1, 6)
    may[t1.id] += grace
    insert_events(db_session, [r for rows in may.values() for r in rows])
    db_session.commit()
    assert sum(len({r["job_id"] for r in rows}) for rows in may.values()) == 480

    open_reports = {t.id: reports.tenant_report(db_session, t, "2001-05") for t in (t1, t2, t3)}
    result = close_period(db_session, "2001-05", now=at(2001, 6, 3))
    db_session.commit()
    invoices = {i.tenant_id: i for i in result.invoices if i.tenant_id in may}

    # After the close: 10 more May jobs of t3 arrive late (billed in June), plus June usage.
    late = make_jobs(rng, t3.id, 10, at(2001, 5, 10), at(2001, 5, 12))
    june = make_jobs(rng, t3.id, 10, JUNE_START, at(2001, 7, 1))
    insert_events(db_session, late + june)
    db_session.commit()

    # --- Hand-written expected amounts --------------------------------------------------------------
    def plan_a(q: dict[str, Decimal], fraction: Decimal) -> Decimal:
        return (
            cents(D("20.00") * fraction)
            + graduated(D(0), q["jobs"], 100 * fraction, [(None, D("0.01"))])
            + graduated(D(0), q["compute_seconds"], 50 * fraction, a_cpu)
            + graduated(D(0), q["wall_seconds"], D(0), [(None, D("0.0001"))])
        )

    def plan_b(rows: list[dict], start: datetime, fraction: Decimal) -> Decimal:
        before = totals(rows, start, NEW_PRICE_AT)
        whole = totals(rows, start, None)
        return (
            cents(D("50.00") * fraction)
            + graduated(D(0), before["jobs"], 200 * fraction, [(None, D("0.005"))])
            + graduated(before["jobs"], whole["jobs"], 200 * fraction, [(None, D("0.004"))])
            + graduated(D(0), whole["compute_seconds"], D(0), [(None, D("0.001"))])
        )

    t2_before, t2_after = (
        [r for r in may[t2.id] if r["occurred_at"] < CHANGE_AT],
        [r for r in may[t2.id] if r["occurred_at"] >= CHANGE_AT],
    )
    expected = {
        t1.id: plan_a(totals(may[t1.id]), D(1)),
        t2.id: plan_a(totals(t2_before), A_PART) + plan_b(t2_after, CHANGE_AT, B_PART),
        t3.id: plan_b(may[t3.id], MAY_START, D(1)),
    }
    assert {t: invoices[t].total for t in expected} == expected

    # --- Reports equal invoices, open before the close and closed after (late usage came in) --------
    for tenant in (t1, t2, t3):
        assert D(open_reports[tenant.id]["totals"]["total_charges"]) == invoices[tenant.id].total
        report = reports.tenant_report(db_session, tenant, "2001-05")
        assert report["closed"] and D(report["totals"]["total_charges"]) == invoices[tenant.id].total
    operator = reports.operator_report(db_session, "2001-05")
    revenue = {e["plan"]: D(e["revenue"]) for e in operator["revenue_by_plan"]}
    assert revenue[a.name] == invoices[t1.id].total
    assert revenue[b.name] == invoices[t2.id].total + invoices[t3.id].total

    # --- Stripe: every invoice pushed, finalized, equal to the cent ---------------------------------
    client = stripe_client()
    for invoice in invoices.values():
        synced = sync_invoice(db_session, client, invoice)
        remote = client.v1.invoices.retrieve(synced.stripe_invoice_id)
        assert remote.status == "open" and remote.total == int(invoice.total * 100)

    # --- Correction: t3's May jobs should have cost 0.003 from the start; void and reissue ----------
    set_price(
        db_session, plan_name=b.name, metric="jobs", tiers=[(None, D("0.003"))], effective_from=MAY_START
    )
    db_session.commit()
    old = invoices[t3.id]
    new = void_invoice(db_session, old, reason="jobs price", reissue=True, actor="test")
    db_session.commit()
    assert new is not None
    q3 = totals(may[t3.id])
    before_20th = totals(may[t3.id], None, NEW_PRICE_AT)["jobs"]
    # Versions for May now: 0.003 from May 1st, 0.004 from the 20th (the later version still stands).
    expected_reissue = (
        D("50.00")
        + graduated(D(0), before_20th, D(200), [(None, D("0.003"))])
        + graduated(before_20th, q3["jobs"], D(200), [(None, D("0.004"))])
        + graduated(D(0), q3["compute_seconds"], D(0), [(None, D("0.001"))])
    )
    assert new.total == expected_reissue
    assert void_stripe_invoice(db_session, client, old) == "void"
    remote_new = client.v1.invoices.retrieve(sync_invoice(db_session, client, new).stripe_invoice_id)
    assert remote_new.total == int(new.total * 100)
    assert D(reports.tenant_report(db_session, t3, "2001-05")["totals"]["total_charges"]) == new.total
    note = issue_credit_note(db_session, new, amount="1.25", reason="goodwill", actor="test")
    db_session.commit()
    assert new.total == expected_reissue  # a credit note never changes the invoice
    assert note.amount == D("1.25")

    revenue = {
        e["plan"]: D(e["revenue"]) for e in reports.operator_report(db_session, "2001-05")["revenue_by_plan"]
    }
    assert revenue[b.name] == invoices[t2.id].total + new.total

    # --- June: the late May jobs and June's own usage --------------------------------------------------
    june_open = reports.tenant_report(db_session, t3, "2001-06")
    assert june_open["totals"]["jobs"] == 20
    [june_invoice] = [
        i for i in close_period(db_session, "2001-06", now=at(2001, 7, 5)).invoices if i.tenant_id == t3.id
    ]
    db_session.commit()
    # Late usage counts as occurring at June's start: June's prices (jobs 0.004, 200 included).
    q_june = totals(late + june)
    expected_june = (
        D("50.00")
        + graduated(D(0), q_june["jobs"], D(200), [(None, D("0.004"))])
        + graduated(D(0), q_june["compute_seconds"], D(0), [(None, D("0.001"))])
    )
    assert june_invoice.total == expected_june == D(june_open["totals"]["total_charges"])
    assert (
        D(reports.tenant_report(db_session, t3, "2001-06")["totals"]["total_charges"]) == june_invoice.total
    )
    assert db_session.get(Invoice, old.id).status == "void"
