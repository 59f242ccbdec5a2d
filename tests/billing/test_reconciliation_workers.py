"""Reconciliation of one month whose usage real workers produced (issue 14), on the suite's database
(SQLite, or PostgreSQL when TENANTQ_DATABASE_URL points at it).

What is real: 500 jobs submitted over HTTP to a real API server process (``tenantq api``), released by
the real dispatcher, run by a real Celery worker (prefork, 2 processes) and metered by the worker's
signal handlers into Redis, then written to SQL by a real usage flusher process (``tenantq billing
flush``). The mix: successes (demo.echo, demo.cpu), retries that end in success (demo.flaky), retries
that end in failure, failures, hard time limits (1 s), cancels before the start and while running, two
workflows (7 jobs each) and batches, for three tenants. The plan change (``PATCH
/admin/v1/tenants/{id}``), the price change and its correction (``PUT /admin/v1/billing/prices``), the
close (``POST /admin/v1/billing/close``), the void and reissue, the credit note and every report go
through the API; invoices are pushed to localstripe (``sync_invoice``, as ``tenantq billing
stripe-sync`` does).

What is shifted: a closed month cannot be produced in real time, so the jobs run in six phases, and
after each phase has been metered and flushed, the ``occurred_at`` and ``recorded_at`` of its usage
events move by one fixed offset into May 2001 (or June), every quantity kept as measured. Phase 1 is
dated May 5th; the plan change (made between phases 1 and 2) is dated May 16th; phase 2 May 18th; the
price change (made between phases 2 and 3) is dated May 20th; phase 3 May 25th; phase 4 occurred on
May 31st and was recorded on June 1st (late, inside the grace window: billed in May); May closes;
phase 5 is dated May 10th but reaches SQL after the close (billed in June); phase 6 June 10th. Job and
attempt rows keep their real timestamps: billing reads only the usage events. The tenants' creation
dates are set to 2000 so May's base fees are due.

What it asserts, to the cent: each tenant's report (open, then closed) equals its invoice; each
invoice equals its Stripe invoice; the operator report's revenue equals the sum of invoices; amounts
computed here by hand equal the invoices, before and after the correction, and in June. The hand
calculation takes the job and attempt counts from what the API says ran (``attempt_log`` of
``GET /v1/jobs``), and CPU and wall time from the metered events (the API shows no per-attempt CPU),
priced here without the pricing engine. And it asserts metering exactness: every attempt in the
attempt logs has exactly one usage record of each metric, in the state the attempt ended in, every
job that started is billed once, and nothing else is recorded (a job cancelled before it started
costs nothing).
"""

from __future__ import annotations

import random
import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import select

from tenantq.billing.invoicing.models import EPOCH, Invoice
from tenantq.billing.invoicing.pricing import set_price
from tenantq.billing.invoicing.stripe_sync import stripe_client, sync_invoice
from tenantq.billing.usage.metering import OPEN
from tenantq.billing.usage.models import UsageEvent
from tenantq.tenants.accounts.models import Plan, TenantPlanChange
from tests.billing.invoice_factories import old_tenant
from tests.billing.reconciliation import (
    A_PART,
    B_PART,
    CHANGE_AT,
    MAY_START,
    NEW_PRICE_AT,
    D,
    at,
    cents,
    graduated,
)
from tests.billing.test_stripe import localstripe, stripe_env  # noqa: F401 (fixtures)
from tests.conftest import ProcessGroup, free_port, wait_until
from tests.factories import ApiKeyFactory, auth

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("clean_billing")]

ECHO = {"task": "demo.echo", "args": {}}
TERMINAL = ("succeeded", "failed", "cancelled", "rejected")
# The state metering gives an attempt's usage, from how the attempt log says the attempt ended (the last
# attempt) or "retried" for one that another attempt followed.
FINAL_STATE = {"succeeded": "succeeded", "failed": "failed", "cancelled": "cancelled"}

# Plan A: 20.00 a month; 100 jobs included then 0.01; 1 CPU second included, then 0.50 a second for the
# next half second and 0.25 beyond; wall time 0.01 a second. Plan B: 50.00 a month; 20 jobs included
# then 0.05 (0.04 from the 20th); CPU 0.30 a second from the first. Prices this high make the measured
# CPU and wall time (seconds, not hours) count in cents.
A_JOBS = [(None, D("0.01"))]
A_CPU = [(D("0.5"), D("0.50")), (None, D("0.25"))]
A_WALL = [(None, D("0.01"))]
B_CPU = [(None, D("0.30"))]


