"""Open waits: how many ``GET /v1/jobs/{id}?wait=60`` one API process holds, and what they cost.

    python -m bench.open_waits                    # 1000, 5000 and 10000 open waits, SQLite
    python -m bench.open_waits -n 2000 --sse      # event streams (GET /v1/jobs/{id}/events) instead
    python -m bench.open_waits --pg postgresql+psycopg://tenantq_ci@127.0.0.1:5432/postgres

One ``tenantq api`` process (one uvicorn worker) on a private Redis and database. A paused tenant has
N queued jobs; the bench opens N requests that wait on them (each on its own TCP connection, raw
HTTP/1.1 from one asyncio loop, so the client costs little), ramping up in chunks. With all N open it
measures the API process's resident memory (against its memory before), the latency of
``GET /v1/jobs/{id}`` (no wait) and ``/healthz`` answered beside them, and the database connections
the API holds (PostgreSQL only: ``pg_stat_activity``). Then it purges the tenant's queue (every job
cancelled, one event each) and times how long until every wait has its answer.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.run import Bench, free_port, pct, wait_until

ADMIN_TOKEN = "bench-admin-token-0123456789abcdef0123"


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def api_pid(port: int) -> int:
    import psutil

    for conn in psutil.net_connections("tcp"):
        if conn.status == "LISTEN" and conn.laddr.port == port and conn.pid:
            return conn.pid
    raise RuntimeError("the API process was not found")


def setup(b: Bench, n: int) -> tuple[str, str, list[str]]:
    import tenantq.worker  # noqa: F401  (task types and assembly, like every entry point)
    from tenantq.core.db import unscoped_session
    from tenantq.tenants.access.service import create_api_key
    from tenantq.tenants.accounts.models import Tenant

    (tenant_id,) = b.tenants(1, "waits")
    b.pause([tenant_id])
    with unscoped_session() as session:
        _, key = create_api_key(session, tenant=session.get(Tenant, tenant_id), name="bench")
    b.submit(tenant_id, [{"task": "demo.echo", "args": {"i": i}} for i in range(n)])
    with unscoped_session() as session:
        from sqlalchemy import select

        from tenantq.platform.jobs.models import Job

        ids = list(session.scalars(select(Job.id).where(Job.tenant_id == tenant_id)))
    return tenant_id, key, ids


async def request(port: int, path: str, key: str) -> tuple[int, bytes]:
    """One raw HTTP/1.1 GET on its own connection; the status and the body (to the end of the stream)."""
    try:
        return await _request(port, path, key)
    except OSError:  # refused or reset: counted as a failed wait
        return 0, b""


async def _request(port: int, path: str, key: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    writer.write(head.encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data


async def timed(port: int, path: str, key: str) -> float:
    t0 = time.perf_counter()
    status, _ = await request(port, path, key)
    assert status == 200, status
    return (time.perf_counter() - t0) * 1000


def pg_connections(b: Bench) -> int | None:
    """Connections to the bench's database, with this process's own pool closed first: the API's."""
    if not b.db_name:
        return None
    from sqlalchemy import text

    from tenantq.core.db import dispose_engine

    dispose_engine()

    with b._admin.connect() as conn:
        count = conn.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()"),
            {"db": b.db_name},
        ).scalar_one()
    return int(count)


