"""RabbitMQ's consumer timeout, fired for real on a node of the test's own.

RabbitMQ closes a consumer's channel when a delivery stays unacknowledged longer than its consumer
timeout, and puts the message back in the queue. tenantq acknowledges an attempt when it ends, so the
timeout must exceed the longest time limit (``CONSUMER_TIMEOUT_MS``; docs/operations.md). This test
shows what happens when it does not: a private node (the shared server's settings stay alone) with a
2 s timeout, checked every second, and a job that runs 8 s.

Runs in the RabbitMQ pass (TENANTQ_BROKER_URL=amqp://..., see tests/brokers.py).
"""

from __future__ import annotations

import sys

import pytest
import redis as redis_lib
from sqlalchemy import select

from tenantq.core.db import session_factory
from tenantq.platform.jobs.models import Job, JobAttempt
from tenantq.platform.jobs.schemas import JobCreate
from tenantq.platform.jobs.service import submit_job
from tests.brokers import ON_RABBITMQ, PrivateRabbit
from tests.conftest import ProcessGroup, RedisServer, start_worker, wait_until
from tests.factories import TenantFactory

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not ON_RABBITMQ, reason="RabbitMQ pass only (TENANTQ_BROKER_URL=amqp://...)"),
]

CONSUMER_TIMEOUT_MS = 2000
JOB_SECONDS = 8


@pytest.fixture(scope="module")
def short_timeout(platform_env, tmp_path_factory):
    node = PrivateRabbit(
        config=f"consumer_timeout = {CONSUMER_TIMEOUT_MS}",
        advanced="[{rabbit, [{channel_tick_interval, 500}]}].",
    )
    node.start()
    server = RedisServer(tmp_path_factory.mktemp("rabbit-redis"))
    server.start()
    env = {**platform_env, "TENANTQ_REDIS_URL": server.url, "TENANTQ_BROKER_URL": node.url}
    group = ProcessGroup(env, tmp_path_factory.mktemp("rabbit-logs"))
    client = redis_lib.Redis(port=server.port, decode_responses=True)
    try:
        start_worker(group, "worker", concurrency=2)
        group.start("dispatcher", [sys.executable, "-m", "tenantq.cli", "dispatcher"])
        yield group, client, node.url
    finally:
        group.stop_all()
        client.close()
        server.stop()
        node.stop()


def job_and_attempts(job_id: str) -> tuple[Job, list[JobAttempt]]:
    with session_factory()() as session:
        job = session.get(Job, job_id)
        attempts = list(session.scalars(select(JobAttempt).where(JobAttempt.job_id == job_id)))
        assert job is not None
        return job, attempts


def ready_messages(url: str, queue: str) -> int:
    from kombu import Connection

    with Connection(url) as conn:
        return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)


class TestConsumerTimeout:
    def test_firing_stops_the_worker_and_the_redelivered_attempt_is_not_run_twice(
        self, short_timeout, db_session
    ):
        """What a consumer timeout below the job's run time does: RabbitMQ closes the worker's channel
        (406 PRECONDITION_FAILED), which Celery treats as unrecoverable: the worker lets its running
        attempt finish and exits; the message is back in the queue. The next worker to take it finds
        the attempt finished and drops it: the job ran and is billed once. With a second worker
        consuming, though, the copy would start there while the first still ran: hence a consumer
        timeout above every time limit (docs/operations.md)."""
        group, client, broker = short_timeout
        tenant = TenantFactory(overrides={"concurrency": 10})
        job_id = submit_job(
            db_session,
            tenant,
            JobCreate(task="demo.sleep", args={"seconds": JOB_SECONDS}),
            client=client,
        ).job.id
        wait_until(
            lambda: job_and_attempts(job_id)[0].status == "succeeded",
            timeout=180,
            interval=0.25,
            message="the job to succeed",
        )
        wait_until(lambda: group.procs["worker"].poll() is not None, timeout=60, message="the worker to exit")
        log = group.log("worker")
        assert "PRECONDITION_FAILED - delivery acknowledgement on channel" in log
        # This machine's RabbitMQ predates per-queue consumer timeouts: the worker said so at start.
        assert "ignores per-queue consumer timeouts" in log
        # The unacknowledged delivery, requeued. A loaded machine may show more copies of it: a worker
        # that took the requeued delivery while the first one still ran sent it back for later (the
        # start guard's "busy" verdict), and the timeout fired on those too. Every copy is the same
        # attempt of a finished job, and below each is dropped, never run.
        assert ready_messages(broker, "tq.exec") >= 1

        start_worker(group, "worker2", concurrency=1)
        wait_until(lambda: ready_messages(broker, "tq.exec") == 0, timeout=120, message="worker2 to take it")
        wait_until(
            lambda: "not run: the job is finished" in group.log("worker2"),
            timeout=60,
            message="worker2 to drop the finished attempt",
        )
        job, attempts = job_and_attempts(job_id)
        assert (job.status, job.attempts) == ("succeeded", 1)
        assert [(a.attempt, a.status) for a in attempts] == [(1, "succeeded")]
        assert attempts[0].worker.startswith("worker-")  # not run again by worker2


class TestExecQueueDepth:
    def test_ready_messages_of_a_queue_and_zero_for_one_the_broker_does_not_know(self, redis_client):
        """What /metrics, GET /admin/v1/queues, the dashboard and the dispatcher's room read on RabbitMQ."""
        import uuid

        from tenantq.core.celery import amqp_queue_depth, app, exec_queue
        from tenantq.platform.dispatch.dispatcher import exec_queue_depth

        name = f"tq.exec.t.depth-{uuid.uuid4().hex[:8]}"
        queue = exec_queue(name)
        assert exec_queue_depth(redis_client, name) == 0  # not declared yet
        with app.connection_for_write() as conn:
            producer = conn.Producer()
            for i in range(3):
                producer.publish({"n": i}, exchange=queue.exchange, routing_key=name, declare=[queue])
            try:
                assert wait_until(lambda: exec_queue_depth(redis_client, name) == 3, timeout=30)
                # The reading connection went away (broker restart, idle close): the next read reopens it.
                amqp_queue_depth._conn.release()
                assert exec_queue_depth(redis_client, name) == 3
            finally:
                queue.bind(conn.default_channel).delete()
