"""Worker overhead: N no-op jobs through tenantq against bare Celery, same run, same worker settings.

    python -m bench.overhead                 # N=2000, PostgreSQL if one answers, else SQLite
    python -m bench.overhead -n 500 --profile  # also cProfile every tenantq pool process

tenantq: the jobs (``demo.echo``, spread over 10 tenants) are submitted while the tenants are paused,
then released at once; one dispatcher and two worker instances x 2 prefork processes run them. The
rate is jobs / (last finished_at - first started_at) from the job rows. Bare Celery: the same number of
``bare.noop`` tasks on one queue, two worker instances x 2 processes with the same Celery settings,
rate from the first to the last start recorded by the task body. This is DESIGN.md section 7.7's
figure (tenantq >= 80% of bare Celery).

With ``--profile`` the tenantq workers run under ``bench.profiled_worker``: each pool process writes a
cProfile dump when it exits, and the top functions by cumulative time are printed.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.run import Bench, add_pg_option, ts, wait_until


def run_tenantq(b: Bench, n: int, tenants: int, profile_dir: Path | None) -> float:
    from tenantq.core.celery import app

    module = "bench.profiled_worker" if profile_dir else "tenantq.worker"
    extra = {"TQ_BENCH_PROFILE_DIR": str(profile_dir)} if profile_dir else {}
    for name in ("tq-w1", "tq-w2"):
        b.spawn(
            name,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                module,
                "worker",
                "--loglevel=WARNING",
                "--concurrency=2",
                "--queues=tq.exec",
                "--without-mingle",
                "--without-gossip",
                f"--hostname={name}-{uuid.uuid4().hex[:4]}@%h",
            ],
            extra,
        )
    b.spawn("dispatcher", [sys.executable, "-m", "tenantq.cli", "dispatcher"])
    b.ping(app, 2)
    ids = b.tenants(tenants, "overhead")
    b.pause(ids)
    per = n // tenants
    for t in ids:
        b.submit(t, [{"task": "demo.echo", "args": {}}] * per)
    total = per * tenants
    b.resume(ids)
    wait_until(lambda: b.count_status(ids, ("succeeded",)) >= total, 900, 0.3, "tenantq jobs")
    rows = [r for r in b.rows(ids) if r[2] == "succeeded"]
    span = max(ts(r[6]) for r in rows) - min(ts(r[5]) for r in rows)
    for name in ("dispatcher", "tq-w1", "tq-w2"):
        b.kill(name, signal.SIGTERM)  # warm shutdown: pool processes exit and write their profiles
    return total / span


def run_bare(b: Bench, n: int) -> float:
    bare = b.bare_app()
    b.bare_r.delete("bench:start")
    for i in range(n):
        bare.noop.apply_async((f"n{i}",), queue="bare.shared")
    b.bare_worker("bare-w1", ["bare.shared"])
    b.bare_worker("bare-w2", ["bare.shared"])
    wait_until(lambda: b.bare_r.hlen("bench:start") >= n, 900, 0.3, "bare tasks")
    starts = sorted(float(v) for v in b.bare_r.hvals("bench:start"))
    b.kill("bare-w1", signal.SIGTERM)
    b.kill("bare-w2", signal.SIGTERM)
    return n / (starts[-1] - starts[0])


def print_profiles(profile_dir: Path, top: int) -> None:
    import pstats

    dumps = sorted(profile_dir.glob("*.prof"))
    if not dumps:
        print("no profiles written")
        return
    stats = pstats.Stats(*(str(p) for p in dumps))
    stats.sort_stats("cumulative").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="jobs per side (default 2000)")
    parser.add_argument("--tenants", type=int, default=10, help="tenants the tenantq jobs are spread over")
    add_pg_option(parser)
    parser.add_argument("--profile", action="store_true", help="cProfile the tenantq pool processes")
    parser.add_argument("--top", type=int, default=45, help="functions shown with --profile")
    args = parser.parse_args(argv)
    # bench.run's tenants use 0 overrides (the plan's own limits then apply: enterprise, 500 jobs/s and
    # 100 running per tenant, far above this run); do not log that once per job.
    logging.getLogger("tenantq.tenants").setLevel(logging.ERROR)
    workdir = Path(tempfile.mkdtemp(prefix="tq-bench-overhead-"))
    profile_dir = workdir / "profiles" if args.profile else None
    if profile_dir:
        profile_dir.mkdir()
    b = Bench(args.pg or None, workdir)
    b.start()
    load = os.getloadavg()
    try:
        tq = run_tenantq(b, args.n, args.tenants, profile_dir)
        bare = run_bare(b, args.n)
    finally:
        b.stop()
    print(
        f"database {b.database}; n={args.n}; "
        f"load average before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}"
    )
    print(f"tenantq     {tq:8.1f} jobs/s")
    print(f"bare Celery {bare:8.1f} jobs/s")
    print(f"ratio       {tq / bare:8.2f} (target >= 0.80)")
    if profile_dir:
        time.sleep(0.5)
        print_profiles(profile_dir, args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
