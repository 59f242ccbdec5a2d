"""Metering: signals -> Redis stream -> flusher -> SQL, exactly once per attempt."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import replace
from types import SimpleNamespace

import pytest
import redis
from sqlalchemy import create_engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from tenantq.billing.usage import buffer, metering
from tenantq.billing.usage.buffer import Flusher, stream_backlog
from tenantq.billing.usage.metering import OPEN, STREAM, Meter
from tenantq.billing.usage.models import UsageEvent
from tenantq.core import keys
from tenantq.core.celery import app as celery_app
from tenantq.core.settings import reset_settings_cache
from tenantq.platform.dispatch import limits
from tenantq.platform.jobs.messages import JobMessage
from tenantq.platform.jobs.registry import NotStarted
from tenantq.worker import pipeline
from tests.billing.conftest import usage_of
from tests.conftest import ProcessGroup, start_worker, wait_for_workers, wait_until
from tests.factories import ApiKeyFactory, JobFactory, TenantFactory, auth


def fake_task(name: str = "demo.echo", hostname: str = "test-worker@host"):
    """What Celery hands the signal receivers: the task with its current request."""
    request = SimpleNamespace(hostname=hostname, timelimit=(None, None), id=None)
    return SimpleNamespace(name=name, request=request, app=celery_app)


def job_meta(tenant_id: str, **extra) -> dict:
    return {
        "id": str(uuid.uuid4()),
        "tenant_id": tenant_id,
        "priority": 5,
        "max_retries": 0,
        "attempt": 1,
        **extra,
    }


def msg(job: dict, task: str = "demo.echo", *, attempt: int | None = None) -> JobMessage:
    """The job's message as the worker reads it, optionally for another attempt number."""
    message = JobMessage.from_job(task, job, {})
    return message if attempt is None else replace(message, attempt=attempt)


def run_attempt(job: dict, *, attempt: int = 1, state: str = "SUCCESS", burn_ms: int = 0) -> None:
    """The metering steps of one attempt in this process, as the attempt pipeline runs them."""
    usage = metering.open_attempt(msg(job, attempt=attempt), worker="test-worker@host", time_limit=3600)
    deadline = time.process_time() + burn_ms / 1000
    while time.process_time() < deadline:
        pass
    if usage is not None:
        metering.close_attempt(usage, state, ran=True, retried=False)


def stream_entries_for(client, job_id: str) -> list[dict]:
    return [fields for _id, fields in client.xrange(STREAM) if job_id in fields.get("events", "")]