@dataclass
class Phase:
    name: str
    dated: datetime  # where its usage is moved to
    plain: dict[str, int]  # tenant label -> ordinary jobs (the mix in ``plain_jobs``)
    batch: str | None = None  # tenant label that submits a batch of 10
    workflow: str | None = None  # tenant label that runs a workflow of 7
    time_limit: str | None = None  # tenant label with a job killed by its 1 s time limit
    cancel_running: str | None = None  # tenant label with a job cancelled while it runs
    cancel_queued: str | None = None  # tenant label with 2 jobs cancelled before they start
    recorded: datetime | None = None  # where recorded_at moves to, if not with occurred_at
    job_ids: dict[str, list[str]] = field(default_factory=dict)  # filled in by the run


PHASES = [
    Phase("early", at(2001, 5, 5), {"t1": 70, "t2": 50, "t3": 40}, "t1", "t2", "t1", "t3", "t2"),
    Phase("mid", at(2001, 5, 18), {"t1": 45, "t2": 35, "t3": 30}, "t2", None, "t3", None, "t3"),
    Phase("late", at(2001, 5, 25), {"t1": 45, "t2": 35, "t3": 30}, "t3", "t3", "t2", "t1", "t1"),
    Phase("grace", at(2001, 5, 31, 12), {"t1": 20}, None, None, None, None, "t1", at(2001, 6, 1, 6)),
    Phase("after-close", at(2001, 5, 10), {"t3": 14}, None, None, None, None, "t3"),
    Phase("june", at(2001, 6, 10), {"t3": 15}, "t3", None, None, None, "t3"),
]


def plain_jobs(rng: random.Random, count: int) -> list[dict]:
    """Mostly quick successes; some CPU, retries that succeed, failures, retries that fail."""
    out = []
    for i in range(count):
        r = rng.random()
        if r < 0.62:
            out.append({"task": "demo.echo", "args": {"i": i}})
        elif r < 0.80:
            out.append({"task": "demo.cpu", "args": {"ms": rng.choice((30, 60, 120))}})
        elif r < 0.88:
            out.append({"task": "demo.flaky", "args": {"failures": 1}, "max_retries": 2})
        elif r < 0.92:
            out.append({"task": "demo.flaky", "args": {"failures": 2}, "max_retries": 2})
        elif r < 0.96:
            out.append({"task": "demo.fail", "args": {}})
        else:  # one retry, then it fails for good
            out.append({"task": "demo.flaky", "args": {"failures": 5}, "max_retries": 1})
    return out


@pytest.fixture
def live(platform_env, platform_processes, stripe_env, tmp_path):  # noqa: F811 (fixture)
    """The API server and the usage flusher as processes (Stripe configured for them: stripe_env came
    first), beside the session's worker and dispatcher."""
    group = ProcessGroup(platform_env, tmp_path)
    port = free_port()
    group.start("api", [sys.executable, "-m", "tenantq.cli", "api", "--port", str(port)])
    group.start("flusher", [sys.executable, "-m", "tenantq.cli", "billing", "flush"])
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert group.procs["api"].poll() is None, group.log("api")
        try:
            return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, timeout=60, interval=0.2, message="the API to listen")
        with httpx.Client(base_url=base, timeout=60) as client:
            yield client, platform_env["TENANTQ_ADMIN_TOKEN"], group
    finally:
        group.stop_all()


