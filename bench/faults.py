"""Infrastructure faults under load: what clients see, and whether any job is stranded.

    PYTHONPATH=$PWD python -m bench.faults --database-url postgresql+psycopg://USER@127.0.0.1:5432/postgres
    PYTHONPATH=$PWD python -m bench.faults --database-url ... --outage 30 --blackhole 20 --rate 5

Starts a private stack on PostgreSQL (``bench.stack``: its own Redis with AOF, a fresh database behind a
:class:`bench.tcpproxy.TcpProxy`, and ``tenantq api``, ``dispatcher``, a worker and the
usage flusher as separate processes; ``--concurrency`` worker processes, 8 by default so that the workers
keep up with ``--rate`` x ``--job-seconds``), then runs each scenario and prints the issue's table:

- *database unreachable*: jobs submitted at ``--rate``/s (``demo.sleep`` of ``--job-seconds``) while the
  proxy refuses and resets every database connection for ``--outage`` s;
- *database blackholed*: the proxy holds every byte for ``--blackhole`` s; ``/readyz`` is timed throughout;
- *Redis restart*: Redis stopped for ``--redis-down`` s and started again (its AOF keeps the queues);
- *commit without enqueue*: a submitting process dies between the commit and the enqueue.

The submitting clients behave as the API asks: each submission carries an idempotency key, and a 503 is
retried with the same key after its ``Retry-After``. A scenario passes when every accepted job ends
terminal within 60 s of the fault's end, every failure answered JSON in the error shape, and nothing
answered a 5xx other than 503. ``tests/faults`` runs the same drivers, shorter.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.stack import Stack

RESULTS = Path(__file__).resolve().parent / "results"
TERMINAL = ("succeeded", "failed", "cancelled")
ACCEPTABLE_503 = {"database_unavailable", "queue_unavailable", "overloaded"}


@dataclass
class Answers:
    """Every answer the submitting clients got, and the jobs they got accepted."""

    statuses: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    bad: list[str] = field(
        default_factory=list
    )  # answers that break the rules (text 5xx, 500, no Retry-After)
    accepted: list[str] = field(default_factory=list)
    gave_up: int = 0  # submissions never accepted before the scenario ended
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, resp: httpx.Response) -> None:
        with self.lock:
            self.statuses[str(resp.status_code)] += 1
            if resp.is_success:
                return
            try:
                code = resp.json()["error"]["code"]
            except (ValueError, KeyError, TypeError):
                self.bad.append(f"{resp.status_code} not in the error shape: {resp.text[:120]!r}")
                return
            self.codes[f"{resp.status_code} {code}"] += 1
            if resp.status_code >= 500 and (resp.status_code != 503 or code not in ACCEPTABLE_503):
                self.bad.append(f"{resp.status_code} {code}")
            elif resp.status_code == 503 and not resp.headers.get("Retry-After"):
                self.bad.append(f"503 {code} without Retry-After")


class Submitter:
    """Submits ``demo.sleep`` jobs at ``rate``/s until stopped; each retried after a 503 until accepted."""

    def __init__(self, stack: Stack, rate: float, job_seconds: float) -> None:
        self.stack = stack
        self.rate = rate
        self.job_seconds = job_seconds
        self.answers = Answers()
        self.stop = threading.Event()
        self.give_up = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=64)
        self.client = httpx.Client(timeout=30.0, limits=httpx.Limits(max_connections=100))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._n = 0

    def _submit_one(self) -> None:
        self._n += 1
        _tenant, key = self.stack.keys[self._n % len(self.stack.keys)]
        body = {
            "task": "demo.sleep",
            "args": {"seconds": self.job_seconds},
            "idempotency_key": uuid.uuid4().hex,
        }
        while not self.give_up.is_set():
            try:
                resp = self.client.post(
                    f"{self.stack.api_url}/v1/jobs", json=body, headers={"Authorization": f"Bearer {key}"}
                )
            except httpx.HTTPError as exc:
                with self.answers.lock:
                    self.answers.statuses[type(exc).__name__] += 1
                time.sleep(1.0)
                continue
            self.answers.note(resp)
            if resp.is_success:
                with self.answers.lock:
                    self.answers.accepted.append(resp.json()["id"])
                return
            if resp.status_code not in (429, 503):
                return  # a refusal that retrying will not change (noted as bad if it is a 5xx)
            time.sleep(float(resp.headers.get("Retry-After", "1")))
        with self.answers.lock:
            self.answers.gave_up += 1

    def _run(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not self.stop.is_set():
            self.pool.submit(self._submit_one)
            next_at += interval
            self.stop.wait(max(0.0, next_at - time.monotonic()))

    def start(self) -> Submitter:
        self._thread.start()
        return self

    def finish(self, retry_for: float = 60.0) -> Answers:
        """Stop submitting; give submissions still retrying ``retry_for`` seconds to get in."""
        self.stop.set()
        self._thread.join()
        timer = threading.Timer(retry_for, self.give_up.set)
        timer.start()
        self.pool.shutdown(wait=True)
        timer.cancel()
        self.client.close()
        return self.answers


class ReadyProbe:
    """Polls /readyz every ``every`` seconds and keeps the slowest answer (or a timeout at 10 s)."""

    def __init__(self, stack: Stack, every: float = 0.5) -> None:
        self.url = f"{stack.api_url}/readyz"
        self.every = every
        self.slowest = 0.0
        self.failures = 0
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10.0) as client:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    client.get(self.url)
                except httpx.HTTPError:
                    self.failures += 1
                self.slowest = max(self.slowest, time.monotonic() - started)
                self.stop.wait(self.every)

    def start(self) -> ReadyProbe:
        self._thread.start()
        return self

    def finish(self) -> float:
        self.stop.set()
        self._thread.join()
        return round(self.slowest, 2)


def job_statuses(stack: Stack, ids: list[str]) -> Counter[str]:
    from sqlalchemy import text

    engine = stack.sql()
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT status FROM job WHERE id = ANY(:ids)"), {"ids": ids}).all()
    finally:
        engine.dispose()
    found = Counter(row[0] for row in rows)
    if len(rows) < len(ids):
        found["missing"] = len(ids) - len(rows)
    return found


def wait_terminal(stack: Stack, ids: list[str], timeout: float) -> tuple[float | None, Counter[str]]:
    """Seconds until every job is terminal (None if not within ``timeout``), and the last statuses."""
    started = time.monotonic()
    while True:
        statuses = job_statuses(stack, ids) if ids else Counter()
        if all(s in TERMINAL for s in statuses):
            return round(time.monotonic() - started, 1), statuses
        if time.monotonic() - started > timeout:
            return None, statuses
        time.sleep(0.5)


def first_answer_after(stack: Stack, timeout: float = 120.0) -> float | None:
    """Seconds until an authenticated GET answers 200 within a second."""
    _tenant, key = stack.keys[0]
    started = time.monotonic()
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() - started < timeout:
            t0 = time.monotonic()
            try:
                resp = client.get(
                    f"{stack.api_url}/v1/jobs?limit=1", headers={"Authorization": f"Bearer {key}"}
                )
                if resp.status_code == 200 and time.monotonic() - t0 < 1.0:
                    return round(time.monotonic() - started, 2)
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    return None


def outcomes_pending(stack: Stack) -> int:
    import redis

    client = redis.Redis.from_url(stack.redis.url)
    try:
        from tenantq.core.keys import OUTCOMES

        return int(client.xlen(OUTCOMES))
    finally:
        client.close()


def database_fault(
    stack: Stack, *, mode: str, seconds: float, rate: float, job_seconds: float, lead: float = 5.0
) -> dict[str, Any]:
    """Jobs submitted at ``rate``/s; the database cut (``mode`` 'cut') or stalled ('blackhole') for
    ``seconds`` after ``lead`` s; submissions go on ``lead`` s after it heals."""
    assert stack.proxy is not None
    probe = ReadyProbe(stack).start()
    submitter = Submitter(stack, rate, job_seconds).start()
    time.sleep(lead)
    getattr(stack.proxy, mode)()
    time.sleep(seconds)
    stack.proxy.heal()
    healed = time.monotonic()
    recovery = first_answer_after(stack)
    time.sleep(lead)
    answers = submitter.finish()
    readyz_slowest = probe.finish()
    settle_left = max(5.0, 60.0 - (time.monotonic() - healed))
    _took, statuses = wait_terminal(stack, answers.accepted, settle_left)
    late = sum(n for s, n in statuses.items() if s not in TERMINAL)
    if late:  # a backlog the workers have not drained yet, or stranded jobs: give it two more minutes
        _took, statuses = wait_terminal(stack, answers.accepted, 120.0)
    never = sum(n for s, n in statuses.items() if s not in TERMINAL)
    return {
        "scenario": f"database {'unreachable' if mode == 'cut' else 'blackholed'} {seconds:g} s",
        "accepted": len(answers.accepted),
        "not_terminal_60s_after_recovery": late,
        "never_terminal": never,
        "statuses": dict(statuses),
        "answers": dict(answers.statuses),
        "error_codes": dict(answers.codes),
        "bad_answers": answers.bad[:20],
        "gave_up": answers.gave_up,
        "readyz_slowest_s": readyz_slowest,
        "recovery_s": recovery,
        "outcomes_left_in_redis": outcomes_pending(stack),
    }


def redis_restart(
    stack: Stack, *, down: float, rate: float, job_seconds: float, lead: float = 3.0
) -> dict[str, Any]:
    restarts_before = dict(stack.restarts)
    submitter = Submitter(stack, rate, job_seconds).start()
    time.sleep(lead)
    stack.redis.stop()
    time.sleep(down)
    stack.redis.start()
    time.sleep(lead)
    answers = submitter.finish()
    # A worker restarted after the fault gets back the messages it held after the visibility timeout.
    _took, statuses = wait_terminal(stack, answers.accepted, 120.0)
    lost = sum(n for s, n in statuses.items() if s not in TERMINAL)
    return {
        "scenario": f"Redis down {down:g} s and restarted",
        "role_restarts": {k: v - restarts_before.get(k, 0) for k, v in stack.restarts.items()},
        "accepted": len(answers.accepted),
        "lost": lost,
        "statuses": dict(statuses),
        "answers": dict(answers.statuses),
        "error_codes": dict(answers.codes),
        "bad_answers": answers.bad[:20],
        "gave_up": answers.gave_up,
    }


def jobs_running(stack: Stack, ids: list[str]) -> int:
    return job_statuses(stack, ids).get("running", 0) if ids else 0


def redis_restarts(
    stack: Stack, *, times: int, down: float, rate: float, job_seconds: float, timeout: float = 30.0
) -> dict[str, Any]:
    """Redis stopped ``times`` times for ``down`` s while jobs run, each time with attempts in flight
    (acknowledgements pending): the worker process must ride through every restart (the same process,
    not a restarted one) and every accepted job must end. Waits are deadlines on observed state."""
    name = "worker"
    worker = stack.group.procs[name]
    restarts_before = dict(stack.restarts)
    submitter = Submitter(stack, rate, job_seconds).start()
    in_flight = []
    try:
        for _ in range(times):
            deadline = time.monotonic() + timeout
            while True:
                with submitter.answers.lock:
                    accepted = list(submitter.answers.accepted)
                running = jobs_running(stack, accepted)
                if running or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            in_flight.append(running)
            stack.redis.stop()
            time.sleep(down)
            stack.redis.start()
    finally:
        answers = submitter.finish()
    _took, statuses = wait_terminal(stack, answers.accepted, 120.0)
    return {
        "scenario": f"Redis down {down:g} s, {times} times, with attempts running",
        "worker_same_process": stack.group.procs.get(name) is worker and worker.poll() is None,
        "worker_exit_code": worker.poll(),
        "role_restarts": {k: v - restarts_before.get(k, 0) for k, v in stack.restarts.items()},
        "running_at_each_stop": in_flight,
        "accepted": len(answers.accepted),
        "not_terminal": sum(n for s, n in statuses.items() if s not in TERMINAL),
        "statuses": dict(statuses),
        "error_codes": dict(answers.codes),
        "bad_answers": answers.bad[:20],
        "gave_up": answers.gave_up,
    }


# Run in a process of its own with the stack's settings: submits one job through the jobs service and
# dies (os._exit, like a SIGKILL: no cleanup, no compensation) right after the commit, before the enqueue.
_DIE_AFTER_COMMIT = textwrap.dedent(
    """
    import os, sys
    import tenantq.worker  # task types and assembly, like every entry point
    from tenantq.core.db import unscoped_session
    from tenantq.platform.jobs import service
    from tenantq.platform.jobs.schemas import JobCreate
    from tenantq.tenants.accounts.models import Tenant

    def die(job, **_):
        print(job.id, flush=True)
        os._exit(9)

    service.enqueue = die
    with unscoped_session() as session:
        tenant = session.get(Tenant, sys.argv[1])
        data = JobCreate(task="demo.echo", idempotency_key="outbox-" + sys.argv[2])
        service.submit_job(session, tenant, data)
    """
)


def commit_without_enqueue(stack: Stack) -> dict[str, Any]:
    tenant_id, _key = stack.keys[0]
    proc = subprocess.run(
        [sys.executable, "-c", _DIE_AFTER_COMMIT, tenant_id, uuid.uuid4().hex],
        env={**stack.group.env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    died_at = time.monotonic()
    job_id = proc.stdout.strip()
    if proc.returncode != 9 or not job_id:
        raise RuntimeError(
            f"the submitting process did not die after its commit: {proc.returncode} {proc.stderr}"
        )
    took, statuses = wait_terminal(stack, [job_id], 120.0)
    return {
        "scenario": "submitter killed between commit and enqueue",
        "job": job_id,
        "seconds_to_terminal": round(time.monotonic() - died_at, 1) if took is not None else None,
        "statuses": dict(statuses),
    }


def start_stack(
    database_url: str, *, redis_port: int | None = None, tenants: int = 4, concurrency: int = 8
) -> Stack:
    # A role that dies is restarted (and counted: no role should need it); a worker's messages would
    # come back after the visibility timeout, short here as in bench.chaos.
    env = {"TENANTQ_VISIBILITY_TIMEOUT_SECONDS": "30"}
    stack = Stack(
        database_url=database_url, redis_port=redis_port, db_proxy=True, tenants=tenants, extra_env=env
    )
    try:
        stack.prepare()
        stack.start_api()
        stack.start_dispatcher()
        stack.start_worker(concurrency=concurrency)
        stack.start_flusher()
        from tests.conftest import wait_until

        wait_until(lambda: "ready" in stack.group.log("worker"), timeout=90, message="the worker to be ready")
        stack.supervise()
    except BaseException:
        stack.close()
        raise
    return stack


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| scenario | result |", "|---|---|"]
    for r in results:
        parts = [f"{k}: {v}" for k, v in r.items() if k != "scenario"]
        lines.append(f"| {r['scenario']} | {'; '.join(parts)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("TENANTQ_DATABASE_URL"))
    parser.add_argument("--redis-port", type=int, default=None)
    parser.add_argument("--rate", type=float, default=5.0, help="submissions per second")
    parser.add_argument("--job-seconds", type=float, default=1.0)
    parser.add_argument("--outage", type=float, default=30.0, help="seconds the database is unreachable")
    parser.add_argument("--blackhole", type=float, default=20.0, help="seconds the database is stalled")
    parser.add_argument("--redis-down", type=float, default=5.0)
    parser.add_argument(
        "--redis-restarts", type=int, default=5, help="Redis restarts (2 s each) with attempts running"
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="worker pool processes (keep rate x job-seconds below)"
    )
    opts = parser.parse_args(argv)
    if not (opts.database_url or "").startswith("postgresql"):
        parser.error("--database-url (or TENANTQ_DATABASE_URL) must name a PostgreSQL server")
    stack = start_stack(opts.database_url, redis_port=opts.redis_port, concurrency=opts.concurrency)
    print(f"faults: logs in {stack.work}")
    results = []
    try:
        results.append(commit_without_enqueue(stack))
        print(results[-1])
        for mode, seconds in (("cut", opts.outage), ("blackhole", opts.blackhole)):
            results.append(
                database_fault(
                    stack, mode=mode, seconds=seconds, rate=opts.rate, job_seconds=opts.job_seconds
                )
            )
            print(results[-1])
        results.append(
            redis_restart(stack, down=opts.redis_down, rate=opts.rate, job_seconds=opts.job_seconds)
        )
        print(results[-1])
        results.append(
            redis_restarts(
                stack, times=opts.redis_restarts, down=2.0, rate=opts.rate, job_seconds=opts.job_seconds
            )
        )
        print(results[-1])
    finally:
        stack.close()
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    meta = {"at": stamp, "cpus": os.cpu_count(), "options": vars(opts) | {"database_url": "postgresql"}}
    (RESULTS / f"faults-{stamp}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