class TestAttemptNumbers:
    def test_redelivery_gets_the_next_attempt_number(self, redis_client):
        meter = Meter(redis_client)
        job = job_meta("t")
        first = meter.open(msg(job), worker="w", time_limit=60)
        # The same message delivered again after a crash claims attempt 1 again: it becomes attempt 2.
        again = meter.open(msg(job), worker="w", time_limit=60)
        # The next attempt's message (a retry) claims attempt 2: it becomes 3, never colliding.
        retry = meter.open(msg(job, attempt=2), worker="w", time_limit=60)
        assert (first.attempt, again.attempt, retry.attempt) == (1, 2, 3)

    def test_a_refused_delivery_gives_its_number_back(self, redis_client):
        # Deliveries the worker refuses (duplicate dispatch, replay of a finished attempt) are discarded;
        # the first attempt that really runs is still attempt 1, the one that bills the job.
        meter = Meter(redis_client)
        job = job_meta("t")
        for _ in range(3):
            meter.discard(meter.open(msg(job), worker="w", time_limit=60))
        assert meter.open(msg(job), worker="w", time_limit=60).attempt == 1

    def test_a_refused_delivery_after_an_unreported_attempt_keeps_its_number(self, redis_client):
        # Attempt 1's worker died without reporting; the replay of its message was refused. The number
        # stays taken, so attempt 1 counts as superseded and the reconciler closes it soon.
        meter = Meter(redis_client)
        job = job_meta("t")
        meter.open(msg(job), worker="w", time_limit=60)
        meter.discard(meter.open(msg(job), worker="w", time_limit=60))
        assert redis_client.hget(metering.attempt_key(job["id"]), "n") == "2"

    def test_discarding_an_older_attempt_keeps_the_newer_number(self, redis_client):
        meter = Meter(redis_client)
        job = job_meta("t")
        older = meter.open(msg(job), worker="w", time_limit=60)
        meter.open(msg(job), worker="w", time_limit=60)
        meter.discard(older)
        assert redis_client.hget(metering.attempt_key(job["id"]), "n") == "2"
        assert redis_client.hget(OPEN, f"{job['id']}:1") is None

    def test_delivery_refused_by_the_start_guard_opens_no_attempt(self, redis_client):
        job = job_meta("t", dispatch="first")
        assert limits.start_guard(msg(job), "other-task-id") == "ok"
        duplicate = {**job, "dispatch": "second"}  # another release of the same attempt
        task, kwargs = fake_task(), {"job": duplicate, "args": {}}
        pipeline.on_prerun(task_id=job["id"], task=task, kwargs=kwargs)
        assert task.request.tq_skip == "dup"
        assert redis_client.exists(metering.attempt_key(job["id"])) == 0
        pipeline.on_postrun(task_id=job["id"], state="IGNORED", retval=NotStarted())
        assert job["id"] not in pipeline.ATTEMPTS
        assert stream_entries_for(redis_client, job["id"]) == []

    def test_open_waits_out_a_redis_restart(self, redis_client, monkeypatch):
        """An attempt that starts while Redis restarts is still opened (and so billed) once Redis is back,
        and the wait is not counted as the tenant's wall time."""
        tenant = TenantFactory()
        job = job_meta(tenant.id)
        real_open = Meter.open
        failures = [redis.ConnectionError("refused: restarting")] * 2

        def flaky_open(self, *args, **kwargs):
            if failures:
                raise failures.pop()
            return real_open(self, *args, **kwargs)

        monkeypatch.setattr(Meter, "open", flaky_open)
        before = time.monotonic()
        usage = metering.open_attempt(msg(job), worker="test-worker@host", time_limit=3600)
        assert usage is not None and not failures
        assert usage.mono - before >= 0.7  # waited 0.25 s + 0.5 s for "Redis" ...
        metering.close_attempt(usage, "SUCCESS", ran=True, retried=False)
        (entry,) = stream_entries_for(redis_client, job["id"])
        wall = {e["metric"]: e["quantity"] for e in json.loads(entry["events"])}["wall_ms"]
        assert float(wall) < 500  # ... and bills only what ran after the open

    def test_explicit_attempt_in_the_message_is_used(self, redis_client):
        job = job_meta("t", attempt=4, first_attempt=3)
        assert Meter(redis_client).open(msg(job), worker="w", time_limit=60).attempt == 4


