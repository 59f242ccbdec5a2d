"""Metering overhead: no-op (`demo.echo`) throughput with usage metering on vs off, same run.

    PYTHONPATH=$PWD python bench/metering.py [--jobs 400] [--rounds 6] [--concurrency 2] [--out FILE]
                                             [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

Starts its own redis-server (127.0.0.1, free port) and a SQLite database in a temporary directory (or,
with --postgres, a fresh database on that server, dropped at the end). For
each phase it creates N job rows, publishes their messages to the execution queue, then starts a
Celery worker (prefork) with ``TENANTQ_METERING=1`` or ``0`` and measures throughput from the first
attempt's start to the last attempt's end as recorded in SQL by the worker's own status signals, and
the CPU time of the worker's process tree per job (``getrusage(RUSAGE_CHILDREN)`` around the worker's
life, minus the CPU of an idle worker's boot and stop): on a shared machine the CPU figure is the
stable one, throughput swings with everybody else's load. Phases
follow a discarded warm-up in ABBA order (on, off, off, on, ...) so drift on a shared machine hits both
sides alike. It also times the hot path alone in-process (the metering steps of prerun + postrun against
the same Redis: microseconds per attempt), which is the stable figure on a noisy machine. A usage
flusher (``tenantq billing flush``) runs throughout, as under ``tenantq up``; at the end the bench
checks that every metered attempt produced its 4 usage events and unmetered ones none.

Prints a table and one JSON object (also written to --out when given).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def children_cpu() -> float:
    """CPU seconds of every reaped descendant (a stopped worker and the pool processes it reaped)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_hot_path(n: int) -> float:
    """Median microseconds the metering steps add to one attempt (open + close)."""

    from tenantq.billing.usage import metering
    from tenantq.platform.jobs.messages import JobMessage

    samples = []
    for _ in range(n):
        message = JobMessage.from_job("demo.echo", {"id": str(uuid.uuid4()), "tenant_id": "bench-hot-path"})
        t0 = time.perf_counter()
        usage = metering.open_attempt(message, worker="bench@host", time_limit=3600)
        if usage is not None:
            metering.close_attempt(usage, "SUCCESS", ran=True, retried=False)
        samples.append(time.perf_counter() - t0)
    return round(statistics.median(samples) * 1e6, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=400, help="jobs per phase")
    parser.add_argument(
        "--rounds",
        type=int,
        default=6,
        help="on/off pairs (many short pairs beat few long ones on a shared machine)",
    )
    parser.add_argument("--concurrency", type=int, default=2, help="worker pool processes")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON result here")
    parser.add_argument(
        "--postgres", default=None, help="PostgreSQL server URL: bench in a fresh database there"
    )
    opts = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tq-bench-metering-"))
    port = free_port()
    database_url = f"sqlite:///{tmp / 'bench.db'}"
    drop_database = None
    if opts.postgres:
        import uuid

        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        name = f"tq_bench_{uuid.uuid4().hex[:10]}"
        # Created from the server's maintenance database: the database named in the URL need not exist.
        admin = create_engine(make_url(opts.postgres).set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        database_url = make_url(opts.postgres).set(database=name).render_as_string(hide_password=False)

        def drop_database() -> None:
            from tenantq.core.db import dispose_engine

            dispose_engine()
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()

    env = {
        **os.environ,
        "TENANTQ_DATABASE_URL": database_url,
        "TENANTQ_REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "TENANTQ_SECRET_KEY": "bench-" + uuid.uuid4().hex,
        "TENANTQ_DATA_DIR": str(tmp),
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
    }
    os.environ.update(env)

    from tenantq.ops.supervisor import redis_server_binary

    redis_proc = start(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
        ],
        env,
        tmp / "redis.log",
    )
    procs: list[subprocess.Popen] = []
    try:
        import redis as redis_lib

        client = redis_lib.Redis(port=port)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except redis_lib.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

        from sqlalchemy import func, select

        from tenantq.billing.usage.models import UsageEvent
        from tenantq.core.db import unscoped_session
        from tenantq.ops.migrate import upgrade
        from tenantq.platform.dispatch.dispatcher import publish
        from tenantq.platform.jobs.models import Job
        from tenantq.platform.jobs.service import job_message
        from tenantq.tenants.accounts.service import create_tenant

        upgrade(env["TENANTQ_DATABASE_URL"])
        flusher = start([sys.executable, "-m", "tenantq.cli", "billing", "flush"], env, tmp / "flusher.log")
        procs.append(flusher)

        def start_worker(name: str, metering: bool) -> subprocess.Popen:
            return start(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "tenantq.worker",
                    "worker",
                    "--loglevel=WARNING",
                    f"--concurrency={opts.concurrency}",
                    "--queues=tq.exec",
                    "--without-mingle",
                    "--without-gossip",
                    f"--hostname=bench-{name}@%h",
                ],
                {**env, "TENANTQ_METERING": "1" if metering else "0"},
                tmp / f"worker-{name}.log",
            )

        # CPU time is the figure a loaded machine disturbs least: the worker tree's CPU per job, minus
        # what a worker spends booting and stopping with nothing to do (measured here).
        from tenantq.core.celery import app as celery_app

        boot_samples = []
        for i in range(2):
            cpu0 = children_cpu()
            idle = start_worker(f"idle-{i}", True)
            deadline = time.monotonic() + 120
            while not celery_app.control.ping(
                destination=[f"bench-idle-{i}@{socket.gethostname()}"], timeout=0.5
            ):
                if time.monotonic() > deadline or idle.poll() is not None:
                    raise RuntimeError(f"idle worker did not answer (see {tmp})")
            stop(idle)
            boot_samples.append(children_cpu() - cpu0)
        boot_cpu = statistics.median(boot_samples)

        results: list[dict] = []
        # A discarded warm-up phase first (imports, SQLite file growth), then ABBA order (on, off, off,
        # on, ...) so a trend in the machine's load hits both sides alike.
        phases: list[bool | None] = [None]
        for r in range(opts.rounds):
            phases += [True, False] if r % 2 == 0 else [False, True]
        for index, mode in enumerate(phases):
            metering = mode is not False
            label = "warmup" if mode is None else "on" if metering else "off"
            count = min(opts.jobs, 200) if mode is None else opts.jobs
            with unscoped_session() as session:
                tenant = create_tenant(session, name=f"bench-{index}-{label}", plan="enterprise")
                jobs = [
                    Job(tenant_id=tenant.id, task="demo.echo", args={"i": i}, status="queued")
                    for i in range(count)
                ]
                session.add_all(jobs)
                session.flush()
                messages = [job_message(j) for j in jobs]
                tenant_id = tenant.id
            for message in messages:
                publish(message, "tq.exec")
            cpu0 = children_cpu()
            worker = start_worker(str(index), metering)
            procs.append(worker)
            deadline = time.monotonic() + max(600, opts.jobs)
            while True:
                with unscoped_session() as session:
                    done, first, last = session.execute(
                        select(func.count(), func.min(Job.started_at), func.max(Job.finished_at)).where(
                            Job.tenant_id == tenant_id, Job.status == "succeeded"
                        )
                    ).one()
                if done >= count:
                    break
                if time.monotonic() > deadline or worker.poll() is not None:
                    raise RuntimeError(f"phase {index} stalled at {done}/{count} (see {tmp})")
                time.sleep(0.25)
            stop(worker)
            procs.remove(worker)
            cpu_ms = (children_cpu() - cpu0 - boot_cpu) * 1000 / count
            seconds = (last - first).total_seconds()
            results.append(
                {
                    "phase": index,
                    "metering": label,
                    "tenant_id": tenant_id,
                    "jobs": count,
                    "seconds": round(seconds, 3),
                    "jobs_per_s": round(count / seconds, 1),
                    "worker_cpu_ms_per_job": round(cpu_ms, 3),
                }
            )
            print(
                f"phase {index}: metering {label:>6}  {count} jobs in {seconds:7.2f}s  "
                f"{count / seconds:8.1f} jobs/s  worker CPU {cpu_ms:6.2f} ms/job",
                flush=True,
            )

        # Correctness: every metered attempt recorded, nothing for unmetered ones.
        deadline = time.monotonic() + 120
        expected = {r["tenant_id"]: (0 if r["metering"] == "off" else 4 * r["jobs"]) for r in results}
        while True:
            with unscoped_session() as session:
                counts = dict(
                    session.execute(
                        select(UsageEvent.tenant_id, func.count())
                        .where(UsageEvent.tenant_id.in_(list(expected)))
                        .group_by(UsageEvent.tenant_id)
                    ).all()
                )
            if all(counts.get(t, 0) == n for t, n in expected.items()) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        usage_ok = all(counts.get(t, 0) == n for t, n in expected.items())
        cpu0 = children_cpu()
        stop(flusher)
        procs.remove(flusher)
        metered_jobs = sum(r["jobs"] for r in results if r["metering"] != "off")
        flusher_cpu_ms = (children_cpu() - cpu0) * 1000 / metered_jobs

        hot_path_us = time_hot_path(2000)
        measured = [r for r in results if r["metering"] != "warmup"]
        # Each round's on/off pair ran back to back, under about the same load: compare within pairs.
        pair_ratios = []
        for i in range(0, len(measured) - 1, 2):
            a, b = measured[i], measured[i + 1]
            on_r, off_r = (a, b) if a["metering"] == "on" else (b, a)
            pair_ratios.append(round(on_r["jobs_per_s"] / off_r["jobs_per_s"], 3))
        on = [r["jobs_per_s"] for r in results if r["metering"] == "on"]
        off = [r["jobs_per_s"] for r in results if r["metering"] == "off"]
        cpu_on = statistics.median(r["worker_cpu_ms_per_job"] for r in results if r["metering"] == "on")
        cpu_off = statistics.median(r["worker_cpu_ms_per_job"] for r in results if r["metering"] == "off")
        summary = {
            "benchmark": "metering_overhead",
            "task": "demo.echo",
            "jobs_per_phase": opts.jobs,
            "concurrency": opts.concurrency,
            "database": "postgresql" if opts.postgres else "sqlite",
            "phases": [{k: v for k, v in r.items() if k != "tenant_id"} for r in results],
            "on_jobs_per_s_median": statistics.median(on),
            "off_jobs_per_s_median": statistics.median(off),
            "on_vs_off": round(statistics.median(on) / statistics.median(off), 3),
            "pair_ratios_on_over_off": pair_ratios,
            "pair_ratio_median": statistics.median(pair_ratios),
            "hot_path_us_per_attempt": hot_path_us,
            "worker_boot_cpu_s": round(boot_cpu, 3),
            "worker_cpu_ms_per_job_on": round(cpu_on, 3),
            "worker_cpu_ms_per_job_off": round(cpu_off, 3),
            "worker_cpu_on_over_off": round(cpu_on / cpu_off, 3),
            "flusher_cpu_ms_per_metered_job": round(flusher_cpu_ms, 3),
            "usage_events_complete": usage_ok,
        }
        print()
        print(f"{'metering':<10}{'runs (jobs/s)':<30}{'median':>10}")
        print(f"{'on':<10}{', '.join(f'{x:.1f}' for x in on):<30}{summary['on_jobs_per_s_median']:>10.1f}")
        print(f"{'off':<10}{', '.join(f'{x:.1f}' for x in off):<30}{summary['off_jobs_per_s_median']:>10.1f}")
        print(
            f"on/off ratio of medians: {summary['on_vs_off']:.3f}   per-pair on/off ratios: "
            f"{', '.join(f'{x:.2f}' for x in pair_ratios)} (median {summary['pair_ratio_median']:.3f})"
        )
        print(
            f"worker CPU per job (median, boot excluded): on {cpu_on:.2f} ms, off {cpu_off:.2f} ms "
            f"(on/off {cpu_on / cpu_off:.3f}); flusher CPU {flusher_cpu_ms:.2f} ms per metered job"
        )
        print(f"usage events complete: {usage_ok}")
        print(f"hot path (metering steps of prerun + postrun, in-process): {hot_path_us:.0f} us per attempt")
        print(json.dumps(summary))
        if opts.out:
            opts.out.write_text(json.dumps(summary, indent=2) + "\n")
        return 0 if usage_ok else 1
    finally:
        for proc in procs:
            stop(proc)
        stop(redis_proc)
        if drop_database is not None:
            drop_database()


if __name__ == "__main__":
    sys.exit(main())
