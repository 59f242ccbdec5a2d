"""Finished -> visible: how long after an attempt's end its job reads as finished in SQL (what
``GET /v1/jobs/{id}`` answers from), on an idle system.

    python -m bench.finish_visible            # 300 jobs, PostgreSQL if one answers, else SQLite
    python -m bench.finish_visible -n 100 --pg ''   # SQLite

One dispatcher and two worker instances x 2 prefork processes (``Bench.start_tenantq``). ``demo.echo``
jobs are submitted one at a time; each job's row is then read every millisecond until it shows
``succeeded``. The figure is that first read's time minus the job's ``finished_at``, which is the
worker's own finish time (stamped by the pool process when the task function returned, before its
end's Redis round trip). Both clocks are this machine's. The read loop itself adds up to ~1 ms.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

from bench.run import Bench, add_pg_option, pct, wait_until


def measure(b: Bench, n: int, gap: float) -> list[float]:
    from sqlalchemy import select

    import tenantq.worker  # noqa: F401  (task types and assembly, like every entry point)
    from tenantq.core.db import get_engine, unscoped_session
    from tenantq.platform.jobs.models import Job
    from tenantq.platform.jobs.schemas import JobCreate
    from tenantq.platform.jobs.service import submit_job
    from tenantq.tenants.accounts.models import Tenant

    (tenant,) = b.tenants(1, "visible")
    engine = get_engine()
    query = select(Job.status, Job.finished_at)
    lags = []
    for _ in range(n):
        with unscoped_session() as session:
            job_id = submit_job(session, session.get(Tenant, tenant), JobCreate(task="demo.echo")).job.id

        def finished(job_id: str = job_id) -> tuple[float, float] | None:
            with engine.connect() as conn:
                status, finished_at = conn.execute(query.where(Job.id == job_id)).one()
            seen = time.time()
            return (seen, finished_at.timestamp()) if status == "succeeded" else None

        seen, finished_at = wait_until(finished, 60, 0.001, "job finished")
        lags.append((seen - finished_at) * 1000)
        time.sleep(gap)
    return lags


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.finish_visible", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("-n", type=int, default=300, help="jobs, one at a time (default 300)")
    parser.add_argument("--gap", type=float, default=0.02, help="pause between jobs, seconds")
    add_pg_option(parser)
    args = parser.parse_args(argv)
    logging.getLogger("tenantq.tenants").setLevel(logging.ERROR)
    b = Bench(args.pg or None, Path(tempfile.mkdtemp(prefix="tq-bench-visible-")), dispatch_depth=None)
    b.start()
    load = os.getloadavg()
    try:
        b.start_tenantq()
        lags = measure(b, args.n, args.gap)
    finally:
        b.stop()
    print(
        f"database {b.database}; n={args.n}; "
        f"load average before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}"
    )
    print(
        "finished -> visible ms: "
        f"p50 {pct(lags, 50):.1f}  p99 {pct(lags, 99):.1f}  max {max(lags):.1f}  (target p99 <= 250)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
