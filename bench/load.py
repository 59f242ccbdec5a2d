"""API under load: N concurrent clients for S seconds against one API process.

    PYTHONPATH=$PWD python -m bench.load                                  # 200 clients x 60 s, SQLite
    PYTHONPATH=$PWD python -m bench.load --clients 10 --seconds 20
    PYTHONPATH=$PWD python -m bench.load --database-url postgresql+psycopg://tenantq_ci:tenantq_ci@127.0.0.1:5432/postgres

Starts a private stack (``bench.stack``: its own Redis, a fresh database, ``tenantq api`` with
``--api-workers`` uvicorn processes, plus a dispatcher and a worker unless ``--no-workers``), creates
20 enterprise tenants, and runs the issue's mix: 70% GET a job, 20% POST ``demo.echo`` (with an
idempotency key), 10% list jobs. Each client waits for its answer (``--client-timeout``, 30 s like a
typical client) and, on a 503, sleeps the ``Retry-After`` it was given before its next request, as a
well-behaved client does. Prints req/s, p50/p99 per operation (as the clients saw them, and as the
API's request log measured them), status counts, timeouts, and how long the API took to answer a GET
promptly (< 1 s) again after the load stopped; writes ``bench/results/load-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import time
import uuid
from collections import Counter, defaultdict
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


class Load:
    def __init__(self, base: str, keys: list[tuple[str, str]], timeout: float, backoff: bool) -> None:
        self.base = base
        self.keys = keys
        self.timeout = timeout
        self.backoff = backoff
        self.job_ids: dict[str, list[str]] = defaultdict(list)
        self.latency: dict[str, list[float]] = defaultdict(list)  # op -> seconds of 2xx answers
        self.all_latency: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.codes: Counter[str] = Counter()  # error codes of non-2xx answers
        self.timeouts = 0
        self.errors = 0  # connection errors other than timeouts
        self.text_5xx = 0  # 5xx answers that are not JSON in the error shape

    async def seed(self, client: httpx.AsyncClient, per_tenant: int = 5) -> None:
        for tenant_id, key in self.keys:
            for _ in range(per_tenant):
                headers = {"Authorization": f"Bearer {key}"}
                resp = await client.post(f"{self.base}/v1/jobs", json={"task": "demo.echo"}, headers=headers)
                resp.raise_for_status()
                self.job_ids[tenant_id].append(resp.json()["id"])

    async def one(self, client: httpx.AsyncClient, rng: random.Random) -> float:
        """One request; returns how long to pause before the next (Retry-After on a 503)."""
        tenant_id, key = rng.choice(self.keys)
        headers = {"Authorization": f"Bearer {key}"}
        op = rng.choices([m[0] for m in MIX], [m[1] for m in MIX])[0]
        started = time.perf_counter()
        try:
            if op == "get":
                job_id = rng.choice(self.job_ids[tenant_id])
                resp = await client.get(f"{self.base}/v1/jobs/{job_id}", headers=headers)
            elif op == "submit":
                body = {"task": "demo.echo", "args": {"n": 1}, "idempotency_key": uuid.uuid4().hex}
                resp = await client.post(f"{self.base}/v1/jobs", json=body, headers=headers)
            else:
                resp = await client.get(f"{self.base}/v1/jobs?limit=20", headers=headers)
        except httpx.TimeoutException:
            self.timeouts += 1
            return 0.0
        except httpx.HTTPError:
            self.errors += 1
            return 0.5
        took = time.perf_counter() - started
        self.statuses[str(resp.status_code)] += 1
        self.all_latency.append(took)
        if resp.is_success:
            self.latency[op].append(took)
            if op == "submit":
                self.job_ids[tenant_id].append(resp.json()["id"])
            return 0.0
        try:
            self.codes[f"{resp.status_code} {resp.json()['error']['code']}"] += 1
        except (ValueError, KeyError, TypeError):
            self.codes[f"{resp.status_code} (not the error shape)"] += 1
            if resp.status_code >= 500:
                self.text_5xx += 1
        if resp.status_code == 503 and self.backoff:
            return float(resp.headers.get("Retry-After", "1"))
        return 0.0

    async def client_loop(self, client: httpx.AsyncClient, until: float, seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < until:
            pause = await self.one(client, rng)
            if pause:
                await asyncio.sleep(min(pause, max(0.0, until - time.monotonic())))

    async def run(self, clients: int, seconds: float) -> dict[str, Any]:
        limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
        async with httpx.AsyncClient(timeout=self.timeout, limits=limits) as client:
            await self.seed(client)
            started = time.monotonic()
            until = started + seconds
            await asyncio.gather(*(self.client_loop(client, until, i) for i in range(clients)))
            elapsed = time.monotonic() - started
            recovery = await self.recovery(client)
        answered = sum(self.statuses.values())
        return {
            "clients": clients,
            "seconds": round(elapsed, 1),
            "requests_per_s": round(answered / elapsed, 1),
            "ok_per_s": round(sum(len(v) for v in self.latency.values()) / elapsed, 1),
            "statuses": dict(self.statuses),
            "error_codes": dict(self.codes),
            "timeouts": self.timeouts,
            "connection_errors": self.errors,
            "text_5xx": self.text_5xx,
            "p50_ms": {op: _ms(pct(v, 0.5)) for op, v in sorted(self.latency.items())},
            "p99_ms": {op: _ms(pct(v, 0.99)) for op, v in sorted(self.latency.items())},
            "p99_all_answers_ms": _ms(pct(self.all_latency, 0.99)),
            "mean_ms": _ms(statistics.fmean(self.all_latency)) if self.all_latency else None,
            "recovery_s": recovery,
        }

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


def table(r: dict[str, Any]) -> str:
    rows = [
        ("clients x seconds", f"{r['clients']} x {r['seconds']}"),
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
        ("recovery after load", f"{r['recovery_s']} s"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--client-timeout", type=float, default=30.0)
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
        load = Load(stack.api_url, stack.keys, opts.client_timeout, backoff=not opts.no_backoff)
        print(f"load: {opts.clients} clients x {opts.seconds:g} s, {stack.api_url}; logs in {stack.work}")
        result = asyncio.run(load.run(opts.clients, opts.seconds))
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
