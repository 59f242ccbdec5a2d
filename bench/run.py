"""tenantq benchmark: fairness, limits, priority, scale, idle latency and batch submission, each
beside bare Celery.

    python -m bench.run            # full parameters
    python -m bench.run --quick    # smaller, for a smoke run (a few minutes)

Everything runs on a private redis-server started here (tenantq on db 0, bare Celery on db 1) and a
private database (a fresh PostgreSQL database when one answers at --pg, else a SQLite file). tenantq
runs as it would in production: a dispatcher process and two Celery worker instances (2 pool processes
each) consuming the shared execution queue; the bare baseline uses the same Celery settings (JSON,
acks_late, prefetch disabled, priority steps) with two worker instances of its own. Results go to
bench/results/<timestamp>.json and a table is printed. Timings come from the job rows (created_at ->
started_at, written by the API and the worker's prerun) and, for bare Celery, from the task body.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tenantq.core import keys

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

FULL = {
    "noisy_a": 10_000,
    "noisy_b": 20,
    "weighted_per_tenant": 1_500,
    "rate_jobs": 300,
    "cap_jobs": 60,
    "priority_low": 1_000,
    "scale_jobs": 3_000,
    "idle_samples": 100,
    "batch_jobs": 5_000,
    "single_jobs": 300,
}
QUICK = {
    "noisy_a": 2_000,
    "noisy_b": 20,
    "weighted_per_tenant": 400,
    "rate_jobs": 120,
    "cap_jobs": 30,
    "priority_low": 1_000,
    "scale_jobs": 1_000,
    "idle_samples": 30,
    "batch_jobs": 2_000,
    "single_jobs": 100,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return round(ordered[k], 1)


def wait_until(
    pred: Callable[[], Any], timeout: float, interval: float = 0.1, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - window + 1e-9:
            j += 1
        best = max(best, i - j + 1)
    return best


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    cur = peak = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    return peak


class Bench:
    """Owns the private Redis, the database and every process it starts."""

    def __init__(self, pg_url: str | None, workdir: Path, dispatch_depth: int | None = 8) -> None:
        self.dir = workdir
        self.dispatch_depth = dispatch_depth  # None: tenantq's default setting
        self.procs: dict[str, subprocess.Popen] = {}
        self.redis_port = free_port()
        self.pg_admin_url = pg_url
        self.db_name: str | None = None
        self.notes: list[str] = []

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        from tenantq.ops.supervisor import redis_server_binary

        self.redis_proc = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        self.r = redis.Redis(port=self.redis_port, decode_responses=True)
        wait_until(self._ping, 15, 0.05, "redis")
        self.bare_r = redis.Redis(port=self.redis_port, db=1, decode_responses=True)
        db_url = self._make_database()
        self.env = {
            "TENANTQ_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "TENANTQ_SECRET_KEY": "bench-" + uuid.uuid4().hex,
            "TENANTQ_DATABASE_URL": db_url,
            "TENANTQ_DATA_DIR": str(self.dir / "data"),
            "TENANTQ_LEASE_TTL_SECONDS": "5",
            "TENANTQ_LIMITS_REFRESH_SECONDS": "2",
            "BENCH_BARE_BROKER": f"redis://127.0.0.1:{self.redis_port}/1",
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
        }
        if self.dispatch_depth is not None:
            # Ceiling of the execution-queue depth: 2 x the 4 worker processes (the dispatcher fills to
            # the free slots below it).
            self.env["TENANTQ_DISPATCH_DEPTH"] = str(self.dispatch_depth)
        else:
            os.environ.pop("TENANTQ_DISPATCH_DEPTH", None)
        os.environ.update(self.env)
        from tenantq.core.db import dispose_engine
        from tenantq.core.redis import reset_redis
        from tenantq.core.settings import reset_settings_cache
        from tenantq.ops.migrate import upgrade

        reset_settings_cache()
        dispose_engine()
        reset_redis()
        upgrade(db_url)

    def _ping(self) -> bool:
        try:
            return bool(self.r.ping())
        except Exception:  # noqa: BLE001
            return False

    def _make_database(self) -> str:
        if self.pg_admin_url:
            try:
                from sqlalchemy import create_engine, text
                from sqlalchemy.engine import make_url

                # From the server's maintenance database: the database named in the URL need not exist.
                admin_url = make_url(self.pg_admin_url).set(database="postgres")
                admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
                name = f"tq_bench_{uuid.uuid4().hex[:8]}"
                with admin.connect() as conn:
                    conn.execute(text(f'CREATE DATABASE "{name}"'))
                self.db_name, self._admin = name, admin
                self.database = "postgresql"
                return make_url(self.pg_admin_url).set(database=name).render_as_string(hide_password=False)
            except Exception as exc:  # noqa: BLE001
                self.notes.append(f"PostgreSQL unavailable ({type(exc).__name__}); using SQLite")
        self.database = "sqlite"
        return f"sqlite:///{self.dir / 'bench.db'}"

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM, wait=10)
        from tenantq.core.db import dispose_engine

        dispose_engine()
        if self.db_name:
            from sqlalchemy import text

            with self._admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)'))
            self._admin.dispose()
        self.redis_proc.terminate()
        self.redis_proc.wait(15)

    # -- processes ----------------------------------------------------------------------------------
    def spawn(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> None:
        with open(self.dir / f"{name}.log", "ab") as log:  # the child keeps its own descriptor
            self.procs[name] = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, **self.env, **(extra_env or {})},
                start_new_session=True,
            )

    def kill(self, name: str, sig: int = signal.SIGKILL, wait: float = 30) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def tq_worker(self, name: str, concurrency: int = 2) -> None:
        self.spawn(
            name,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tenantq.worker",
                "worker",
                "--loglevel=WARNING",
                f"--concurrency={concurrency}",
                "--queues=tq.exec",
                "--without-mingle",
                "--without-gossip",
                f"--hostname={name}-{uuid.uuid4().hex[:4]}@%h",
            ],
        )

    def bare_worker(self, name: str, queues: list[str], concurrency: int = 2) -> None:
        self.spawn(
            name,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.bare_app",
                "worker",
                "--loglevel=WARNING",
                f"--concurrency={concurrency}",
                f"--queues={','.join(queues)}",
                "--without-mingle",
                "--without-gossip",
                f"--hostname={name}-{uuid.uuid4().hex[:4]}@%h",
            ],
            {"BENCH_BARE_QUEUES": ",".join(queues)},
        )

    def ping(self, app: Any, count: int) -> None:
        wait_until(lambda: len(app.control.ping(timeout=0.5) or []) >= count, 180, 0.2, f"{count} workers")

    def start_tenantq(self) -> None:
        from tenantq.core.celery import app

        self.tq_app = app
        self.tq_worker("tq-w1")
        self.tq_worker("tq-w2")
        self.spawn("dispatcher", [sys.executable, "-m", "tenantq.cli", "dispatcher"])
        self.ping(app, 2)

    def bare_app(self) -> Any:
        from bench import bare_app

        return bare_app

    # -- tenantq helpers ----------------------------------------------------------------------------
    def tenants(self, n: int, prefix: str, **overrides: Any) -> list[str]:
        from tenantq.core.db import unscoped_session
        from tenantq.tenants.accounts.models import Tenant

        base = {
            "exec_rate": 1_000_000,
            "concurrency": 100_000,
            "max_queued": 1_000_000_000,
            "weight": 1,
            "submit_rate": 1_000_000,
            "submit_burst": 10_000_000,
            # The largest the overrides accept (32-bit columns); a larger value is ignored and logged
            # on every admission, which the figures then measured.
            "included_jobs": 2**31 - 1,
            "included_compute_seconds": 2**31 - 1,
        }
        ids = []
        with unscoped_session() as session:
            for i in range(n):
                t = Tenant(
                    name=f"{prefix}-{i}-{uuid.uuid4().hex[:6]}",
                    plan_name="enterprise",
                    overrides={**base, **overrides},
                )
                session.add(t)
                session.flush()
                ids.append(t.id)
        return ids

    def submit(self, tenant_id: str, jobs: list[dict[str, Any]]) -> float:
        """Submit through the batch service (validation, one transaction, one Redis call per 1,000)."""
        import tenantq.worker  # noqa: F401  (task types and assembly, like every entry point)
        from tenantq.core.db import unscoped_session
        from tenantq.platform.jobs.service import submit_batch
        from tenantq.tenants.accounts.models import Tenant

        t0 = time.perf_counter()
        with unscoped_session() as session:
            tenant = session.get(Tenant, tenant_id)
            for i in range(0, len(jobs), 1000):
                items = submit_batch(session, tenant, jobs[i : i + 1000])
                bad = [it for it in items if it.status_code != 202]
                if bad:
                    raise RuntimeError(f"batch refused: {bad[0]}")
        return time.perf_counter() - t0

    def pause(self, ids: list[str]) -> None:
        pipe = self.r.pipeline()
        for t in ids:
            pipe.sadd(keys.PAUSED, t)
        pipe.execute()

    def resume(self, ids: list[str]) -> None:
        self.r.srem(keys.PAUSED, *ids)

    def rows(
        self, tenant_ids: list[str]
    ) -> list[tuple[str, str, str, int, datetime, datetime | None, datetime | None]]:
        from sqlalchemy import select

        from tenantq.core.db import unscoped_session
        from tenantq.platform.jobs.models import Job

        with unscoped_session() as session:
            return list(
                session.execute(
                    select(
                        Job.id,
                        Job.tenant_id,
                        Job.status,
                        Job.priority,
                        Job.created_at,
                        Job.started_at,
                        Job.finished_at,
                    ).where(Job.tenant_id.in_(tenant_ids))
                ).all()
            )

    def count_status(self, tenant_ids: list[str], statuses: tuple[str, ...]) -> int:
        from sqlalchemy import func, select

        from tenantq.core.db import unscoped_session
        from tenantq.platform.jobs.models import Job

        with unscoped_session() as session:
            return session.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.tenant_id.in_(tenant_ids), Job.status.in_(statuses))
            )

    def drain(self, tenant_ids: list[str], timeout: float = 300) -> None:
        """Purge what still waits and let what was released finish, so the next scenario starts idle."""
        from tenantq.core.db import unscoped_session
        from tenantq.platform.dispatch.dispatcher import exec_queue_depth
        from tenantq.platform.jobs.service import purge_queue
        from tenantq.tenants.accounts.models import Tenant

        with unscoped_session() as session:
            for t in tenant_ids:
                purge_queue(session, session.get(Tenant, t), client=self.r)
        now = time.time
        # Released jobs finish (their leases go); leases of attempts killed with a worker just expire.
        wait_until(
            lambda: (
                exec_queue_depth(self.r, "tq.exec") == 0
                and self.r.zcard(keys.INFLIGHT) == 0
                and all(self.r.zcount(keys.lease_key(t), now(), "+inf") == 0 for t in tenant_ids)
            ),
            timeout,
            0.2,
            "drain",
        )


def ts(d: datetime | None) -> float | None:
    return d.timestamp() if d is not None else None


# -- scenarios ---------------------------------------------------------------------------------------


def noisy_neighbour(b: Bench, p: dict[str, Any]) -> dict[str, Any]:
    n_a, n_b = p["noisy_a"], p["noisy_b"]
    sleep = {"task": "demo.sleep", "args": {"seconds": 0.01}}
    a, bt = b.tenants(2, "noisy")
    submit_a = b.submit(a, [sleep] * n_a)
    for _ in range(n_b):  # B submits one by one, after A's flood
        b.submit(bt, [sleep])
    wait_until(lambda: b.count_status([bt], ("succeeded",)) == n_b, 600, 0.1, "B's jobs")
    b_rows = sorted(b.rows([bt]), key=lambda r: ts(r[4]))
    waits = [(ts(r[5]) - ts(r[4])) * 1000 for r in b_rows]
    a_done_when_b_done = b.count_status([a], ("succeeded",))
    b.drain([a, bt])
    tq = {
        "b_wait_p50_ms": pct(waits, 50),
        "b_wait_p95_ms": pct(waits, 95),
        # In submission order, with the gaps between B's submissions: a wait that grows along the
        # list means B submits faster than its share of the releases drains its queue.
        "b_waits_in_order_ms": [round(w, 1) for w in waits],
        "b_submit_gaps_ms": [round((ts(y[4]) - ts(x[4])) * 1000, 1) for x, y in itertools.pairwise(b_rows)],
        "a_done_when_b_finished": a_done_when_b_done,
        "a_submit_s": round(submit_a, 2),
    }

    bare = b.bare_app()
    b.bare_r.delete("bench:start")
    b.bare_worker("bare-w1", ["bare.shared"])
    b.bare_worker("bare-w2", ["bare.shared"])
    b.ping(bare.app, 2)
    for i in range(n_a):
        bare.sleep.apply_async((0.01, f"a{i}"), queue="bare.shared")
    submitted = {}
    for i in range(n_b):
        submitted[f"b{i}"] = time.time()
        bare.sleep.apply_async((0.01, f"b{i}"), queue="bare.shared")
    wait_until(lambda: all(b.bare_r.hexists("bench:start", k) for k in submitted), 1800, 0.5, "bare B's jobs")
    starts = b.bare_r.hmget("bench:start", list(submitted))
    bare_waits = [(float(s) - submitted[k]) * 1000 for k, s in zip(submitted, starts, strict=True)]
    b.kill("bare-w1", signal.SIGTERM)
    b.kill("bare-w2", signal.SIGTERM)
    bare.app.control.purge()
    base = {"b_wait_p50_ms": pct(bare_waits, 50), "b_wait_p95_ms": pct(bare_waits, 95)}
    ratio = round(base["b_wait_p95_ms"] / max(tq["b_wait_p95_ms"], 0.1), 1)
    return {
        "params": {"a_jobs": n_a, "b_jobs": n_b, "task": "demo.sleep 10 ms"},
        "tenantq": tq,
        "bare_celery_one_queue": base,
        "p95_ratio_bare_over_tenantq": ratio,
        "target": "ratio >= 50",
        "pass": ratio >= 50,
    }


def weighted_share(b: Bench, p: dict[str, Any]) -> dict[str, Any]:
    n = p["weighted_per_tenant"]
    ids = [b.tenants(1, f"w{w}", weight=w)[0] for w in (5, 3, 2)]
    b.pause(ids)
    for t in ids:
        b.submit(t, [{"task": "demo.sleep", "args": {"seconds": 0.01}}] * n)
    b.resume(ids)
    # Measure while all three are backlogged: until the heaviest tenant's queue runs dry.
    wait_until(lambda: b.r.zcard(keys.queue_key(ids[0])) == 0, 900, 0.2, "weight-5 tenant to drain")
    rows = [r for r in b.rows(ids) if r[5] is not None]
    end = max(ts(r[5]) for r in rows if r[1] == ids[0]) - 0.5
    start = min(ts(r[5]) for r in rows) + 1.0
    window = Counter(r[1] for r in rows if start <= ts(r[5]) <= end)
    total = sum(window.values())
    shares = [round(100 * window[t] / total, 1) for t in ids]
    b.drain(ids)
    ok = all(abs(s - e) <= 5 for s, e in zip(shares, (50, 30, 20), strict=True))
    return {
        "params": {
            "weights": [5, 3, 2],
            "jobs_per_tenant": n,
            "window_s": round(end - start, 1),
            "executions_in_window": total,
        },
        "tenantq_share_pct": shares,
        "bare_celery": "no weights: kombu round-robin gives 33/33/33",
        "target": "50/30/20 +-5",
        "pass": ok,
    }


def _rate_figures(starts: list[float], rate: float, burst: float) -> dict[str, Any]:
    starts = sorted(starts)
    out: dict[str, Any] = {}
    for window in (1, 2, 5):
        out[f"max_in_{window}s"] = max_in_window(starts, window)
        out[f"bound_{window}s"] = rate * window + burst
    out["achieved_per_s"] = (
        round((len(starts) - 1) / (starts[-1] - starts[0]), 1) if len(starts) > 1 else None
    )
    return out


def rate_limit(b: Bench, p: dict[str, Any]) -> dict[str, Any]:
    n = p["rate_jobs"]
    (t,) = b.tenants(1, "rate", exec_rate=20)
    burst = 4  # limits.default_burst(20)
    b.pause([t])
    b.submit(t, [{"task": "demo.echo", "args": {}}] * n)
    b.resume([t])
    wait_until(lambda: b.count_status([t], ("succeeded",)) == n, 600, 0.2, "rate-limited jobs")
    tq = _rate_figures([ts(r[5]) for r in b.rows([t])], 20, burst)
    ok = all(tq[f"max_in_{w}s"] <= tq[f"bound_{w}s"] for w in (1, 2, 5)) and tq["achieved_per_s"] >= 18

    bare = b.bare_app()
    b.bare_r.delete("bench:start")
    b.bare_worker("bare-w1", ["bare.rl"])
    b.bare_worker("bare-w2", ["bare.rl"])
    b.ping(bare.app, 2)
    for i in range(n):
        bare.rate_limited.apply_async((f"r{i}",), queue="bare.rl")
    wait_until(lambda: b.bare_r.hlen("bench:start") >= n, 600, 0.2, "bare rate-limited tasks")
    base = _rate_figures([float(v) for v in b.bare_r.hvals("bench:start")], 20, 0)
    b.kill("bare-w1", signal.SIGTERM)
    b.kill("bare-w2", signal.SIGTERM)
    return {
        "params": {"rate_per_s": 20, "burst": burst, "jobs": n, "worker_instances": 2},
        "tenantq": tq,
        "bare_celery_rate_limit_20s": base,
        "target": "max <= 20T+burst, >= 18/s",
        "pass": ok,
    }


def concurrency_cap(b: Bench, p: dict[str, Any]) -> dict[str, Any]:
    n = p["cap_jobs"]
    (t,) = b.tenants(1, "cap", concurrency=3)
    b.pause([t])
    b.submit(t, [{"task": "demo.sleep", "args": {"seconds": 0.3}}] * n)
    b.resume([t])
    wait_until(lambda: b.count_status([t], ("succeeded",)) >= n // 3, 600, 0.1, "a third done")
    from sqlalchemy import select

    from tenantq.core.db import unscoped_session
    from tenantq.platform.jobs.models import Job

    def victim() -> str | None:
        # The worker instance running one of the tenant's jobs right now (hostname "tq-wN-xxxx@host").
        with unscoped_session() as session:
            hosts = session.scalars(
                select(Job.worker).where(Job.tenant_id == t, Job.status == "running")
            ).all()
        return next((h.split("-")[0] + "-" + h.split("-")[1] for h in hosts if h), None)

    name = wait_until(victim, 60, 0.01, "a running job")
    killed_at = time.time()
    b.kill(name, signal.SIGKILL)  # the whole worker instance, pool processes included
    b.tq_worker(name)

    from tenantq.platform.dispatch.dispatcher import exec_queue_depth

    def settled():
        if b.r.zcard(keys.queue_key(t)) or b.r.zcard(keys.INFLIGHT) or exec_queue_depth(b.r, "tq.exec"):
            return None
        rows = b.rows([t])
        if any(r[2] == "running" and ts(r[5]) >= killed_at for r in rows):
            return None
        return rows

    rows = wait_until(settled, 900, 0.3, "cap jobs to settle")
    stranded = [r for r in rows if r[2] == "running"]  # killed mid-run: postrun never fired
    reserved = [r for r in rows if r[2] == "queued"]  # reserved by the killed worker, never started
    intervals = [(ts(r[5]), ts(r[6])) for r in rows if r[2] == "succeeded"]
    intervals += [(ts(r[5]), killed_at) for r in stranded]
    peak = max_overlap(intervals)
    first_after = min((ts(r[5]) for r in rows if r[5] and ts(r[5]) > killed_at), default=None)
    b.drain([t])
    return {
        "params": {
            "cap": 3,
            "jobs": n,
            "task": "demo.sleep 300 ms",
            "sigkill": "the worker instance running one of its jobs",
            "lease_ttl_s": 5,
        },
        "tenantq": {
            "max_overlap": peak,
            "attempts_killed": len(stranded),
            "reserved_unstarted": len(reserved),
            "succeeded": sum(r[2] == "succeeded" for r in rows),
            "first_start_after_kill_s": round(first_after - killed_at, 2) if first_after else None,
        },
        "bare_celery": "no cluster-wide cap (only per-worker --concurrency)",
        "note": "messages of the killed worker stay in kombu's unacked set until the visibility timeout "
        "(3700 s); the lost-job reconciler re-queues the never-started ones after "
        "lost_job_grace_seconds, and a late redelivery is skipped by the start guard",
        "target": "max_overlap <= 3",
        "pass": peak <= 3,
    }


def priority(b: Bench, p: dict[str, Any]) -> dict[str, Any]:
    n = p["priority_low"]
    (t,) = b.tenants(1, "prio")
    b.submit(t, [{"task": "demo.sleep", "args": {"seconds": 0.01}, "priority": 1}] * n)
    wait_until(lambda: b.count_status([t], ("succeeded",)) >= 20, 300, 0.05, "low jobs running")
    submitted = time.time()
    b.submit(t, [{"task": "demo.sleep", "args": {"seconds": 0.01}, "priority": 9}])
    waiting = set(
        b.r.zrange(keys.queue_key(t), 0, -1)
    )  # not yet handed to a worker when the urgent job arrived
    rows = wait_until(
        lambda: [r for r in b.rows([t]) if r[3] == 9 and r[2] == "succeeded"], 300, 0.05, "p9 job"
    )
    urgent = rows[0]
    all_rows = b.rows([t])
    overtaken = sum(
        1 for r in all_rows if r[0] in waiting and r[3] == 1 and r[5] and ts(r[5]) < ts(urgent[5])
    )
    ahead = sum(1 for r in all_rows if r[3] == 1 and r[5] and submitted < ts(r[5]) < ts(urgent[5]))
    b.drain([t])
    tq = {
        "p9_wait_ms": round((ts(urgent[5]) - ts(urgent[4])) * 1000, 1),
        "low_started_ahead": ahead,
        "low_not_yet_released_started_ahead": overtaken,
    }

    bare = b.bare_app()
    b.bare_r.delete("bench:start")
    b.bare_worker("bare-w1", ["bare.shared"])
    b.bare_worker("bare-w2", ["bare.shared"])
    b.ping(bare.app, 2)
    for i in range(n):
        bare.sleep.apply_async((0.01, f"l{i}"), queue="bare.shared", priority=8)  # tenantq 1 -> Celery 8
    wait_until(lambda: b.bare_r.hlen("bench:start") >= 20, 300, 0.05, "bare low running")
    sub = time.time()
    bare.sleep.apply_async((0.01, "urgent"), queue="bare.shared", priority=0)
    start = float(wait_until(lambda: b.bare_r.hget("bench:start", "urgent"), 300, 0.05, "bare urgent"))
    bare_ahead = sum(
        1 for k, v in b.bare_r.hgetall("bench:start").items() if k != "urgent" and sub < float(v) < start
    )
    b.kill("bare-w1", signal.SIGTERM)
    b.kill("bare-w2", signal.SIGTERM)
    bare.app.control.purge()
    return {
        "params": {"low_jobs": n, "low_priority": 1, "urgent_priority": 9},
        "tenantq": tq,
        "bare_celery_priority_queue": {
            "p9_wait_ms": round((start - sub) * 1000, 1),
            "low_started_ahead": bare_ahead,
        },
        "target": "no job still waiting in the tenant queue starts before the p9 job",
        "pass": overtaken == 0,
    }


def scale_in_tenants(b: Bench, p: dict[str, Any]) -> dict[str, Any]:
    n = p["scale_jobs"]
    out: dict[str, Any] = {"params": {"jobs": n, "task": "demo.echo / bare.noop"}}
    # Disjoint tenant sets: the second round must not count the first round's jobs.
    all_ids = b.tenants(1010, "scale")
    for k, ids in ((10, all_ids[:10]), (1000, all_ids[10:])):
        b.pause(ids)
        per = n // k
        for t in ids:
            b.submit(t, [{"task": "demo.echo", "args": {}}] * per)
        b.resume(ids)
        total = per * k
        wait_until(
            lambda ids=ids, total=total: b.count_status(ids, ("succeeded",)) >= total,
            900,
            0.3,
            f"{k} tenants' jobs",
        )
        rows = [r for r in b.rows(ids) if r[2] == "succeeded"]
        span = max(ts(r[6]) for r in rows) - min(ts(r[5]) for r in rows)
        out[f"tenantq_{k}_tenants_jobs_per_s"] = round(total / span, 1)
    bare = b.bare_app()
    for k in (1, 10, 1000):
        queues = [f"bare.t{i}" for i in range(k)]
        b.bare_r.delete("bench:start")
        for i in range(n):
            bare.noop.apply_async((f"n{i}",), queue=queues[i % k])
        b.bare_worker("bare-w1", queues)
        b.bare_worker("bare-w2", queues)
        wait_until(lambda: b.bare_r.hlen("bench:start") >= n, 900, 0.3, f"bare {k} queues")
        starts = sorted(float(v) for v in b.bare_r.hvals("bench:start"))
        out[f"bare_{k}_queues_jobs_per_s"] = round(n / (starts[-1] - starts[0]), 1)
        b.kill("bare-w1", signal.SIGTERM)
        b.kill("bare-w2", signal.SIGTERM)
    ratio = out["tenantq_1000_tenants_jobs_per_s"] / out["tenantq_10_tenants_jobs_per_s"]
    out["tenantq_1000_over_10"] = round(ratio, 2)
    out["target"] = "1000 tenants >= 0.8 x 10 tenants"
    out["pass"] = ratio >= 0.8
    return out


def idle_latency(b: Bench, p: dict[str, Any]) -> dict[str, Any]:
    n = p["idle_samples"]
    (t,) = b.tenants(1, "idle")
    import tenantq.worker  # noqa: F401  (task types and assembly, like every entry point)
    from tenantq.core.db import unscoped_session
    from tenantq.platform.jobs.models import Job
    from tenantq.platform.jobs.schemas import JobCreate
    from tenantq.platform.jobs.service import submit_job
    from tenantq.tenants.accounts.models import Tenant

    lat, in_submit = [], []
    for _ in range(n):
        with unscoped_session() as session:
            job = submit_job(session, session.get(Tenant, t), JobCreate(task="demo.echo")).job
            job_id, created = job.id, job.created_at
            in_submit.append((datetime.now(UTC) - created).total_seconds() * 1000)

        def started(job_id=job_id):
            with unscoped_session() as s:
                return s.get(Job, job_id).started_at

        st = wait_until(started, 60, 0.005, "idle job start")
        lat.append((st - created).total_seconds() * 1000)
        time.sleep(0.05)
    bare = b.bare_app()
    b.bare_r.delete("bench:start")
    b.bare_worker("bare-w1", ["bare.shared"])
    b.ping(bare.app, 1)
    bare_lat = []
    for i in range(n):
        key = f"i{i}"
        sent = time.time()
        bare.noop.apply_async((key,), queue="bare.shared")
        st = float(wait_until(lambda key=key: b.bare_r.hget("bench:start", key), 60, 0.002, "bare idle"))
        bare_lat.append((st - sent) * 1000)
        time.sleep(0.05)
    b.kill("bare-w1", signal.SIGTERM)
    return {
        "params": {"samples": n},
        "tenantq_ms": {"p50": pct(lat, 50), "p99": pct(lat, 99)},
        # Of which the submitter's own part (admission, commit, enqueue or direct release).
        "tenantq_submit_ms": {"p50": pct(in_submit, 50), "p99": pct(in_submit, 99)},
        "bare_celery_ms": {"p50": pct(bare_lat, 50), "p99": pct(bare_lat, 99)},
    }


def batch_submit(b: Bench, p: dict[str, Any]) -> dict[str, Any]:
    import httpx

    from tenantq.core.db import unscoped_session
    from tenantq.tenants.access.service import create_api_key
    from tenantq.tenants.accounts.models import Tenant

    n, single = p["batch_jobs"], p["single_jobs"]
    (t,) = b.tenants(1, "batch")
    with unscoped_session() as session:
        _, key = create_api_key(session, tenant=session.get(Tenant, t), name="bench")
    b.pause([t])  # measure submission only
    port = free_port()
    b.spawn("api", [sys.executable, "-m", "tenantq.cli", "api", "--host", "127.0.0.1", "--port", str(port)])
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
        wait_until(lambda: _up(http), 120, 0.2, "API")
        job = {"task": "demo.echo", "args": {"x": 1}}
        t0 = time.perf_counter()
        for _ in range(n // 1000):
            res = http.post("/v1/jobs/batch", json={"jobs": [job] * 1000})
            assert res.status_code == 200, res.text
        batch_rate = n // 1000 * 1000 / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(single):
            assert http.post("/v1/jobs", json=job).status_code == 202
        single_rate = single / (time.perf_counter() - t0)
    b.kill("api", signal.SIGTERM)
    b.drain([t])
    b.resume([t])
    bare = b.bare_app()
    t0 = time.perf_counter()
    for i in range(n):
        bare.noop.apply_async((f"s{i}",), queue="bare.nobody")
    bare_rate = n / (time.perf_counter() - t0)
    b.bare_r.delete("bare.nobody")
    return {
        "params": {"jobs": n, "batch_size": 1000, "single_jobs": single},
        "tenantq_batch_http_jobs_per_s": round(batch_rate, 1),
        "tenantq_single_http_jobs_per_s": round(single_rate, 1),
        "bare_apply_async_loop_jobs_per_s": round(bare_rate, 1),
        "target": "batch > bare apply_async loop",
        "pass": batch_rate > bare_rate,
    }


def _up(http: Any) -> bool:
    try:
        return http.get("/healthz").status_code == 200
    except Exception:  # noqa: BLE001
        return False


SCENARIOS: list[tuple[str, Callable[[Bench, dict[str, Any]], dict[str, Any]]]] = [
    ("1_noisy_neighbour", noisy_neighbour),
    ("2_weighted_share", weighted_share),
    ("3_rate_limit", rate_limit),
    ("4_concurrency_cap", concurrency_cap),
    ("5_priority", priority),
    ("6_scale_in_tenants", scale_in_tenants),
    ("7_idle_dispatch_latency", idle_latency),
    ("8_batch_submit", batch_submit),
]


def table(results: dict[str, Any]) -> str:
    def g(name: str, *path: str) -> Any:
        cur: Any = results.get(name, {})
        for k in path:
            cur = cur.get(k) if isinstance(cur, dict) else None
        return cur

    lines = [
        (
            "1 noisy neighbour: B wait p50/p95 ms",
            (
                f"{g('1_noisy_neighbour', 'tenantq', 'b_wait_p50_ms')} / "
                f"{g('1_noisy_neighbour', 'tenantq', 'b_wait_p95_ms')}"
            ),
            (
                f"{g('1_noisy_neighbour', 'bare_celery_one_queue', 'b_wait_p50_ms')} / "
                f"{g('1_noisy_neighbour', 'bare_celery_one_queue', 'b_wait_p95_ms')}"
            ),
            f"p95 ratio {g('1_noisy_neighbour', 'p95_ratio_bare_over_tenantq')}x",
            g("1_noisy_neighbour", "pass"),
        ),
        (
            "2 weighted share 5/3/2 (% of executions)",
            "/".join(str(x) for x in g("2_weighted_share", "tenantq_share_pct") or []),
            "no weights (33/33/33)",
            "50/30/20 +-5",
            g("2_weighted_share", "pass"),
        ),
        (
            "3 rate 20/s, 2 workers: max in 1s/2s/5s; rate",
            (
                f"{g('3_rate_limit', 'tenantq', 'max_in_1s')}/{g('3_rate_limit', 'tenantq', 'max_in_2s')}/"
                f"{g('3_rate_limit', 'tenantq', 'max_in_5s')}; "
                f"{g('3_rate_limit', 'tenantq', 'achieved_per_s')}/s"
            ),
            (
                f"{g('3_rate_limit', 'bare_celery_rate_limit_20s', 'max_in_1s')}/"
                f"{g('3_rate_limit', 'bare_celery_rate_limit_20s', 'max_in_2s')}/"
                f"{g('3_rate_limit', 'bare_celery_rate_limit_20s', 'max_in_5s')}; "
                f"{g('3_rate_limit', 'bare_celery_rate_limit_20s', 'achieved_per_s')}/s"
            ),
            "<= 24/44/104; >= 18/s",
            g("3_rate_limit", "pass"),
        ),
        (
            "4 concurrency cap 3 + SIGKILL: max overlap",
            str(g("4_concurrency_cap", "tenantq", "max_overlap")),
            "no cluster-wide cap",
            "<= 3",
            g("4_concurrency_cap", "pass"),
        ),
        (
            "5 priority 9 behind 1,000 p1: queued p1 overtaking",
            (
                f"{g('5_priority', 'tenantq', 'low_not_yet_released_started_ahead')} "
                f"(released ahead {g('5_priority', 'tenantq', 'low_started_ahead')}; "
                f"wait {g('5_priority', 'tenantq', 'p9_wait_ms')} ms)"
            ),
            (
                f"ahead {g('5_priority', 'bare_celery_priority_queue', 'low_started_ahead')}; "
                f"wait {g('5_priority', 'bare_celery_priority_queue', 'p9_wait_ms')} ms"
            ),
            "0",
            g("5_priority", "pass"),
        ),
        (
            "6 no-op jobs/s: 10 vs 1,000 tenants",
            (
                f"{g('6_scale_in_tenants', 'tenantq_10_tenants_jobs_per_s')} vs "
                f"{g('6_scale_in_tenants', 'tenantq_1000_tenants_jobs_per_s')} "
                f"({g('6_scale_in_tenants', 'tenantq_1000_over_10')})"
            ),
            (
                f"1q {g('6_scale_in_tenants', 'bare_1_queues_jobs_per_s')}; "
                f"10q {g('6_scale_in_tenants', 'bare_10_queues_jobs_per_s')}; "
                f"1000q {g('6_scale_in_tenants', 'bare_1000_queues_jobs_per_s')}"
            ),
            ">= 0.8",
            g("6_scale_in_tenants", "pass"),
        ),
        (
            "7 idle submit->start p50/p99 ms",
            (
                f"{g('7_idle_dispatch_latency', 'tenantq_ms', 'p50')} / "
                f"{g('7_idle_dispatch_latency', 'tenantq_ms', 'p99')}"
            ),
            (
                f"{g('7_idle_dispatch_latency', 'bare_celery_ms', 'p50')} / "
                f"{g('7_idle_dispatch_latency', 'bare_celery_ms', 'p99')}"
            ),
            "-",
            None,
        ),
        (
            "8 submit jobs/s: batch HTTP (single HTTP)",
            (
                f"{g('8_batch_submit', 'tenantq_batch_http_jobs_per_s')} "
                f"({g('8_batch_submit', 'tenantq_single_http_jobs_per_s')})"
            ),
            f"apply_async loop {g('8_batch_submit', 'bare_apply_async_loop_jobs_per_s')}",
            "batch > loop",
            g("8_batch_submit", "pass"),
        ),
    ]
    head = ("figure", "tenantq", "bare Celery", "target", "pass")
    widths = [max(len(str(r[i])) for r in [head, *lines]) for i in range(5)]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*head), "-+-".join("-" * w for w in widths)]
    out += [fmt.format(*(str(c) if c is not None else "-" for c in r)) for r in lines]
    return "\n".join(out)


def add_pg_option(parser: argparse.ArgumentParser) -> None:
    """``--pg``: the PostgreSQL server the benchmark makes its private database on ('' for SQLite)."""
    parser.add_argument(
        "--pg",
        default=os.environ.get("TENANTQ_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"),
        help="PostgreSQL URL used to create (and drop) a private database; '' for SQLite",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller parameters (smoke run)")
    parser.add_argument("--only", default="", help="comma-separated scenario numbers to run, e.g. 1,3")
    add_pg_option(parser)
    parser.add_argument(
        "--dispatch-depth",
        type=int,
        default=8,
        help="TENANTQ_DISPATCH_DEPTH for the run (default 8); 0 leaves tenantq's default setting",
    )
    args = parser.parse_args(argv)
    params = QUICK if args.quick else FULL
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    workdir = Path(tempfile.mkdtemp(prefix="tq-bench-i4-"))
    bench = Bench(args.pg or None, workdir, dispatch_depth=args.dispatch_depth or None)
    results: dict[str, Any] = {}
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    bench.start()
    try:
        bench.start_tenantq()
        for name, fn in SCENARIOS:
            if only and name.split("_")[0] not in only:
                continue
            t0 = time.monotonic()
            print(f"== {name} ...", flush=True)
            try:
                results[name] = fn(bench, params)
            except Exception as exc:  # noqa: BLE001 - one failed figure must not hide the others
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            results[name]["seconds"] = round(time.monotonic() - t0, 1)
            print(json.dumps(results[name]), flush=True)
    finally:
        bench.stop()
    import celery
    import redis as redis_mod

    meta = {
        "started_at": started.isoformat(),
        "mode": "quick" if args.quick else "full",
        "params": params,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "note": "shared machine: other sessions were running tests at the same time",
        },
        "versions": {"celery": celery.__version__, "redis_py": redis_mod.__version__},
        "database": bench.database,
        "dispatch_depth": bench.dispatch_depth or "default",
        "notes": bench.notes,
        "logs": str(workdir),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{started.strftime('%Y%m%dT%H%M%SZ')}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2, default=str))
    print()
    print(table(results))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
