"""DESIGN §7.8 "Nothing lost": jobs run while workers are SIGKILLed and Redis is restarted.

    PYTHONPATH=$PWD python -m bench.chaos                      # 1,000 jobs, 5 kills, 1 Redis restart
    PYTHONPATH=$PWD python -m bench.chaos --jobs 200 --kills 2 # smaller
    PYTHONPATH=$PWD python -m bench.chaos --database-url postgresql+psycopg://... --redis-port 6390
    TENANTQ_DATABASE_URL=postgresql+psycopg://... python -m bench.chaos   # a fresh PostgreSQL database

Starts its own redis-server (appendonly, fsync always), database, 2 Celery workers, 1 dispatcher and
1 usage flusher, submits ``demo.sleep`` jobs through the jobs service, then SIGKILLs a worker's whole
process group ``--kills`` times (starting a replacement each time) and restarts Redis ``--redis-restarts``
times while the jobs run. It waits until every job is terminal and every attempt is metered, then
checks the invariants (:func:`check`) and writes a table + ``bench/results/chaos-<timestamp>.json``.

On Redis the processes run with a short broker visibility timeout and short dispatcher reconciler
delays (:func:`chaos_env`): in production a killed worker's message comes back after the visibility
timeout (an hour by default), here after seconds. With TENANTQ_BROKER_URL=amqp://... the execution
queues run on RabbitMQ (a vhost of the run's own, made with rabbitmqctl) at default settings: the
broker hands a killed worker's messages back as soon as its connection closes. Either way the run
measures how long each attempt killed mid-run took to be running again (``recovery_s``).
``tests/test_chaos.py`` runs the same driver (smaller) as a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis as redis_lib

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

TERMINAL = ("succeeded", "failed", "cancelled")
# After an open attempt's deadline: the flusher's reconciler pass (every 10 s), then the flush to SQL.
RECONCILE_SLACK_S = 30.0

# Limits generous enough that only the chaos decides how the run goes (no rate limit, no quota, and a
# killed worker's concurrency leases do not hold the tenant back).
CHAOS_OVERRIDES: dict[str, Any] = {
    "submit_rate": 1_000_000,
    "submit_burst": 10_000_000,
    "exec_rate": 1_000_000,
    "concurrency": 10_000,
    "max_queued": 10_000_000,
    "hard_limits": False,
    "max_time_limit_s": 120,
}


def chaos_env(redis_url: str, broker_url: str = "", visibility_timeout: float = 15.0) -> dict[str, str]:
    """Settings for the chaos processes. With a RabbitMQ ``broker_url``: the defaults, nothing lowered.
    On Redis: the visibility timeout must exceed the longest time a delivered message waits for its ack
    (job run + signal writes on a loaded machine), or healthy attempts are redelivered; it must be short
    for the test to finish. Reconcilers run on a few seconds' notice."""
    if broker_url.split("://", 1)[0] in ("amqp", "amqps", "pyamqp"):
        return {"TENANTQ_REDIS_URL": redis_url, "TENANTQ_BROKER_URL": broker_url}
    return {
        "TENANTQ_REDIS_URL": redis_url,
        "TENANTQ_BROKER_URL": "",
        "TENANTQ_VISIBILITY_TIMEOUT_SECONDS": str(visibility_timeout),
        "TENANTQ_INFLIGHT_DEADLINE_SECONDS": "5",
        "TENANTQ_LOST_JOB_GRACE_SECONDS": str(max(20.0, visibility_timeout + 5)),
        "TENANTQ_LEASE_TTL_SECONDS": "10",
    }


@dataclass
class ChaosReport:
    jobs: int
    kills: int
    redis_restarts: int
    seconds_to_terminal: float = 0.0
    seconds_to_metered: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    metered_attempts: int = 0
    attempt_states: dict[str, int] = field(default_factory=dict)
    jobs_events: int = 0
    max_attempts_per_job: int = 0
    jobs_with_lost_attempts: int = 0
    success_billed_as_lost: int = 0  # killed between the SQL success and the usage close
    # Attempts running on a worker when it was SIGKILLed: seconds until each was running again.
    recovery_s: list[float] = field(default_factory=list)
    killed_not_running_again: int = 0  # killed attempts never seen running again within the run
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def recovery_percentile(self, q: float) -> float | None:
        if not self.recovery_s:
            return None
        ordered = sorted(self.recovery_s)
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