class TestSignalsToSql:
    def test_one_attempt_records_four_events(self, db_session, redis_client):
        tenant = TenantFactory()
        job = job_meta(tenant.id)
        run_attempt(job, burn_ms=30)
        assert redis_client.hget(OPEN, f"{job['id']}:1") is None
        Flusher(redis_client).drain()
        events = {e.metric: e for e in usage_of(db_session, job["id"])}
        assert sorted(events) == ["attempts", "compute_ms", "jobs", "wall_ms"]
        assert {e.id for e in events.values()} == {f"{job['id']}:1:{m}" for m in events}
        assert events["jobs"].quantity == 1 and events["attempts"].quantity == 1
        assert events["compute_ms"].quantity >= 25  # burnt 30 ms of CPU in this process
        assert events["wall_ms"].quantity >= events["compute_ms"].quantity - 5
        assert {e.state for e in events.values()} == {"succeeded"}
        assert events["jobs"].worker == "test-worker@host" and events["jobs"].task == "demo.echo"

    def test_duplicate_signals_and_replayed_entries_insert_nothing_new(self, db_session, redis_client):
        tenant = TenantFactory()
        job = job_meta(tenant.id, id=JobFactory(tenant=tenant, status="queued", attempts=0).id)
        task, kwargs = fake_task(), {"job": job, "args": {}}
        pipeline.on_prerun(task_id=job["id"], task=task, kwargs=kwargs)
        pipeline.on_prerun(task_id=job["id"], task=task, kwargs=kwargs)  # duplicate prerun: same attempt
        pipeline.on_postrun(task_id=job["id"], state="SUCCESS", retval=None)
        pipeline.on_postrun(task_id=job["id"], state="SUCCESS", retval=None)  # duplicate
        pipeline.on_failure(sender=task, task_id=job["id"], kwargs=kwargs)  # stray failure after the close
        entries = stream_entries_for(redis_client, job["id"])
        assert len(entries) == 1
        flusher = Flusher(redis_client)
        flusher.drain()
        first = [(e.id, e.quantity) for e in usage_of(db_session, job["id"])]
        assert len(first) == 4
        # Replay the exact stream entries (e.g. a restored backup), twice: the insert ignores them.
        for _ in range(2):
            for fields in entries:
                redis_client.xadd(STREAM, fields)
        flusher.drain()
        assert [(e.id, e.quantity) for e in usage_of(db_session, job["id"])] == first

    def test_retry_then_success_bills_both_attempts_and_one_job(self, db_session, redis_client):
        tenant = TenantFactory()
        job = job_meta(tenant.id, max_retries=1)
        run_attempt(job, attempt=1, state="RETRY")
        run_attempt(job, attempt=2, state="SUCCESS")
        Flusher(redis_client).drain()
        rows = [(e.attempt, e.metric, e.state) for e in usage_of(db_session, job["id"])]
        assert [r for r in rows if r[1] == "jobs"] == [(1, "jobs", "retried")]
        assert sorted((a, s) for a, m, s in rows if m == "attempts") == [(1, "retried"), (2, "succeeded")]

    def test_time_limit_failure_in_the_main_process_closes_once(self, db_session, redis_client):
        tenant = TenantFactory()
        job = job_meta(tenant.id)
        kwargs = {"job": job, "args": {}}
        # The pool child opened the attempt and was killed by the hard time limit: no postrun. The main
        # process sends task_failure twice (a known Celery behaviour); it has no local attempt.
        meter = Meter(redis_client)
        meter.open(msg(job, "demo.sleep"), worker="w@h", time_limit=1)
        pipeline.on_failure(sender=fake_task("demo.sleep"), task_id=job["id"], kwargs=kwargs)
        pipeline.on_failure(sender=fake_task("demo.sleep"), task_id=job["id"], kwargs=kwargs)
        assert len(stream_entries_for(redis_client, job["id"])) == 1
        Flusher(redis_client).drain()
        events = {e.metric: e for e in usage_of(db_session, job["id"])}
        assert events["attempts"].state == "failed" and events["compute_ms"].quantity == 0

    def test_revoke_terminate_bills_the_running_attempt_as_cancelled(self, db_session, redis_client):
        tenant = TenantFactory()
        job = job_meta(tenant.id)
        Meter(redis_client).open(msg(job, "demo.sleep"), worker="w@h", time_limit=60)
        request = SimpleNamespace(id=job["id"], kwargs={"job": job, "args": {}})
        pipeline.on_revoked(sender=fake_task("demo.sleep"), request=request, terminated=True)
        Flusher(redis_client).drain()
        assert {e.state for e in usage_of(db_session, job["id"])} == {"cancelled"}

    @pytest.mark.parametrize(
        ("cancelled", "ran_to_limit", "expected"),
        [(True, False, "cancelled"), (False, True, "failed"), (False, False, "terminated")],
    )
    def test_a_child_stopped_mid_task_says_why(
        self, db_session, redis_client, cancelled, ran_to_limit, expected
    ):
        """Issue 14 item 10: a running cancel and a hard time limit were billed as `terminated` (the pool
        child's postrun, which has no state, closes the attempt before the main process does)."""
        tenant = TenantFactory()
        job = job_meta(tenant.id)
        usage = metering.open_attempt(msg(job, "demo.sleep"), worker="w@h", time_limit=2)
        assert usage is not None
        if cancelled:
            redis_client.set(keys.cancel_key(job["id"]), 1)  # what cancelling a running job writes
        if ran_to_limit:  # it started 3 s ago under a 2 s limit
            usage.started -= 3
            usage.deadline -= 3
        metering.close_attempt(usage, None, ran=True, retried=False)
        # The main process's own close (task_revoked / task_failure) then finds it closed.
        pipeline.on_failure(
            sender=fake_task("demo.sleep"), task_id=job["id"], kwargs={"job": job, "args": {}}
        )
        Flusher(redis_client).drain()
        assert {e.state for e in usage_of(db_session, job["id"])} == {expected}

    def test_revoked_before_start_bills_nothing(self, db_session, redis_client):
        tenant = TenantFactory()
        job = job_meta(tenant.id)
        request = SimpleNamespace(id=job["id"], kwargs={"job": job, "args": {}})
        pipeline.on_revoked(sender=fake_task(), request=request, terminated=False)
        pipeline.on_revoked(sender=fake_task(), request=request, terminated=True)  # nothing was open
        assert stream_entries_for(redis_client, job["id"]) == []

    def test_metering_off_records_nothing(self, redis_client, monkeypatch):
        monkeypatch.setenv("TENANTQ_METERING", "0")
        reset_settings_cache()
        try:
            job = job_meta("t")
            run_attempt(job)
            assert stream_entries_for(redis_client, job["id"]) == []
            assert redis_client.hget(OPEN, f"{job['id']}:1") is None
        finally:
            monkeypatch.delenv("TENANTQ_METERING")
            reset_settings_cache()


