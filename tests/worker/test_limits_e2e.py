"""Limits and failover with real processes: Celery workers and two dispatchers on a private Redis.

The module runs its own cluster (so it can kill processes without hurting other tests): one worker,
two `tenantq dispatcher` processes (one leader, one standby), short lease and leader TTLs.
"""

from __future__ import annotations

import signal
import sys
import time

import pytest
import redis as redis_lib
from celery import Celery
from sqlalchemy import select

from tenantq.core.db import session_factory
from tenantq.platform.dispatch.dispatcher import LEADER_KEY
from tenantq.platform.dispatch.repository import TenantQueues, lease_key
from tenantq.platform.jobs.models import Job, JobAttempt
from tenantq.platform.jobs.schemas import JobCreate
from tenantq.platform.jobs.service import submit_job
from tests.brokers import ON_RABBITMQ, broker_url, private_broker
from tests.conftest import ProcessGroup, RedisServer, start_worker, wait_until
from tests.factories import TenantFactory

pytestmark = pytest.mark.e2e

LEASE_TTL = 3


@pytest.fixture(scope="module")
def cluster(platform_env, tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("limits-redis"))
    server.start()
    env = {
        **platform_env,
        "TENANTQ_REDIS_URL": server.url,
        **private_broker("limits"),
        "TENANTQ_LEASE_TTL_SECONDS": str(LEASE_TTL),
        "TENANTQ_LEADER_TTL_SECONDS": "2",
        "TENANTQ_INFLIGHT_DEADLINE_SECONDS": "5",
        "TENANTQ_LIMITS_REFRESH_SECONDS": "1",
    }
    group = ProcessGroup(env, tmp_path_factory.mktemp("limits-logs"))
    client = redis_lib.Redis(port=server.port, decode_responses=True)
    try:
        start_worker(group, "worker1", concurrency=4)
        for name in ("dispatcher1", "dispatcher2"):
            group.start(name, [sys.executable, "-m", "tenantq.cli", "dispatcher"])
        ping_workers(broker_url(env), 1)
        wait_until(lambda: client.get(LEADER_KEY), timeout=60, message="a dispatcher leader")
        yield group, broker_url(env), client
    finally:
        group.stop_all()
        client.close()
        server.stop()


def private_app(url: str) -> Celery:
    """A Celery client for the private Redis, with tenantq's transport options (the key separator
    must match, or kombu's binding table gets entries the workers cannot parse)."""
    from tenantq.core.celery import app

    client = Celery(broker=url)
    client.conf.update(broker_transport_options=app.conf.broker_transport_options, task_serializer="json")
    return client


def ping_workers(url: str, count: int, timeout: float = 120.0) -> None:
    probe = private_app(url)
    try:
        wait_until(
            lambda: len(probe.control.ping(timeout=0.5) or []) >= count,
            timeout=timeout,
            message=f"{count} worker(s) on the private Redis",
        )
    finally:
        probe.close()


def submit(session, client, tenant, n, task="demo.echo", args=None, priority=5) -> list[str]:
    return [
        submit_job(
            session, tenant, JobCreate(task=task, args=args or {}, priority=priority), client=client
        ).job.id
        for _ in range(n)
    ]


def jobs(ids: list[str]) -> list[Job]:
    with session_factory()() as session:
        return list(session.scalars(select(Job).where(Job.id.in_(ids))))


def wait_done(ids: list[str], timeout: float = 90.0) -> list[Job]:
    def done():
        rows = jobs(ids)
        return (
            rows if len(rows) == len(ids) and all(j.status in ("succeeded", "failed") for j in rows) else None
        )

    return wait_until(done, timeout=timeout, interval=0.2, message=f"{len(ids)} jobs to finish")


def max_overlap(rows: list[Job] | list[JobAttempt]) -> int:
    events = sorted(
        [(j.started_at, 1) for j in rows] + [(j.finished_at, -1) for j in rows], key=lambda e: (e[0], e[1])
    )
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