def list_jobs(client: httpx.Client, key) -> list[dict]:
    jobs, cursor = [], None
    while True:
        params = {"limit": 500, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", params=params, headers=auth(key))
        assert page.status_code == 200, page.text
        body = page.json()
        jobs += body["items"]
        cursor = body["next_cursor"]
        if not cursor:
            return jobs


def submit(client: httpx.Client, key, body: dict) -> str:
    answer = client.post("/v1/jobs", json=body, headers=auth(key))
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def usage_rows(session, job_ids) -> list[UsageEvent]:
    session.expire_all()
    ids = list(job_ids)
    rows: list[UsageEvent] = []
    for i in range(0, len(ids), 200):
        rows += session.scalars(select(UsageEvent).where(UsageEvent.job_id.in_(ids[i : i + 200]))).all()
    return rows


def expected_event_count(jobs: list[dict]) -> int:
    """Per attempt that ran: attempts, compute_ms, wall_ms; per job that ran: one jobs record."""
    return sum(3 * len(j["attempt_log"]) + (1 if j["attempt_log"] else 0) for j in jobs)


def run_phase(client, db_session, redis_client, rng, phase: Phase, keys: dict, seen: set[str]) -> dict:
    """Submit the phase's jobs, wait until every one has finished and its usage is in SQL, check the
    usage against the attempt logs, then date it. Returns tenant label -> the phase's jobs (API view)."""
    sleepers = {}
    # The slow ones first, so they run while the quick ones queue behind them.
    if phase.time_limit:
        body = {"task": "demo.sleep", "args": {"seconds": 5}, "time_limit": 1}
        submit(client, keys[phase.time_limit], body)
    if phase.cancel_running:
        key = keys[phase.cancel_running]
        sleepers[phase.cancel_running] = submit(client, key, {"task": "demo.sleep", "args": {"seconds": 30}})
    workflows = []
    if phase.workflow:
        cpu = {"task": "demo.cpu", "args": {"ms": 40}}
        steps = [ECHO, {"group": [cpu, ECHO, ECHO, ECHO, ECHO]}, ECHO]
        answer = client.post("/v1/workflows", json={"steps": steps}, headers=auth(keys[phase.workflow]))
        assert answer.status_code == 202, answer.text
        workflows.append((keys[phase.workflow], answer.json()["id"]))
    if phase.batch:
        members = plain_jobs(rng, 10)
        answer = client.post("/v1/jobs/batch", json={"jobs": members}, headers=auth(keys[phase.batch]))
        assert answer.status_code == 200, answer.text
        assert [item["status_code"] for item in answer.json()["items"]] == [202] * 10
    if phase.cancel_queued:
        key = keys[phase.cancel_queued]
        for _ in range(2):
            job_id = submit(client, key, {**ECHO, "countdown": 3600})
            assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth(key)).status_code == 200
    for label, count in phase.plain.items():
        for body in plain_jobs(rng, count):
            submit(client, keys[label], body)
    for label, job_id in sleepers.items():
        key = keys[label]

        def running(job_id=job_id, key=key) -> bool:
            return client.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()["status"] == "running"

        wait_until(
            running,
            timeout=120,
            interval=0.2,
            message="the sleeper to start",
        )
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth(key)).status_code == 200

    def workflows_done() -> bool:
        return all(
            client.get(f"/v1/workflows/{wf}", headers=auth(key)).json()["status"] in TERMINAL
            for key, wf in workflows
        )

    def phase_jobs() -> dict[str, list[dict]] | None:
        if not workflows_done():
            return None
        out = {
            label: [j for j in list_jobs(client, key) if j["id"] not in seen] for label, key in keys.items()
        }
        if any(j["status"] not in TERMINAL for jobs in out.values() for j in jobs):
            return None
        return out

    jobs = wait_until(phase_jobs, timeout=300, interval=1.0, message=f"phase {phase.name}'s jobs to finish")
    every = [j for js in jobs.values() for j in js]
    ids = {j["id"] for j in every}
    expected = expected_event_count(every)

    def flushed() -> bool:
        pending = [f for f in redis_client.hkeys(OPEN) if f.split(":")[0] in ids]
        return not pending and len(usage_rows(db_session, ids)) >= expected

    wait_until(flushed, timeout=120, interval=0.5, message=f"phase {phase.name}'s usage in SQL")
    check_exactly_once(every, usage_rows(db_session, ids))
    for label, js in jobs.items():
        phase.job_ids[label] = [j["id"] for j in js]
    seen |= ids
    date_usage(db_session, ids, phase)
    return jobs


def check_exactly_once(jobs: list[dict], rows: list[UsageEvent]) -> None:
    """Every attempt the API shows has one record per metric, in its state; a job that started is billed
    once (on its first attempt); nothing else was recorded."""
    by_job: dict[str, list[UsageEvent]] = {}
    for row in rows:
        by_job.setdefault(row.job_id, []).append(row)
    assert len(rows) == len({r.id for r in rows}) == expected_event_count(jobs)
    for job in jobs:
        log = sorted(job["attempt_log"], key=lambda a: a["attempt"])
        events = by_job.get(job["id"], [])
        if not log:
            assert events == [], job  # cancelled before it started: nothing billed
            continue
        numbers = [a["attempt"] for a in log]
        metrics = Counter(e.metric for e in events)
        assert metrics == {"jobs": 1, "attempts": len(log), "compute_ms": len(log), "wall_ms": len(log)}, job
        assert [e.attempt for e in events if e.metric == "jobs"] == [numbers[0]]
        states = {e.attempt: e.state for e in events if e.metric == "attempts"}
        want = dict.fromkeys(numbers[:-1], "retried") | {numbers[-1]: FINAL_STATE[job["status"]]}
        assert states == want, job
        assert all(e.task == job["task"] for e in events)


