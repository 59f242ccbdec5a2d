"""The compose topology without containers: every role its own process, scaled-out workers.

2 workers + 1 API (uvicorn, real HTTP) + beat + dispatcher, each started the way ``infra/compose.yaml``
starts it (``python -m tenantq.cli <role>``), against one private Redis and the session database.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest
from sqlalchemy import select

from tenantq.platform.jobs.models import Job
from tests.brokers import private_broker
from tests.conftest import ProcessGroup, RedisServer, free_port, wait_until
from tests.factories import ApiKeyFactory, auth
from tests.ops.helpers import parse, value

pytestmark = pytest.mark.e2e

JOBS_PER_TENANT = 20


@pytest.fixture
def topology(platform_env, tmp_path):
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    server = RedisServer(redis_dir)
    server.start()
    port = free_port()
    env = {
        **platform_env,
        # Its own Redis: the session's worker and dispatcher (if running) never see these jobs.
        "TENANTQ_REDIS_URL": server.url,
        **private_broker("topology"),
        "TENANTQ_DATA_DIR": str(tmp_path / "data"),
        # One metrics directory for the API and both workers, as on one host.
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
        "TENANTQ_LOG_JSON": "1",
    }
    (tmp_path / "data").mkdir()
    (tmp_path / "prometheus").mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    group = ProcessGroup(env, logs)
    py = [sys.executable, "-m", "tenantq.cli"]
    group.start("api", [*py, "api", "--host", "127.0.0.1", "--port", str(port)])
    group.start("dispatcher", [*py, "dispatcher"])
    group.start("beat", [*py, "beat"])
    group.start("worker1", [*py, "worker", "--concurrency", "1", "--hostname", "worker1@%h"])
    # The second sizes its pool with the load (Celery's autoscaler), as documented for operators.
    group.start("worker2", [*py, "worker", "--autoscale", "2,1", "--hostname", "worker2@%h"])
    try:
        yield group, f"http://127.0.0.1:{port}"
    finally:
        group.stop_all()
        server.stop()


def stop_cleanly(group: ProcessGroup, name: str) -> int:
    """SIGTERM the role's process group and require it to exit by itself."""
    proc = group.procs[name]
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name} did not stop within 60s of SIGTERM:\n{group.log(name)[-3000:]}")


class TestComposeTopology:
    def test_two_workers_share_the_load_and_everything_stops_cleanly(self, topology, db_session):
        group, base = topology
        client = httpx.Client(base_url=base, timeout=30)

        def scrape():
            try:
                r = client.get("/metrics")
            except httpx.HTTPError:
                return None
            return parse(r.text) if r.status_code == 200 else None

        # Ready when the API answers and both workers have sent a heartbeat.
        wait_until(
            lambda: (
                (s := scrape())
                and value(s, "tenantq_workers") == 2
                and value(s, "tenantq_dispatcher_up") == 1
            ),
            timeout=120,
            interval=0.5,
            message="API, dispatcher and 2 workers to be up",
        )
        assert client.get("/readyz").status_code == 200

        keys = [ApiKeyFactory(), ApiKeyFactory()]
        ids: list[str] = []
        for _ in range(JOBS_PER_TENANT):
            for key in keys:
                r = client.post(
                    "/v1/jobs",
                    json={"task": "demo.sleep", "args": {"seconds": 0.1}, "priority": 5},
                    headers=auth(key),
                )
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])

        def all_done():
            db_session.expire_all()
            rows = db_session.scalars(select(Job).where(Job.id.in_(ids))).all()
            return rows if all(j.status in ("succeeded", "failed", "cancelled") for j in rows) else None

        rows = wait_until(all_done, timeout=180, interval=0.5, message=f"{len(ids)} jobs to finish")
        assert len(rows) == 2 * JOBS_PER_TENANT
        assert {j.status for j in rows} == {"succeeded"}
        by_worker: dict[str, int] = {}
        for j in rows:
            by_worker[j.worker] = by_worker.get(j.worker, 0) + 1
        assert len(by_worker) == 2, f"expected both workers to run jobs, got {by_worker}"
        assert {w.split("@")[0] for w in by_worker} == {"worker1", "worker2"}
        assert all(n > 0 for n in by_worker.values())

        # Metrics from both workers' pool children and the API, aggregated in one scrape.
        def counted():
            s = scrape()
            ok = s and all(
                value(s, "tenantq_jobs_succeeded_total", tenant=k.tenant.id) == JOBS_PER_TENANT for k in keys
            )
            return s if ok else None

        s = wait_until(counted, timeout=30, interval=0.3, message="per-tenant succeeded counts")
        for key in keys:
            assert value(s, "tenantq_jobs_submitted_total", tenant=key.tenant.id) == JOBS_PER_TENANT
            assert value(s, "tenantq_jobs_started_total", tenant=key.tenant.id) == JOBS_PER_TENANT

        # Clean shutdown, role by role, the way an orchestrator stops them: no kill needed.
        # uvicorn finishes its graceful shutdown, then re-raises SIGTERM so its exit status says why it
        # stopped; the others exit 0. Each logs that it finished.
        marks = {
            "api": "Finished server process",
            "beat": "beat: Starting",
            "dispatcher": "dispatcher stopped",
            "worker1": "Warm shutdown",
            "worker2": "Warm shutdown",
        }
        for name, mark in marks.items():
            rc = stop_cleanly(group, name)
            allowed = (0, -signal.SIGTERM) if name == "api" else (0,)
            assert rc in allowed and mark in group.log(name), f"{name} exit {rc}:\n{group.log(name)[-3000:]}"
        # A worker leaving on SIGTERM deregisters its heartbeat.
        import redis as redis_lib

        r = redis_lib.Redis.from_url(group.env["TENANTQ_REDIS_URL"])
        assert r.zcard("tq:workers") == 0