class TestLimitsWithRealWorkers:
    def test_concurrency_cap_never_exceeded(self, cluster, db_session):
        _, _, client = cluster
        tenant = TenantFactory(overrides={"concurrency": 2, "exec_rate": 1_000_000})
        ids = submit(db_session, client, tenant, 8, task="demo.sleep", args={"seconds": 0.4})
        rows = wait_done(ids)
        assert all(j.status == "succeeded" and j.attempts == 1 for j in rows)
        assert max_overlap(rows) == 2  # the worker had 4 free processes: the cap, not capacity, held it at 2
        # Every slot released on postrun: in its last Redis round trip, just after the status is
        # committed (what wait_done saw), so wait for it rather than race it.
        wait_until(lambda: client.zcard(lease_key(tenant.id)) == 0, timeout=30, message="the leases released")

    def test_new_tenant_is_served_without_restart(self, cluster, db_session):
        _, _, client = cluster
        tenant = TenantFactory()  # created after workers and dispatchers started
        rows = wait_done(submit(db_session, client, tenant, 2))
        assert [j.status for j in rows] == ["succeeded", "succeeded"]

    def test_duplicate_publish_runs_once(self, cluster, db_session):
        group, broker, client = cluster
        tenant = TenantFactory(overrides={"concurrency": 5})
        TenantQueues(client).pause(tenant.id, "operator_pause")  # keep the dispatcher away from it
        (job_id,) = submit(db_session, client, tenant, 1, task="demo.sleep", args={"seconds": 0.3})
        message = TenantQueues(client).pop(tenant.id, 1)[0]
        sender = private_app(broker)
        try:
            for token in (
                "dup-1",
                "dup-2",
            ):  # two releases of the same attempt, as after a reconciler re-queue
                job = {**message["job"], "dispatch": token}
                sender.send_task(
                    message["task"],
                    kwargs={"job": job, "args": message["args"]},
                    task_id=job_id,
                    queue="tq.exec",
                )
        finally:
            sender.close()
        (row,) = wait_done([job_id])
        wait_until(
            lambda: "duplicate skipped" in group.log("worker1"), timeout=60, message="the duplicate skip"
        )
        (row,) = jobs([job_id])
        assert row.status == "succeeded" and row.attempts == 1
        assert client.get(f"tq:started:{job_id}:1") in ("dup-1", "dup-2")
        assert client.zcard(lease_key(tenant.id)) == 0

    def test_dedicated_pool_takes_the_tenants_jobs(self, cluster, db_session):
        group, broker, client = cluster
        tenant = TenantFactory()
        group.start(
            "pool",
            [sys.executable, "-m", "tenantq.cli", "worker", "--tenant", tenant.name, "--concurrency", "1"],
        )
        wait_until(lambda: client.hget("tq:route", tenant.id), timeout=60, message="the pool's route")
        ping_workers(broker, 2)
        ids = submit(db_session, client, tenant, 3)  # submitted exactly as any other tenant does
        other = submit(db_session, client, TenantFactory(), 1)
        rows = {j.id: j for j in wait_done(ids + other)}
        assert all(j.status == "succeeded" for j in rows.values())
        # `tenantq worker` names itself tenantq-<pid>@host; the shared worker here is worker1-...@host.
        assert all(rows[i].worker.startswith("tenantq-") for i in ids)
        assert rows[other[0]].worker.startswith("worker1-")
        assert client.hget("tq:route", tenant.id) == f"tq.exec.t.{tenant.id}"
        group.kill("pool", signal.SIGTERM)

    def test_dispatcher_failover_loses_and_duplicates_nothing(self, cluster, db_session):
        group, _, client = cluster
        tenant = TenantFactory(overrides={"concurrency": 4, "exec_rate": 1_000_000})
        ids = submit(db_session, client, tenant, 40, task="demo.sleep", args={"seconds": 0.05})
        wait_until(lambda: sum(j.status == "succeeded" for j in jobs(ids)) >= 5, timeout=60, message="5 done")
        leader = client.get(LEADER_KEY)
        pid = int(leader.split(":")[1])
        name = next(n for n, p in group.procs.items() if p.pid == pid)
        group.kill(name, signal.SIGKILL)
        wait_until(lambda: client.get(LEADER_KEY) not in (None, leader), timeout=30, message="a new leader")
        rows = wait_done(ids, timeout=120)
        assert all(j.status == "succeeded" for j in rows)
        assert [j.attempts for j in rows] == [1] * 40  # each ran exactly once

    def test_slots_of_a_sigkilled_worker_are_reclaimed(self, cluster, db_session):
        """On Redis the killed attempts' messages wait out the visibility timeout: their slots come back
        after the lease TTL and other jobs take them. On RabbitMQ the killed attempts come back at once
        and run again on the replacement worker, within the cap like the others."""
        group, broker, client = cluster
        tenant = TenantFactory(overrides={"concurrency": 2, "exec_rate": 1_000_000})
        seconds = 5 if ON_RABBITMQ else 120
        stuck = submit(db_session, client, tenant, 2, task="demo.sleep", args={"seconds": seconds})
        wait_until(
            lambda: all(j.status == "running" for j in jobs(stuck)), timeout=60, message="both running"
        )
        assert client.zcard(lease_key(tenant.id)) == 2
        group.kill("worker1", signal.SIGKILL)  # the whole worker: no postrun will ever fire for them
        start_worker(group, "worker2", concurrency=2)
        ping_workers(broker, 1)
        after = submit(db_session, client, tenant, 2)
        rows = wait_done(after, timeout=90)
        assert all(j.status == "succeeded" for j in rows)
        if ON_RABBITMQ:
            again = wait_done(stuck, timeout=90)
            assert [j.status for j in again] == ["succeeded", "succeeded"]
            assert all(j.worker.startswith("worker2-") for j in again)
            # Never more than the cap, whichever ran first (a redelivery finding the cap taken by the
            # later jobs goes back to the head of the tenant queue). Counted over the attempts that ran
            # on the replacement worker: a killed attempt is recorded lost and its job runs its next
            # attempt, so a job's own started_at is the killed attempt's.
            with session_factory()() as session:
                ran = session.scalars(
                    select(JobAttempt).where(
                        JobAttempt.job_id.in_(stuck + [j.id for j in rows]), JobAttempt.status == "succeeded"
                    )
                ).all()
            assert len(ran) == 4
            assert max_overlap(list(ran)) <= 2
        wait_until(
            lambda: client.zcount(lease_key(tenant.id), time.time(), "+inf") == 0,
            timeout=30,
            message="no live lease left",
        )