def date_usage(db_session, job_ids: set[str], phase: Phase) -> None:
    """Move the phase's usage into the past by one offset (quantities untouched)."""
    rows = usage_rows(db_session, job_ids)
    offset = phase.dated - min(r.occurred_at for r in rows)
    recorded_offset = (phase.recorded - min(r.recorded_at for r in rows)) if phase.recorded else offset
    for row in rows:
        row.occurred_at += offset
        row.recorded_at += recorded_offset
    db_session.commit()
    # A phase runs in minutes: its usage stays inside its day, clear of the dated changes.
    assert max(r.occurred_at for r in rows) < phase.dated.replace(hour=23, minute=59)


@dataclass
class Quantities:
    jobs: Decimal = field(default_factory=Decimal)
    attempts: Decimal = field(default_factory=Decimal)
    compute_seconds: Decimal = field(default_factory=Decimal)
    wall_seconds: Decimal = field(default_factory=Decimal)

    def __add__(self, other: Quantities) -> Quantities:
        return Quantities(*(getattr(self, f) + getattr(other, f) for f in self.__dataclass_fields__))


def quantities(jobs: list[dict], rows: list[UsageEvent]) -> Quantities:
    """Jobs and attempts as the API's attempt logs show them; CPU and wall time as metered."""
    ms = Counter()
    for row in rows:
        if row.metric in ("compute_ms", "wall_ms"):
            ms[row.metric] += row.quantity
    return Quantities(
        jobs=D(sum(1 for j in jobs if j["attempt_log"])),
        attempts=D(sum(len(j["attempt_log"]) for j in jobs)),
        compute_seconds=D(ms["compute_ms"]) / 1000,
        wall_seconds=D(ms["wall_ms"]) / 1000,
    )


def plan_a(q: Quantities, fraction: Decimal) -> Decimal:
    return (
        cents(D("20.00") * fraction)
        + graduated(D(0), q.jobs, 100 * fraction, A_JOBS)
        + graduated(D(0), q.compute_seconds, 1 * fraction, A_CPU)
        + graduated(D(0), q.wall_seconds, D(0), A_WALL)
    )


def plan_b(before: Quantities, after: Quantities, fraction: Decimal, old: str, new: str) -> Decimal:
    """B's jobs are priced ``old`` before the 20th and ``new`` from it, on one running total."""
    whole = before + after
    return (
        cents(D("50.00") * fraction)
        + graduated(D(0), before.jobs, 20 * fraction, [(None, D(old))])
        + graduated(before.jobs, whole.jobs, 20 * fraction, [(None, D(new))])
        + graduated(D(0), whole.compute_seconds, D(0), B_CPU)
    )