@dataclass
class Chaos:
    """One chaos run against processes it starts in ``group`` (a tests.conftest.ProcessGroup)."""

    group: Any
    redis_server: Any  # tests.conftest.RedisServer: start/stop/restart, url
    redis: redis_lib.Redis  # client on redis_server, used to submit
    tenant: Any
    env: dict[str, str]
    log: Callable[[str], None] = print
    workers: list[str] = field(default_factory=list)
    _serial: int = 0
    # job id -> (wall time of the kill that stopped its attempt): waiting to be seen running again.
    _killed: dict[str, float] = field(default_factory=dict)
    _recovered: list[float] = field(default_factory=list)
    _ready: set[str] = field(default_factory=set)

    # -- processes ----------------------------------------------------------------------------------
    def start_worker(self) -> str:
        from tests.conftest import start_worker

        self._serial += 1
        name = f"chaos-worker-{self._serial}"
        start_worker(self.group, name=name, concurrency=2, extra_env=self.env)
        self.workers.append(name)
        return name

    def start(self) -> None:
        self.start_worker()
        self.start_worker()
        self.group.start("chaos-dispatcher", [sys.executable, "-m", "tenantq.cli", "dispatcher"], self.env)
        self.group.start("chaos-flusher", [sys.executable, "-m", "tenantq.cli", "billing", "flush"], self.env)

    def kill_worker(self) -> None:
        """SIGKILL the oldest live worker's whole process group (main process and pool children: nothing
        gets to report), then start a replacement."""
        name = self.workers.pop(0)
        self.group.kill(name)
        killed_at = time.time()
        running = self.running_on(name)
        for job_id in running:
            self._killed.setdefault(job_id, killed_at)
        self.log(f"  killed {name} ({len(running)} attempts running)")
        self.start_worker()

    def ready(self, worker: str) -> bool:
        """The Celery worker logged that it is ready (it consumes from the broker)."""
        if worker not in self._ready and " ready." in self.group.log(worker):
            self._ready.add(worker)
        return worker in self._ready

    def running_on(self, worker: str) -> list[str]:
        """Jobs SQL shows running on this worker (its Celery node name is ``<worker>-<hex>@host``)."""
        from sqlalchemy import select

        from tenantq.core.db import unscoped_session
        from tenantq.platform.jobs.models import Job

        with unscoped_session() as session:
            return list(
                session.scalars(
                    select(Job.id).where(
                        Job.tenant_id == self.tenant.id,
                        Job.status == "running",
                        Job.worker.startswith(f"{worker}-"),
                    )
                )
            )

    def track_recovery(self) -> None:
        """Killed attempts seen running again (their attempt row reopened by another worker): record
        the delay. A job that finished without starting again had finished before the kill."""
        if not self._killed:
            return
        from sqlalchemy import select

        from tenantq.core.db import unscoped_session
        from tenantq.platform.jobs.models import Job, JobAttempt

        with unscoped_session() as session:
            started = session.execute(
                select(JobAttempt.job_id, JobAttempt.started_at).where(
                    JobAttempt.job_id.in_(list(self._killed))
                )
            ).all()
            finished = set(
                session.scalars(
                    select(Job.id).where(Job.id.in_(list(self._killed)), Job.status.in_(TERMINAL))
                )
            )
        latest: dict[str, float] = {}
        for job_id, at in started:
            stamp = (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()
            latest[job_id] = max(latest.get(job_id, 0.0), stamp)
        for job_id, killed_at in list(self._killed.items()):
            if latest.get(job_id, 0.0) > killed_at:
                self._recovered.append(round(latest[job_id] - killed_at, 2))
                del self._killed[job_id]
            elif job_id in finished:
                del self._killed[job_id]  # it had finished before the kill (SQL was a step behind)

    def restart_redis(self) -> None:
        self.redis_server.restart()
        self.log("  restarted redis")

    # -- jobs ---------------------------------------------------------------------------------------
    def submit(self, n: int, seconds: float) -> list[str]:
        import tenantq.worker  # noqa: F401  (task types and assembly, like every entry point)
        from tenantq.core.db import unscoped_session
        from tenantq.platform.jobs.schemas import JobCreate
        from tenantq.platform.jobs.service import submit_job
        from tenantq.tenants.accounts.models import Tenant

        ids: list[str] = []
        with unscoped_session() as session:
            tenant = session.get(Tenant, self.tenant.id)
            for _ in range(n):
                job = submit_job(
                    session,
                    tenant,
                    JobCreate(task="demo.sleep", args={"seconds": seconds}),
                    client=self.redis,
                ).job
                ids.append(job.id)
        return ids

    def statuses(self, ids: list[str]) -> Counter:
        from sqlalchemy import func, select

        from tenantq.core.db import unscoped_session
        from tenantq.platform.jobs.models import Job

        with unscoped_session() as session:
            rows = session.execute(
                select(Job.status, func.count()).where(Job.tenant_id == self.tenant.id).group_by(Job.status)
            ).all()
        return Counter(dict(rows))

    def run(
        self, *, jobs: int, kills: int, redis_restarts: int, seconds: float = 0.2, timeout: float = 600.0
    ) -> ChaosReport:
        from tenantq.billing.usage.metering import OpenAttempt
        from tenantq.core import keys

        report = ChaosReport(jobs=jobs, kills=kills, redis_restarts=redis_restarts)
        self.start()
        t0 = time.monotonic()
        ids = self.submit(jobs, seconds)
        self.log(f"  submitted {len(ids)} jobs in {time.monotonic() - t0:.1f}s")
        # Chaos events spread over the run, fired as progress passes each mark; the Redis restart(s)
        # in the middle of the kills.
        events = ["kill"] * kills
        for i in range(redis_restarts):
            events.insert(min(len(events), (i + 1) * len(events) // (redis_restarts + 1)), "redis")
        marks = [(i + 1) / (len(events) + 1) for i in range(len(events))]
        deadline = time.monotonic() + timeout
        done = 0
        while True:
            try:
                counts = self.statuses(ids)
            except Exception as exc:  # noqa: BLE001 - SQLite busy under load: look again
                self.log(f"  status query failed: {exc}")
                time.sleep(0.5)
                continue
            done = sum(counts.get(s, 0) for s in TERMINAL)
            try:
                self.track_recovery()
            except Exception as exc:  # noqa: BLE001 - SQLite busy under load: look again
                self.log(f"  recovery query failed: {exc}")
            # One event per pass, and only once every worker (the last replacement too) consumes: the
            # marks passed during a slow submission would otherwise kill both workers at once, and the
            # recovery figure would time a worker's start-up instead of the broker's redelivery.
            if events and done >= marks[0] * jobs and all(self.ready(w) for w in self.workers):
                marks.pop(0)
                (self.kill_worker if events.pop(0) == "kill" else self.restart_redis)()
            if done >= jobs and not events:
                break
            if time.monotonic() > deadline:
                report.statuses = dict(counts)
                report.problems.append(
                    f"only {done}/{jobs} jobs terminal after {timeout}s: {dict(counts)}; "
                    f"e.g. {self.unfinished()}"
                )
                return report
            time.sleep(0.25)
        report.seconds_to_terminal = round(time.monotonic() - t0, 1)
        report.statuses = dict(self.statuses(ids))
        self.track_recovery()
        report.recovery_s = sorted(self._recovered)
        report.killed_not_running_again = len(self._killed)
        self.log(f"  all terminal after {report.seconds_to_terminal}s; waiting for metering")
        # Usage: every attempt closed (killed ones by the flusher's reconciler) and flushed to SQL. A
        # worker killed after writing its success to SQL but before closing the attempt's usage leaves
        # the attempt open until the reconciler sees it past its own deadline (start + time limit +
        # grace), which can be later than the run's timeout: wait for the latest such deadline plus a
        # reconciler pass and a flush, so a slow but correct close is not reported as a loss.
        settle_by = deadline
        while True:
            events_by_job = self.usage(ids)
            open_records = self.redis.hgetall(keys.USAGE_OPEN)
            backlog = self.redis.xlen(keys.USAGE_STREAM)
            settled = (
                not open_records
                and backlog == 0
                and all(any(e["metric"] == "attempts" for e in events_by_job.get(i, [])) for i in ids)
            )
            if settled:
                break
            for field_name, raw in open_records.items():
                closes_at = OpenAttempt.from_record(field_name, raw).deadline - time.time()
                settle_by = max(settle_by, time.monotonic() + closes_at + RECONCILE_SLACK_S)
            if time.monotonic() > settle_by:
                report.problems.append(
                    f"metering not settled: {len(open_records)} open attempts, {backlog} unflushed"
                )
                break
            time.sleep(0.5)
        report.seconds_to_metered = round(time.monotonic() - t0, 1)
        check(report, ids, self.attempt_rows(ids), self.usage(ids))
        return report

    def unfinished(self, limit: int = 5) -> list[tuple[str, str, int]]:
        from sqlalchemy import select

        from tenantq.core.db import unscoped_session
        from tenantq.platform.jobs.models import Job

        with unscoped_session() as session:
            return [
                tuple(r)
                for r in session.execute(
                    select(Job.id, Job.status, Job.attempts)
                    .where(Job.tenant_id == self.tenant.id, Job.status.not_in(TERMINAL))
                    .limit(limit)
                )
            ]

    def attempt_rows(self, ids: list[str]) -> dict[str, list[tuple[int, str]]]:
        from sqlalchemy import select

        from tenantq.core.db import unscoped_session
        from tenantq.platform.jobs.models import Job, JobAttempt

        rows: dict[str, list[tuple[int, str]]] = defaultdict(list)
        with unscoped_session() as session:
            for job_id, attempt, status in session.execute(
                select(JobAttempt.job_id, JobAttempt.attempt, JobAttempt.status)
                .join(Job, Job.id == JobAttempt.job_id)
                .where(Job.tenant_id == self.tenant.id)
            ):
                rows[job_id].append((attempt, status))
        return rows

    def usage(self, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        from sqlalchemy import select

        from tenantq.billing.usage.models import UsageEvent
        from tenantq.core.db import unscoped_session

        out: dict[str, list[dict[str, Any]]] = defaultdict(list)
        with unscoped_session() as session:
            for e in session.scalars(select(UsageEvent).where(UsageEvent.tenant_id == self.tenant.id)):
                out[e.job_id].append(
                    {
                        "id": e.id,
                        "attempt": e.attempt,
                        "metric": e.metric,
                        "state": e.state,
                        "quantity": e.quantity,
                    }
                )
        return out


def check(
    report: ChaosReport,
    ids: list[str],
    attempts: dict[str, list[tuple[int, str]]],
    usage: dict[str, list[dict[str, Any]]],
) -> None:
    """The §7.8 invariants; every violation is appended to ``report.problems``."""
    problems = report.problems
    not_ok = {k: v for k, v in report.statuses.items() if k != "succeeded"}
    if not_ok or report.statuses.get("succeeded", 0) != len(ids):
        problems.append(f"not every job succeeded: {report.statuses}")
    states: Counter = Counter()
    for job_id in ids:
        rows = attempts.get(job_id, [])
        succeeded_rows = [a for a, s in rows if s == "succeeded"]
        if len(succeeded_rows) != 1:
            problems.append(f"job {job_id}: attempt log {rows} has {len(succeeded_rows)} succeeded attempts")
        events = usage.get(job_id, [])
        by_metric: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for e in events:
            by_metric[e["metric"]].append(e)
        if len(by_metric["jobs"]) != 1:
            problems.append(
                f"job {job_id}: {len(by_metric['jobs'])} 'jobs' events; attempt log {rows}; events "
                f"{sorted((e['attempt'], e['metric'], e['state']) for e in events)}"
            )
        metered = {e["attempt"] for e in events}
        attempt_events = by_metric["attempts"]
        if len(attempt_events) != len(metered) or {e["attempt"] for e in attempt_events} != metered:
            problems.append(
                f"job {job_id}: 'attempts' events {sorted(e['attempt'] for e in attempt_events)} "
                f"do not match the metered attempts {sorted(metered)}"
            )
        if any(e["quantity"] != 1 for e in attempt_events):
            problems.append(f"job {job_id}: an 'attempts' event with a quantity other than 1")
        succeeded_metered = [e for e in attempt_events if e["state"] == "succeeded"]
        if len(succeeded_metered) != len(succeeded_rows):
            # The one legitimate gap: the worker was killed after writing the success to SQL and before
            # closing the attempt's usage; the reconciler then bills that attempt once, as 'lost'.
            if not succeeded_metered and any(e["state"] == "lost" for e in attempt_events):
                report.success_billed_as_lost += 1
            else:
                problems.append(
                    f"job {job_id}: {len(succeeded_metered)} succeeded attempts billed for "
                    f"{len(succeeded_rows)} succeeded in the attempt log {sorted(rows)}; billed attempts "
                    f"{sorted((e['attempt'], e['state']) for e in attempt_events)}"
                )
        for metric in ("compute_ms", "wall_ms"):
            if {e["attempt"] for e in by_metric[metric]} != metered:
                problems.append(f"job {job_id}: {metric} not recorded once per metered attempt")
        states.update(e["state"] for e in attempt_events)
        report.max_attempts_per_job = max(report.max_attempts_per_job, len(metered))
        report.jobs_with_lost_attempts += any(e["state"] == "lost" for e in attempt_events)
        report.metered_attempts += len(attempt_events)
        report.jobs_events += len(by_metric["jobs"])
    report.attempt_states = dict(states)


def table(report: ChaosReport) -> str:
    rows = [
        ("jobs / kills / redis restarts", f"{report.jobs} / {report.kills} / {report.redis_restarts}"),
        ("all terminal after (s)", report.seconds_to_terminal),
        ("all metered after (s)", report.seconds_to_metered),
        ("job statuses", report.statuses),
        ("metered attempts (by state)", f"{report.metered_attempts} {report.attempt_states}"),
        ("'jobs' events", report.jobs_events),
        ("jobs with a lost attempt", report.jobs_with_lost_attempts),
        ("successes billed as lost", report.success_billed_as_lost),
        ("max attempts of one job", report.max_attempts_per_job),
        (
            "killed attempt -> running again (s)",
            f"n={len(report.recovery_s)} p50={report.recovery_percentile(0.5)} "
            f"p95={report.recovery_percentile(0.95)} max={max(report.recovery_s, default=None)}"
            + (f"; {report.killed_not_running_again} not again" if report.killed_not_running_again else ""),
        ),
        ("invariant violations", len(report.problems)),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--redis-restarts", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=0.2, help="demo.sleep duration of each job")
    parser.add_argument("--timeout", type=float, default=1200.0)
    parser.add_argument(
        "--redis-port",
        type=int,
        default=None,
        help="its redis-server's port (default: a free one)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("TENANTQ_DATABASE_URL", ""),
        help="PostgreSQL server to make a fresh database on (default TENANTQ_DATABASE_URL; none: SQLite)",
    )
    opts = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from tests.brokers import VHOSTS
    from tests.conftest import ProcessGroup, RedisServer

    work = Path(tempfile.mkdtemp(prefix="tq-chaos-"))
    server = RedisServer(work)
    if opts.redis_port:
        server.port = opts.redis_port
    server.start()
    base_db = opts.database_url or ""

    def drop() -> None:
        """Nothing to drop for a SQLite file inside ``work``."""

    if base_db.startswith("postgresql"):
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        name = f"tq_chaos_{uuid.uuid4().hex[:8]}"
        # Created from the server's maintenance database: the database named in the URL need not exist.
        admin = create_engine(make_url(base_db).set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        db_url = make_url(base_db).set(database=name).render_as_string(hide_password=False)

        def drop() -> None:
            from tenantq.core.db import dispose_engine

            dispose_engine()
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    else:
        db_url = f"sqlite:///{work / 'tenantq.db'}"
    broker = VHOSTS.create("chaos") if VHOSTS is not None else ""
    env = {
        "TENANTQ_DATABASE_URL": db_url,
        "TENANTQ_REDIS_URL": server.url,
        "TENANTQ_BROKER_URL": broker,
        "TENANTQ_DATA_DIR": str(work),
        "TENANTQ_SECRET_KEY": "chaos-" + uuid.uuid4().hex,
        "TENANTQ_LOG_JSON": "false",
    }
    os.environ.update(env)
    from tenantq.core.settings import reset_settings_cache
    from tenantq.ops.migrate import upgrade

    reset_settings_cache()
    upgrade(db_url)
    from tenantq.core.db import unscoped_session
    from tenantq.tenants.accounts.models import Tenant
    from tenantq.tenants.accounts.service import seed_plans

    with unscoped_session() as session:
        seed_plans(session)
        tenant = Tenant(
            name=f"chaos-{uuid.uuid4().hex[:6]}",
            plan_name="pro",
            status="active",
            overrides=dict(CHAOS_OVERRIDES),
        )
        session.add(tenant)
    group = ProcessGroup(env, work)
    client = redis_lib.Redis.from_url(server.url, decode_responses=True)
    chaos = Chaos(
        group=group, redis_server=server, redis=client, tenant=tenant, env=chaos_env(server.url, broker)
    )
    try:
        print(
            f"chaos: {opts.jobs} jobs, {opts.kills} kills, {opts.redis_restarts} redis restart(s), "
            f"broker {'RabbitMQ' if broker else 'Redis'}; logs in {work}"
        )
        report = chaos.run(
            jobs=opts.jobs,
            kills=opts.kills,
            redis_restarts=opts.redis_restarts,
            seconds=opts.seconds,
            timeout=opts.timeout,
        )
    finally:
        group.stop_all()
        server.stop()
        drop()
        if VHOSTS is not None:
            VHOSTS.delete_all()
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"chaos-{stamp}.json"
    meta = {
        "at": stamp,
        "database": "postgresql" if base_db.startswith("postgresql") else "sqlite",
        "broker": "rabbitmq" if broker else "redis",
        "settings": chaos.env,
        "cpus": os.cpu_count(),
        "job_seconds": opts.seconds,
    }
    out.write_text(json.dumps({"meta": meta, "results": report.as_dict()}, indent=2, default=str))
    print(table(report))
    for p in report.problems[:20]:
        print("  PROBLEM:", p)
    print(json.dumps(report.as_dict(), default=str))
    print(f"written {out.relative_to(ROOT)}")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