async def level(b: Bench, port: int, pid: int, n: int, sse: bool) -> dict[str, Any]:
    tenant_id, key, ids = setup(b, n)
    path = "/v1/jobs/{}/events" if sse else "/v1/jobs/{}?wait=60"
    idle = [await timed(port, f"/v1/jobs/{ids[0]}", key) for _ in range(20)]
    rss_before = rss_mb(pid)
    tasks: list[asyncio.Task[tuple[int, bytes]]] = []
    t0 = time.perf_counter()
    for i in range(0, n, 100):  # ramp up: the listen backlog is finite
        tasks.extend(asyncio.create_task(request(port, path.format(j), key)) for j in ids[i : i + 100])
        await asyncio.sleep(0.1)
    # Every request has been answered up to its wait once the API's memory stops growing and a probe
    # that queues behind them comes back; give the API time to take them all in.
    await asyncio.sleep(2)
    previous = -1.0
    while abs(rss_mb(pid) - previous) > 0.5:
        previous = rss_mb(pid)
        await asyncio.sleep(1)
    opened = time.perf_counter() - t0
    early = [t for t in tasks if t.done()]
    busy = [await timed(port, f"/v1/jobs/{ids[0]}", key) for _ in range(20)]
    health = [await timed(port, "/healthz", key) for _ in range(20)]
    rss_open = rss_mb(pid)
    db_conns = pg_connections(b)
    # Release: the operator's purge cancels every job; each waiter hears its job's event.
    from tenantq.core.db import unscoped_session
    from tenantq.platform.jobs.service import purge_queue
    from tenantq.tenants.accounts.models import Tenant

    t1 = time.perf_counter()
    with unscoped_session() as session:
        purge_queue(session, session.get(Tenant, tenant_id))
    results = await asyncio.gather(*tasks)
    released = time.perf_counter() - t1
    ok = sum(1 for status, body in results if status == 200 and b"cancelled" in body)
    if ok < n:
        odd = next(body for status, body in results if not (status == 200 and b"cancelled" in body))
        print(f"an answer other than the cancelled job: {odd[-600:]!r}", file=sys.stderr)
        from sqlalchemy import func, select

        from tenantq.platform.jobs.models import Job

        with unscoped_session() as session:
            print(
                session.execute(
                    select(Job.status, func.count()).where(Job.tenant_id == tenant_id).group_by(Job.status)
                ).all(),
                file=sys.stderr,
            )
    return {
        "open_waits": n,
        "kind": "events" if sse else "wait",
        "answered_before_release": len(early),
        "answered_cancelled": ok,
        "connection_failed": sum(1 for status, _ in results if status == 0),
        "ramp_s": round(opened, 1),
        "api_rss_mb_before": round(rss_before, 1),
        "api_rss_mb_open": round(rss_open, 1),
        "kb_per_wait": round((rss_open - rss_before) * 1024 / n, 1),
        "get_ms_p50_idle": pct(idle, 50),
        "get_ms_p50_open": pct(busy, 50),
        "get_ms_p95_open": pct(busy, 95),
        "healthz_ms_p50_open": pct(health, 50),
        "db_connections_open": db_conns,
        "release_all_s": round(released, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.open_waits", description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, action="append", help="open waits (repeat for several levels)")
    parser.add_argument("--sse", action="store_true", help="event streams instead of long-polls")
    parser.add_argument(
        "--pg",
        default=os.environ.get("TENANTQ_BENCH_PG", ""),
        help="PostgreSQL URL used to create (and drop) a private database; '' for SQLite",
    )
    args = parser.parse_args(argv)
    levels = args.n or [1000, 5000, 10000]
    workdir = Path(tempfile.mkdtemp(prefix="tq-bench-waits-"))
    b = Bench(args.pg or None, workdir)
    b.start()
    port = free_port()
    try:
        b.spawn(
            "api",
            [sys.executable, "-m", "tenantq.cli", "api", "--port", str(port)],
            {"TENANTQ_ADMIN_TOKEN": ADMIN_TOKEN, "TENANTQ_LOG_LEVEL": "WARNING"},
        )
        wait_until(lambda: _up(port), 60, what="the API to answer")
        pid = api_pid(port)
        load = os.getloadavg()
        rows = [asyncio.run(level(b, port, pid, n, args.sse)) for n in levels]
    finally:
        b.stop()
    print(f"database {b.database}; load average before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    for row in rows:
        print("  ".join(f"{k}={v}" for k, v in row.items()))
    return 0


def _up(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