class TestReconciler:
    def test_superseded_attempt_is_closed_as_lost_up_to_the_next_start(self, db_session, redis_client):
        tenant = TenantFactory()
        job = job_meta(tenant.id)
        meter = Meter(redis_client)
        t0 = time.time() - 100
        meter.open(msg(job, "demo.sleep"), worker="w1@h", time_limit=300, now=t0)
        meter.open(msg(job, "demo.sleep"), worker="w2@h", time_limit=300, now=t0 + 12.5)
        assert meter.reconcile() >= 1
        assert redis_client.hget(OPEN, f"{job['id']}:1") is None
        assert redis_client.hget(OPEN, f"{job['id']}:2") is not None  # the redelivery is still running
        Flusher(redis_client).drain()
        events = {e.metric: e for e in usage_of(db_session, job["id"])}
        assert events["attempts"].state == "lost" and events["attempts"].attempt == 1
        assert events["wall_ms"].quantity == 12_500 and events["compute_ms"].quantity == 0
        assert events["jobs"].quantity == 1

    def test_attempt_past_its_deadline_is_closed_as_lost(self, db_session, redis_client):
        tenant = TenantFactory()
        job = job_meta(tenant.id)
        meter = Meter(redis_client)
        t0 = time.time()
        meter.open(msg(job, "demo.sleep"), worker="w@h", time_limit=10, now=t0)
        meter.reconcile(now=t0 + 10 + metering.LOST_GRACE_S - 1)
        assert redis_client.hget(OPEN, f"{job['id']}:1") is not None  # not yet
        meter.reconcile(now=t0 + 10 + metering.LOST_GRACE_S + 1)
        assert redis_client.hget(OPEN, f"{job['id']}:1") is None
        Flusher(redis_client).drain()
        assert {e.state for e in usage_of(db_session, job["id"])} == {"lost"}


@contextmanager
def unreachable_database():
    engine = create_engine(
        "postgresql+psycopg://nobody@127.0.0.1:1/nothing", connect_args={"connect_timeout": 2}
    )
    session = sessionmaker(engine)()
    try:
        yield session
        session.commit()
    finally:
        session.close()
        engine.dispose()


