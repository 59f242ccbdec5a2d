"""API under load: N concurrent clients for S seconds against one API process.

    PYTHONPATH=$PWD python -m bench.load                                  # 200 clients x 60 s, SQLite
    PYTHONPATH=$PWD python -m bench.load --clients 10 --seconds 20
    PYTHONPATH=$PWD python -m bench.load --shared-pool --processes 1                  # the old driver
    PYTHONPATH=$PWD python -m bench.load --database-url postgresql+psycopg://tenantq_ci:tenantq_ci@127.0.0.1:5432/postgres

Starts a private stack (``bench.stack``: its own Redis, a fresh database, ``tenantq api`` with
``--api-workers`` uvicorn processes, plus a dispatcher and a worker unless ``--no-workers``), creates
20 enterprise tenants, and runs the issue's mix: 70% GET a job, 20% POST ``demo.echo`` (with an
idempotency key), 10% list jobs. Each client has its own connection (keep-alive), waits for its answer
(``--client-timeout``, 30 s like a typical client) and, on a 503, sleeps the ``Retry-After`` it was
given before its next request, as a well-behaved client does. The clients are spread over
``--processes`` driver processes (one per 25 clients by default), so that no one event loop holds
requests back before they are sent. Prints req/s, p50/p99 per operation (as the clients saw them, and
as the API's request log measured them), how long the drivers held requests before their first byte
went out, the drivers' and the API's CPU, the load average, status counts, timeouts, and how long the
API took to answer a GET promptly (< 1 s) again after the load stopped; writes
``bench/results/load-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import random
import re
import ssl
import statistics
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.stack import Stack

RESULTS = Path(__file__).resolve().parent / "results"
MIX = (("get", 0.7), ("submit", 0.2), ("list", 0.1))


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _percentiles(values: list[float]) -> dict[str, float | None]:
    return {"p50": _ms(pct(values, 0.5)), "p99": _ms(pct(values, 0.99))}


class Tally:
    """What one driver process saw. Plain lists and counters, so it pickles back to the parent."""

    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)  # op -> seconds of 2xx answers
        # op -> seconds from the client's call to its request's first byte written to the socket: the
        # driver's own queueing (its connection pool, its event loop), which the server never sees.
        self.before_send: dict[str, list[float]] = defaultdict(list)
        self.all_latency: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.codes: Counter[str] = Counter()  # error codes of non-2xx answers
        self.timeouts = 0
        self.errors = 0  # connection errors other than timeouts
        self.text_5xx = 0  # 5xx answers that are not JSON in the error shape
        self.loop_lag: list[float] = []  # how late a 50 ms timer of the driver's event loop fired
        self.cpu_seconds = 0.0

    def merge(self, other: Tally) -> None:
        for op, values in other.latency.items():
            self.latency[op].extend(values)
        for op, values in other.before_send.items():
            self.before_send[op].extend(values)
        self.all_latency.extend(other.all_latency)
        self.statuses.update(other.statuses)
        self.codes.update(other.codes)
        self.timeouts += other.timeouts
        self.errors += other.errors
        self.text_5xx += other.text_5xx
        self.loop_lag.extend(other.loop_lag)
        self.cpu_seconds += other.cpu_seconds


class Load:
    """The clients of one driver process. Each client has its own ``httpx.AsyncClient`` and so its own
    keep-alive connection, as independent clients have: 200 clients sharing one client's pool measured
    the pool, not the API (its bookkeeping is quadratic in the connections: 5-26 s before a request's
    first byte was written, while the API answered in 40-650 ms)."""

    def __init__(
        self,
        base: str,
        keys: list[tuple[str, str]],
        timeout: float,
        backoff: bool,
        job_ids: dict[str, list[str]] | None = None,
    ) -> None:
        self.base = base
        self.keys = keys
        self.timeout = timeout
        self.backoff = backoff
        self.job_ids: dict[str, list[str]] = defaultdict(list, job_ids or {})
        self.tally = Tally()
        # One TLS context for every client (the API is plain HTTP; httpx builds a context per client,
        # which takes 20-150 ms of CPU, otherwise).
        self.ssl = ssl.create_default_context()

    def client(self, connections: int = 1) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return httpx.AsyncClient(timeout=self.timeout, limits=limits, verify=self.ssl)

    async def seed(self, client: httpx.AsyncClient, per_tenant: int = 5) -> None:
        for tenant_id, key in self.keys:
            for _ in range(per_tenant):
                headers = {"Authorization": f"Bearer {key}"}
                resp = await client.post(f"{self.base}/v1/jobs", json={"task": "demo.echo"}, headers=headers)
                resp.raise_for_status()
                self.job_ids[tenant_id].append(resp.json()["id"])

    async def one(self, client: httpx.AsyncClient, rng: random.Random) -> float:
        """One request; returns how long to pause before the next (Retry-After on a 503)."""
        tally = self.tally
        tenant_id, key = rng.choice(self.keys)
        headers = {"Authorization": f"Bearer {key}"}
        op = rng.choices([m[0] for m in MIX], [m[1] for m in MIX])[0]
        sent: list[float] = []

        async def trace(event: str, _info: Any) -> None:
            if event == "http11.send_request_headers.started":
                sent.append(time.perf_counter())

        ext = {"trace": trace}
        started = time.perf_counter()
        try:
            if op == "get":
                job_id = rng.choice(self.job_ids[tenant_id])
                resp = await client.get(f"{self.base}/v1/jobs/{job_id}", headers=headers, extensions=ext)
            elif op == "submit":
                body = {"task": "demo.echo", "args": {"n": 1}, "idempotency_key": uuid.uuid4().hex}
                resp = await client.post(f"{self.base}/v1/jobs", json=body, headers=headers, extensions=ext)
            else:
                resp = await client.get(f"{self.base}/v1/jobs?limit=20", headers=headers, extensions=ext)
        except httpx.TimeoutException:
            tally.timeouts += 1
            return 0.0
        except httpx.HTTPError:
            tally.errors += 1
            return 0.5
        took = time.perf_counter() - started
        tally.statuses[str(resp.status_code)] += 1
        tally.all_latency.append(took)
        if resp.is_success:
            tally.latency[op].append(took)
            if sent:
                tally.before_send[op].append(sent[0] - started)
            if op == "submit":
                self.job_ids[tenant_id].append(resp.json()["id"])
            return 0.0
        try:
            tally.codes[f"{resp.status_code} {resp.json()['error']['code']}"] += 1
        except (ValueError, KeyError, TypeError):
            tally.codes[f"{resp.status_code} (not the error shape)"] += 1
            if resp.status_code >= 500:
                tally.text_5xx += 1
        if resp.status_code == 503 and self.backoff:
            return float(resp.headers.get("Retry-After", "1"))
        return 0.0

    async def client_loop(self, until: float, seed: int, shared: httpx.AsyncClient | None) -> None:
        rng = random.Random(seed)
        async with contextlib.AsyncExitStack() as stack:
            client = shared if shared is not None else await stack.enter_async_context(self.client())
            while time.monotonic() < until:
                pause = await self.one(client, rng)
                if pause:
                    await asyncio.sleep(min(pause, max(0.0, until - time.monotonic())))

    async def watch_loop(self, until: float) -> None:
        while time.monotonic() < until:
            t0 = time.perf_counter()
            await asyncio.sleep(0.05)
            self.tally.loop_lag.append(time.perf_counter() - t0 - 0.05)

    async def drive(self, seeds: list[int], start_at: float, seconds: float, shared_pool: bool) -> Tally:
        """Run one client per seed from the wall-clock time ``start_at`` for ``seconds``."""
        async with contextlib.AsyncExitStack() as stack:
            shared = None
            if shared_pool:
                shared = await stack.enter_async_context(self.client(len(seeds) + 10))
            await asyncio.sleep(max(0.0, start_at - time.time()))
            # Every process stops at the same wall-clock time, also one that started late.
            until = time.monotonic() + max(0.0, start_at + seconds - time.time())
            cpu = time.process_time()
            loops = (self.client_loop(until, seed, shared) for seed in seeds)
            await asyncio.gather(self.watch_loop(until), *loops)
            self.tally.cpu_seconds = time.process_time() - cpu
        return self.tally

    async def recovery(self, client: httpx.AsyncClient) -> float | None:
        """Seconds after the load until a GET is answered 200 in under a second."""
        tenant_id, key = self.keys[0]
        started = time.monotonic()
        while time.monotonic() - started < 300:
            t0 = time.perf_counter()
            try:
                url = f"{self.base}/v1/jobs/{self.job_ids[tenant_id][0]}"
                resp = await client.get(url, headers={"Authorization": f"Bearer {key}"})
                if resp.status_code == 200 and time.perf_counter() - t0 < 1.0:
                    return round(time.monotonic() - started, 2)
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
        return None


def drive_process(args: dict[str, Any]) -> Tally:
    """One driver process (run in a child): its share of the clients."""
    load = Load(args["base"], args["keys"], args["timeout"], args["backoff"], args["job_ids"])
    return asyncio.run(load.drive(args["seeds"], args["start_at"], args["seconds"], args["shared_pool"]))


def run_load(
    base: str,
    keys: list[tuple[str, str]],
    *,
    clients: int,
    seconds: float,
    processes: int,
    timeout: float,
    backoff: bool,
    shared_pool: bool = False,
    api_pid: int | None = None,
) -> dict[str, Any]:
    """Seed jobs, spread ``clients`` over ``processes`` driver processes, run them, merge what they saw."""
    seeder = Load(base, keys, timeout, backoff)

    async def seed() -> None:
        async with seeder.client() as client:
            await seeder.seed(client)

    asyncio.run(seed())
    processes = max(1, min(processes, clients))
    # Every process is started (interpreter, imports) before the clock starts.
    start_at = time.time() + 3.0 + 0.5 * processes
    shares = [list(range(clients))[i::processes] for i in range(processes)]
    jobs = [
        {
            "base": base, "keys": keys, "timeout": timeout, "backoff": backoff,
            "job_ids": dict(seeder.job_ids), "seeds": share, "start_at": start_at, "seconds": seconds,
            "shared_pool": shared_pool,
        }
        for share in shares
    ]  # fmt: skip
    tally = Tally()
    api_cpu, api_t0 = _proc_cpu(api_pid), time.time()
    with ProcessPoolExecutor(max_workers=processes, mp_context=mp.get_context("spawn")) as pool:
        for part in pool.map(drive_process, jobs):
            tally.merge(part)
    elapsed = seconds
    api_cpu_share = None
    after = _proc_cpu(api_pid)
    if api_cpu is not None and after is not None:  # of the whole run, the drivers' start-up included
        api_cpu_share = round((after - api_cpu) / (time.time() - api_t0), 2)

    async def recover() -> float | None:
        async with seeder.client() as client:
            return await seeder.recovery(client)

    recovery = asyncio.run(recover())
    answered = sum(tally.statuses.values())
    return {
        "clients": clients,
        "driver_processes": processes,
        "seconds": round(elapsed, 1),
        "requests_per_s": round(answered / elapsed, 1),
        "ok_per_s": round(sum(len(v) for v in tally.latency.values()) / elapsed, 1),
        "statuses": dict(tally.statuses),
        "error_codes": dict(tally.codes),
        "timeouts": tally.timeouts,
        "connection_errors": tally.errors,
        "text_5xx": tally.text_5xx,
        "p50_ms": {op: _ms(pct(v, 0.5)) for op, v in sorted(tally.latency.items())},
        "p99_ms": {op: _ms(pct(v, 0.99)) for op, v in sorted(tally.latency.items())},
        "p99_all_answers_ms": _ms(pct(tally.all_latency, 0.99)),
        "mean_ms": _ms(statistics.fmean(tally.all_latency)) if tally.all_latency else None,
        "before_send_ms": {op: _percentiles(v) for op, v in sorted(tally.before_send.items())},
        "driver_loop_lag_ms": _percentiles(tally.loop_lag),
        "driver_cpu_share": round(tally.cpu_seconds / elapsed, 2),
        "api_cpu_share": api_cpu_share,
        "recovery_s": recovery,
    }


def _loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _proc_cpu(pid: int | None) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc), None elsewhere."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_LOG_LINE = re.compile(r"duration_ms=([0-9.]+) method=(\S+) path=\S+ route=(\S+) status=(\d+)")


def server_side(api_log: str) -> dict[str, Any]:
    """p50/p99 as the API measured them (its request log: from the first middleware to the answer),
    without the client's own queueing: on a loaded machine the two differ a lot."""
    by_op: dict[str, list[float]] = defaultdict(list)
    every: list[float] = []
    for match in _LOG_LINE.finditer(api_log):
        ms, method, route, status = float(match[1]), match[2], match[3], int(match[4])
        every.append(ms / 1000)
        if 200 <= status < 300:
            op = "submit" if method == "POST" else ("get" if route.endswith("{job_id}") else "list")
            by_op[op].append(ms / 1000)
    return {
        "server_p50_ms": {op: _ms(pct(v, 0.5)) for op, v in sorted(by_op.items())},
        "server_p99_ms": {op: _ms(pct(v, 0.99)) for op, v in sorted(by_op.items())},
        "server_p99_all_answers_ms": _ms(pct(every, 0.99)),
    }