def test_a_month_of_real_jobs_reconciles_to_the_cent(live, db_session, redis_client):
    client, admin_token, group = live
    operator = {"Authorization": f"Bearer {admin_token}"}
    limits = {
        "submit_rate": 10_000,
        "submit_burst": 10_000,
        "exec_rate": 10_000,
        "concurrency": 100,
        "max_queued": 1_000_000,
        "hard_limits": False,
    }
    suffix = uuid.uuid4().hex[:6]
    a = Plan(
        name=f"recon-wa-{suffix}",
        base_fee=D("20.00"),
        included_jobs=100,
        included_compute_seconds=1,
        **limits,
    )
    b = Plan(
        name=f"recon-wb-{suffix}",
        base_fee=D("50.00"),
        included_jobs=20,
        included_compute_seconds=0,
        **limits,
    )
    db_session.add_all([a, b])
    db_session.flush()
    for metric, tiers in (("jobs", A_JOBS), ("compute_seconds", A_CPU), ("wall_seconds", A_WALL)):
        set_price(db_session, plan_name=a.name, metric=metric, tiers=tiers, effective_from=EPOCH)
    set_price(db_session, plan_name=b.name, metric="jobs", tiers=[(None, D("0.05"))], effective_from=EPOCH)
    set_price(db_session, plan_name=b.name, metric="compute_seconds", tiers=B_CPU, effective_from=EPOCH)
    db_session.commit()
    tenants = {"t1": old_tenant(a.name), "t2": old_tenant(a.name), "t3": old_tenant(b.name)}
    keys = {label: ApiKeyFactory(tenant=t) for label, t in tenants.items()}
    t1, t2, t3 = tenants["t1"], tenants["t2"], tenants["t3"]

    rng = random.Random(14)
    seen: set[str] = set()
    ran: dict[str, dict[str, list[dict]]] = {}

    def run(phase: Phase) -> None:
        ran[phase.name] = run_phase(client, db_session, redis_client, rng, phase, keys, seen)

    early, mid, late, grace, after_close, june = PHASES
    run(early)
    # t2 moves to plan B; the change is dated May 16th (between the early and mid phases' usage).
    moved = client.patch(f"/admin/v1/tenants/{t2.id}", json={"plan": b.name}, headers=operator)
    assert moved.status_code == 200, moved.text
    db_session.expire_all()
    change = db_session.scalars(select(TenantPlanChange).where(TenantPlanChange.tenant_id == t2.id)).one()
    assert (change.from_plan, change.to_plan) == (a.name, b.name)
    change.effective_from = CHANGE_AT
    db_session.commit()
    run(mid)
    price = client.put(
        f"/admin/v1/billing/prices/{b.name}/jobs",
        json={"tiers": [{"up_to": None, "unit_price": "0.04"}], "effective_from": NEW_PRICE_AT.isoformat()},
        headers=operator,
    )
    assert price.status_code == 200, price.text
    run(late)
    run(grace)
    assert len(seen) == sum(len(js) for p in ran.values() for js in p.values())

    # --- Reports of the open month, then the close ------------------------------------------------------
    def report(label: str, period: str) -> dict:
        answer = client.get("/v1/usage/report", params={"period": period}, headers=auth(keys[label]))
        assert answer.status_code == 200, answer.text
        return answer.json()

    open_reports = {label: report(label, "2001-05") for label in tenants}
    closed = client.post("/admin/v1/billing/close", json={"period": "2001-05"}, headers=operator)
    assert closed.status_code == 201, closed.text
    db_session.expire_all()
    invoices = {
        i.tenant_id: i
        for i in db_session.scalars(select(Invoice).where(Invoice.period == "2001-05", Invoice.revision == 1))
    }
    assert set(invoices) == {t.id for t in tenants.values()}
    run(after_close)
    run(june)
    assert len(seen) == 500
    # The mix really ran: retries, failures, time limits, cancels before and during the run, workflows.
    every = [j for p in ran.values() for js in p.values() for j in js]
    ended = Counter(
        (j["task"], j["status"], len(j["attempt_log"]) > 1, bool(j["workflow_id"]), j["time_limit"] == 1)
        for j in every
    )
    assert ended[("demo.sleep", "failed", False, False, True)] == 3  # killed by the 1 s limit
    assert ended[("demo.sleep", "cancelled", False, False, False)] == 2  # cancelled while running
    assert ended[("demo.echo", "cancelled", False, False, False)] == 12  # cancelled before the start
    assert ended[("demo.flaky", "succeeded", True, False, False)] > 0
    assert ended[("demo.flaky", "failed", True, False, False)] > 0
    assert ended[("demo.fail", "failed", False, False, False)] > 0
    assert sum(n for k, n in ended.items() if k[3] and k[1] == "succeeded") == 14

    # --- Hand-written expected amounts, from the attempt logs and the metered time -----------------------
    def q(phase: Phase, label: str) -> Quantities:
        jobs = ran[phase.name].get(label, [])
        return quantities(jobs, usage_rows(db_session, {j["id"] for j in jobs}))

    q1 = q(early, "t1") + q(mid, "t1") + q(late, "t1") + q(grace, "t1")
    # The test's own design: each tenant goes past its included jobs before the price change, so the
    # change and its correction move the amounts.
    assert q1.jobs > 100 and q(early, "t2").jobs > 100 * A_PART and q(mid, "t2").jobs > 20 * B_PART
    assert (q(early, "t3") + q(mid, "t3")).jobs > 20
    expected = {
        t1.id: plan_a(q1, D(1)),
        t2.id: plan_a(q(early, "t2"), A_PART) + plan_b(q(mid, "t2"), q(late, "t2"), B_PART, "0.05", "0.04"),
        t3.id: plan_b(q(early, "t3") + q(mid, "t3"), q(late, "t3"), D(1), "0.05", "0.04"),
    }
    assert {t: invoices[t].total for t in expected} == expected

    # --- Reports equal invoices, open before the close and closed after (late usage came in) -----------
    for label, tenant in tenants.items():
        assert D(open_reports[label]["totals"]["total_charges"]) == invoices[tenant.id].total
        now = report(label, "2001-05")
        assert now["closed"] and D(now["totals"]["total_charges"]) == invoices[tenant.id].total
        assert now["totals"]["jobs"] == open_reports[label]["totals"]["jobs"]

    def revenue() -> dict[str, Decimal]:
        answer = client.get("/admin/v1/reports/usage", params={"period": "2001-05"}, headers=operator)
        assert answer.status_code == 200, answer.text
        return {e["plan"]: D(e["revenue"]) for e in answer.json()["revenue_by_plan"]}

    assert revenue() == {a.name: invoices[t1.id].total, b.name: invoices[t2.id].total + invoices[t3.id].total}

    # --- Stripe: every invoice pushed, finalized, equal to the cent -------------------------------------
    stripe = stripe_client()
    for invoice in invoices.values():
        synced = sync_invoice(db_session, stripe, invoice)
        remote = stripe.v1.invoices.retrieve(synced.stripe_invoice_id)
        assert remote.status == "open" and remote.total == int(invoice.total * 100)

    # --- Correction: B's jobs should have cost 0.03 from May 1st; t3's invoice is voided and reissued ---
    fixed = client.put(
        f"/admin/v1/billing/prices/{b.name}/jobs",
        json={"tiers": [{"up_to": None, "unit_price": "0.03"}], "effective_from": MAY_START.isoformat()},
        headers=operator,
    )
    assert fixed.status_code == 200, fixed.text
    old = invoices[t3.id]
    voided = client.post(
        f"/admin/v1/billing/invoices/{old.id}/void",
        json={"reason": "jobs price", "reissue": True},
        headers=operator,
    )
    assert voided.status_code == 200, voided.text
    body = voided.json()
    assert body["stripe"]["configured"] and body["stripe"]["error"] is None, body["stripe"]
    assert body["stripe"]["status"] == "void"
    db_session.expire_all()
    new = db_session.get(Invoice, body["reissued"]["id"])
    # Versions for May now: 0.03 from May 1st, 0.04 from the 20th (the later version still stands).
    expected_reissue = plan_b(q(early, "t3") + q(mid, "t3"), q(late, "t3"), D(1), "0.03", "0.04")
    assert new.total == expected_reissue != old.total
    remote_old = stripe.v1.invoices.retrieve(db_session.get(Invoice, old.id).stripe_invoice_id)
    remote_new = stripe.v1.invoices.retrieve(body["stripe"]["reissued_stripe_invoice_id"])
    assert remote_old.status == "void" and remote_new.total == int(new.total * 100)
    assert D(report("t3", "2001-05")["totals"]["total_charges"]) == new.total
    note = client.post(
        f"/admin/v1/billing/invoices/{new.id}/credit-notes",
        json={"amount": "1.25", "reason": "goodwill"},
        headers=operator,
    )
    assert note.status_code == 201, note.text
    db_session.expire_all()
    assert db_session.get(Invoice, new.id).total == expected_reissue  # a credit note never changes it
    assert revenue() == {a.name: invoices[t1.id].total, b.name: invoices[t2.id].total + new.total}

    # --- June: the late May jobs (billed at June's prices) and June's own ------------------------------
    q_june = q(after_close, "t3") + q(june, "t3")
    june_open = report("t3", "2001-06")
    assert D(june_open["totals"]["jobs"]) == q_june.jobs
    closed = client.post("/admin/v1/billing/close", json={"period": "2001-06"}, headers=operator)
    assert closed.status_code == 201, closed.text
    db_session.expire_all()
    june_invoice = db_session.scalars(
        select(Invoice).where(Invoice.period == "2001-06", Invoice.tenant_id == t3.id)
    ).one()
    assert june_invoice.id in {i["id"] for i in closed.json()["invoices"]}
    expected_june = plan_b(Quantities(), q_june, D(1), "0.04", "0.04")
    assert june_invoice.total == expected_june == D(june_open["totals"]["total_charges"])
    assert D(report("t3", "2001-06")["totals"]["total_charges"]) == expected_june
    assert group.procs["api"].poll() is None and group.procs["flusher"].poll() is None