class TestFlusherResilience:
    def test_database_down_keeps_usage_in_the_stream_until_it_is_back(
        self, db_session, redis_client, monkeypatch
    ):
        tenant = TenantFactory()
        job = job_meta(tenant.id)
        run_attempt(job)
        flusher = Flusher(redis_client, block_ms=0)
        monkeypatch.setattr(buffer, "unscoped_session", unreachable_database)
        for _ in range(2):
            with pytest.raises(SQLAlchemyError):
                flusher.flush_once()
        assert stream_backlog(redis_client)["pending"] >= 1
        assert stream_entries_for(redis_client, job["id"])  # still buffered
        assert usage_of(db_session, job["id"]) == []
        monkeypatch.undo()
        flusher.drain()
        assert len(usage_of(db_session, job["id"])) == 4
        assert stream_entries_for(redis_client, job["id"]) == []  # acknowledged and deleted
        flusher.drain()
        assert len(usage_of(db_session, job["id"])) == 4

    def test_entries_of_a_crashed_flusher_are_claimed_by_another(self, db_session, redis_client):
        tenant = TenantFactory()
        job = job_meta(tenant.id)
        run_attempt(job)
        crashed = Flusher(redis_client, consumer="crashed", block_ms=0)
        crashed._ensure_group()
        crashed._read()  # read (now pending for "crashed") and never written: the process died here
        assert usage_of(db_session, job["id"]) == []
        Flusher(redis_client, consumer="survivor", block_ms=0, claim_idle_ms=0).drain()
        assert len(usage_of(db_session, job["id"])) == 4

    def test_insert_reports_only_new_rows_so_quota_counters_add_them_once(self, db_session):
        tenant = TenantFactory()
        job = job_meta(tenant.id)
        rows = buffer.parse_entry(
            {
                "events": json.dumps(
                    metering.usage_events(
                        job_id=job["id"],
                        tenant_id=tenant.id,
                        task="demo.echo",
                        attempt=1,
                        state="succeeded",
                        worker="w",
                        finished_at=time.time(),
                        wall_ms=10,
                        compute_ms=5,
                    )
                )
            }
        )
        assert len(buffer.insert_events(db_session, rows[:2] + rows[:2])) == 2  # duplicates inside a batch
        assert sorted(r["metric"] for r in buffer.insert_events(db_session, rows)) == [
            "compute_ms",
            "wall_ms",
        ]
        assert buffer.insert_events(db_session, rows) == []
        db_session.commit()

    def test_running_flusher_rides_out_a_database_outage(self, db_session, redis_client, monkeypatch):
        tenant = TenantFactory()
        monkeypatch.setattr(buffer, "unscoped_session", unreachable_database)
        flusher = Flusher(redis_client, consumer=f"outage-{uuid.uuid4().hex[:6]}", block_ms=200, linger=0.1)
        thread = threading.Thread(target=flusher.run_forever, daemon=True)
        thread.start()
        try:
            job = job_meta(tenant.id)
            run_attempt(job)
            wait_until(
                lambda: stream_backlog(redis_client)["pending"] >= 1, timeout=30, message="a failed write"
            )
            time.sleep(1.5)
            assert thread.is_alive() and usage_of(db_session, job["id"]) == []
            assert stream_entries_for(redis_client, job["id"])
            monkeypatch.undo()  # the database is back
            wait_until(
                lambda: len(usage_of(db_session, job["id"])) == 4,
                timeout=60,
                interval=0.3,
                message="buffered usage to be written after the outage",
            )
        finally:
            flusher.stop_event.set()
            thread.join(30)
        assert stream_entries_for(redis_client, job["id"]) == []

    @pytest.mark.parametrize(
        "fields",
        [
            {"events": "not json"},
            {"events": json.dumps([{"id": "x", "metric": "jobs"}])},
            {
                "events": json.dumps(
                    [
                        {
                            "id": "j:1:jobs",
                            "tenant_id": "t" * 37,
                            "job_id": "j",
                            "attempt": 1,
                            "task": "x",
                            "metric": "jobs",
                            "quantity": 1,
                            "state": "succeeded",
                            "occurred_at": 0,
                        }
                    ]
                )
            },
            {
                "events": json.dumps(
                    [
                        {
                            "id": "j:1:jobs",
                            "tenant_id": "t",
                            "job_id": "j",
                            "attempt": 1,
                            "task": "x",
                            "metric": "jobs",
                            "quantity": 2**64,
                            "state": "succeeded",
                            "occurred_at": 0,
                        }
                    ]
                )
            },
            {"other": "field"},
        ],
    )
    def test_malformed_entry_goes_to_the_dead_letter_stream(self, redis_client, fields):
        entry_id = redis_client.xadd(STREAM, fields)
        Flusher(redis_client, block_ms=0).drain()
        assert any(f.get("source_id") == entry_id for _i, f in redis_client.xrange(buffer.DEAD))
        assert redis_client.xrange(STREAM, min=entry_id, max=entry_id) == []