def _ms(value: float | None) -> float | None:
    return round(value * 1000, 1) if value is not None else None


def _pair(p: dict[str, float | None]) -> str:
    return f"{p['p50']} / {p['p99']}"


def _pairs(by_op: dict[str, dict[str, float | None]]) -> str:
    return ", ".join(f"{op} {_pair(p)}" for op, p in by_op.items())


def table(r: dict[str, Any]) -> str:
    rows = [
        ("clients x seconds", f"{r['clients']} x {r['seconds']} ({r['driver_processes']} driver processes)"),
        ("answers/s (2xx/s)", f"{r['requests_per_s']} ({r['ok_per_s']})"),
        ("statuses", ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))),
        ("error codes", ", ".join(f"{k}: {v}" for k, v in sorted(r["error_codes"].items())) or "-"),
        ("client timeouts", str(r["timeouts"])),
        ("5xx not JSON", str(r["text_5xx"])),
        ("p50 ms (2xx)", ", ".join(f"{k} {v}" for k, v in r["p50_ms"].items())),
        ("p99 ms (2xx)", ", ".join(f"{k} {v}" for k, v in r["p99_ms"].items())),
        ("p99 ms (every answer)", str(r["p99_all_answers_ms"])),
        ("server p50 ms (2xx)", ", ".join(f"{k} {v}" for k, v in r.get("server_p50_ms", {}).items())),
        ("server p99 ms (2xx)", ", ".join(f"{k} {v}" for k, v in r.get("server_p99_ms", {}).items())),
        ("server p99 ms (every answer)", str(r.get("server_p99_all_answers_ms"))),
        ("before the first byte, p50/p99 ms", _pairs(r["before_send_ms"])),
        ("driver loop lag p50/p99 ms", _pair(r["driver_loop_lag_ms"])),
        ("CPU share: driver, API", f"{r['driver_cpu_share']}, {r['api_cpu_share']}"),
        ("load average before, after", f"{r['loadavg_before']}, {r['loadavg_after']}"),
        ("recovery after load", f"{r['recovery_s']} s"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--client-timeout", type=float, default=30.0)
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        help="driver processes the clients are spread over (default: one per 25 clients)",
    )
    parser.add_argument(
        "--shared-pool",
        action="store_true",
        help="the clients of a driver process share one connection pool (the old driver; it measures "
        "httpx's pool more than the API)",
    )
    parser.add_argument("--api-workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--database-url", default=os.environ.get("TENANTQ_DATABASE_URL"))
    parser.add_argument("--redis-port", type=int, default=None)
    parser.add_argument("--no-workers", action="store_true", help="no dispatcher or worker: jobs only queue")
    parser.add_argument("--no-backoff", action="store_true", help="clients ignore Retry-After")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="extra setting for the roles"
    )
    opts = parser.parse_args(argv)
    extra = dict(item.split("=", 1) for item in opts.env)
    stack = Stack(database_url=opts.database_url, redis_port=opts.redis_port, extra_env=extra)
    try:
        stack.prepare()
        stack.start_api(workers=opts.api_workers)
        if not opts.no_workers:
            stack.start_dispatcher()
            stack.start_worker(concurrency=2)
        processes = opts.processes or max(1, -(-opts.clients // 25))
        print(
            f"load: {opts.clients} clients x {opts.seconds:g} s from {processes} driver processes, "
            f"{stack.api_url}; logs in {stack.work}"
        )
        loadavg_before = _loadavg()
        result = run_load(
            stack.api_url,
            stack.keys,
            clients=opts.clients,
            seconds=opts.seconds,
            processes=processes,
            timeout=opts.client_timeout,
            backoff=not opts.no_backoff,
            shared_pool=opts.shared_pool,
            api_pid=stack.group.procs["api"].pid if opts.api_workers == 1 else None,
        )
        result["loadavg_before"] = loadavg_before
        result["loadavg_after"] = _loadavg()
        result.update(server_side(stack.group.log("api")))
    finally:
        stack.close()
    result["database"] = "postgresql" if stack.db_url.startswith("postgresql") else "sqlite"
    result["api_workers"] = opts.api_workers
    result["cpus"] = os.cpu_count()
    result["settings"] = extra
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"load-{stamp}.json").write_text(json.dumps(result, indent=2))
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