def open_attempts_of(client, job_id: str) -> dict[str, dict]:
    return {f: json.loads(v) for f, v in client.hgetall(OPEN).items() if f.startswith(job_id + ":")}


@pytest.mark.e2e
class TestFlusherProcess:
    def test_tenantq_billing_flush_writes_and_stops_on_sigterm(
        self, db_session, redis_client, platform_env, tmp_path
    ):
        tenant = TenantFactory()
        group = ProcessGroup(platform_env, tmp_path)
        proc = group.start("flusher", [sys.executable, "-m", "tenantq.cli", "billing", "flush"])
        try:
            job = job_meta(tenant.id)
            run_attempt(job)
            wait_until(
                lambda: len(usage_of(db_session, job["id"])) == 4,
                timeout=60,
                interval=0.3,
                message="the flusher process to write the usage",
            )
            os.killpg(proc.pid, signal.SIGTERM)
            assert proc.wait(30) == 0, group.log("flusher")
        finally:
            group.stop_all()

    def test_flush_once_writes_what_is_buffered_and_exits(self, db_session, platform_env, tmp_path):
        tenant = TenantFactory()
        job = job_meta(tenant.id)
        run_attempt(job)
        group = ProcessGroup(platform_env, tmp_path)
        proc = group.start("flush-once", [sys.executable, "-m", "tenantq.cli", "billing", "flush", "--once"])
        try:
            assert proc.wait(60) == 0, group.log("flush-once")
        finally:
            group.stop_all()
        assert "usage events written" in group.log("flush-once")
        assert len(usage_of(db_session, job["id"])) == 4


@pytest.mark.e2e
class TestRealWorkers:
    def test_cpu_and_retry_usage_through_a_real_worker(
        self, api, db_session, redis_client, platform_processes
    ):
        key = ApiKeyFactory()
        cpu = api.post("/v1/jobs", json={"task": "demo.cpu", "args": {"ms": 200}}, headers=auth(key)).json()
        flaky = api.post(
            "/v1/jobs",
            json={"task": "demo.flaky", "args": {"failures": 1}, "max_retries": 2},
            headers=auth(key),
        ).json()
        flusher = Flusher(redis_client, block_ms=0)

        def recorded():
            flusher.drain()
            return len(usage_of(db_session, cpu["id"])) == 4 and len(usage_of(db_session, flaky["id"])) == 7

        wait_until(recorded, timeout=90, interval=0.3, message="usage of both jobs")
        cpu_events = {e.metric: e for e in usage_of(db_session, cpu["id"])}
        assert cpu_events["compute_ms"].quantity >= 150  # CPU of the pool child, not of the worker
        assert cpu_events["wall_ms"].quantity >= cpu_events["compute_ms"].quantity - 20
        assert cpu_events["jobs"].tenant_id == key.tenant_id
        flaky_attempts = sorted(
            (e.attempt, e.state) for e in usage_of(db_session, flaky["id"]) if e.metric == "attempts"
        )
        assert flaky_attempts == [(1, "retried"), (2, "succeeded")]

    def test_only_the_task_body_is_billed(self, api, db_session, redis_client, platform_processes):
        """CPU and wall time start just before the task function and stop just after it: the
        platform's start and finish bookkeeping (guard, status SQL, metering, metrics) is not billed."""
        key = ApiKeyFactory()
        cpu = [
            api.post("/v1/jobs", json={"task": "demo.cpu", "args": {"ms": 50}}, headers=auth(key)).json()[
                "id"
            ]
            for _ in range(3)
        ]
        echo = [
            api.post("/v1/jobs", json={"task": "demo.echo", "args": {"i": i}}, headers=auth(key)).json()["id"]
            for i in range(3)
        ]
        flusher = Flusher(redis_client, block_ms=0)

        def recorded():
            flusher.drain()
            return all(len(usage_of(db_session, job_id)) == 4 for job_id in cpu + echo)

        wait_until(recorded, timeout=120, interval=0.3, message="usage of every job")
        for job_id in cpu:
            events = {e.metric: e.quantity for e in usage_of(db_session, job_id)}
            assert 47 <= events["compute_ms"] <= 53, events
            assert events["wall_ms"] >= events["compute_ms"] - 1, events
        for job_id in echo:
            events = {e.metric: e.quantity for e in usage_of(db_session, job_id)}
            assert events["compute_ms"] <= 2, events

    def test_sigkilled_attempt_is_redelivered_and_billed_once(
        self, api, db_session, redis_client, platform_processes, platform_env, tmp_path
    ):
        group = ProcessGroup(platform_env, tmp_path)
        try:
            start_worker(group, name="spare", concurrency=1)
            wait_for_workers(2)
            key = ApiKeyFactory()
            job = api.post(
                "/v1/jobs", json={"task": "demo.sleep", "args": {"seconds": 3}}, headers=auth(key)
            ).json()
            running = wait_until(
                lambda: open_attempts_of(redis_client, job["id"]), timeout=60, message="the attempt to start"
            )
            (record,) = running.values()
            os.kill(record["pid"], signal.SIGKILL)  # the pool child dies: no postrun, no failure signal
            wait_until(
                lambda: api.get(f"/v1/jobs/{job['id']}", headers=auth(key)).json()["status"] == "succeeded",
                timeout=90,
                message="the redelivered job to succeed",
            )
            meter, flusher = Meter(redis_client), Flusher(redis_client, block_ms=0)

            def settled():
                meter.reconcile()
                flusher.drain()
                return (
                    not open_attempts_of(redis_client, job["id"])
                    and len(usage_of(db_session, job["id"])) == 7
                )

            wait_until(settled, timeout=60, interval=0.5, message="the lost attempt to be reconciled")
            # Replaying every signal path once more changes nothing.
            meter.reconcile()
            flusher.drain()
        finally:
            group.stop_all()
        events = usage_of(db_session, job["id"])
        assert len(events) == len({e.id for e in events}) == 7
        by_metric: dict[str, list] = {}
        for e in events:
            by_metric.setdefault(e.metric, []).append(e)
        assert [(e.attempt, e.quantity) for e in by_metric["jobs"]] == [(1, 1)]
        assert sorted((e.attempt, e.state) for e in by_metric["attempts"]) == [(1, "lost"), (2, "succeeded")]
        lost_wall = next(e.quantity for e in by_metric["wall_ms"] if e.attempt == 1)
        done_wall = next(e.quantity for e in by_metric["wall_ms"] if e.attempt == 2)
        assert lost_wall > 0 and done_wall >= 2900
        assert next(e.quantity for e in by_metric["compute_ms"] if e.attempt == 1) == 0
        total = db_session.scalars(select(UsageEvent).where(UsageEvent.tenant_id == key.tenant_id)).all()
        assert len(total) == 7
