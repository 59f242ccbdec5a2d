"""The outbox on every path that commits a job and then enqueues it: a submission, a batch, a schedule
firing, a workflow's first step, the next step a worker creates when a step finishes, a re-run.

Each path runs in a process of its own that dies (``os._exit``: no cleanup, no compensation, like a
SIGKILL) right after its commit, where the Redis enqueue would be. The session's dispatcher (a real
process, leading) must then find the job through its outbox sweep and the session's worker run it:
well before ``TENANTQ_LOST_JOB_GRACE_SECONDS`` (300 s), the lost-job reconciler's delay. The same paths,
uninterrupted, must leave no note behind; a request whose note cannot be written is refused with 503
``queue_unavailable`` and nothing of it is committed.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from typing import Any

import pytest
import redis
import redis.connection
from sqlalchemy import event, func, select, update

from tenantq.core.db import utcnow
from tenantq.core.keys import DISPATCHED_AT, OUTBOX, OUTBOX_TENANT
from tenantq.platform.dispatch.repository import TenantQueues
from tenantq.platform.jobs import outbox
from tenantq.platform.jobs.models import Job
from tenantq.platform.jobs.service import job_message
from tenantq.platform.workflows.models import Workflow
from tests.conftest import ROOT, wait_until
from tests.factories import ApiKeyFactory, auth
from tests.platform.helpers import get_job, submit, wait_job
from tests.platform.test_workflows import wait_wf

pytestmark = pytest.mark.e2e
log = logging.getLogger(__name__)

# Ran by ``die_after_commit``: the path's code with every enqueue replaced by a print of the job ids it
# was given and an immediate exit.
_PRELUDE = """
import json, os, sys
import tenantq.worker  # task types and assembly, like every entry point
from tenantq.platform.jobs import service

def die(target, *_args, **_kwargs):
    jobs = target if isinstance(target, list) else [target]
    print(json.dumps([job.id for job in jobs]), flush=True)
    os._exit(9)

service.enqueue = die
service.enqueue_jobs = die
"""


def die_after_commit(platform_env: dict[str, str], body: str, *args: str) -> list[str]:
    """Run ``body`` after the prelude in a fresh process; returns the ids of the jobs it committed and
    was about to enqueue when it died."""
    proc = subprocess.run(
        [sys.executable, "-c", _PRELUDE + textwrap.dedent(body), *args],
        env={**os.environ, **platform_env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 9, f"the process did not die at its enqueue: {proc.returncode} {proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def swept(group, job_id: str) -> bool:
    return f"outbox: job {job_id} was committed but never enqueued; queued now" in group.log("dispatcher")


def assert_recovered_by_the_sweep(group, redis_client, job_ids: list[str], died_at: float) -> None:
    for job_id in job_ids:
        wait_until(lambda j=job_id: swept(group, j), timeout=60, message=f"the sweep to queue {job_id}")
        assert redis_client.zscore(OUTBOX, job_id) is None
        assert redis_client.hget(OUTBOX_TENANT, job_id) is None
    # For a reader of the log: the bound is 10 s (2 s sweep + 3 s age + the run) on an idle
    # machine; the wait above allows for a loaded one.
    log.info("swept %s job(s) %.1f s after the death", len(job_ids), time.monotonic() - died_at)


def no_notes(redis_client, job_ids: list[str]) -> bool:
    return all(redis_client.zscore(OUTBOX, j) is None for j in job_ids) and not any(
        redis_client.hmget(OUTBOX_TENANT, job_ids)
    )


class TestDeathBetweenCommitAndEnqueue:
    def test_submission(self, api, platform_env, platform_processes, redis_client):
        key = ApiKeyFactory()
        [job_id] = die_after_commit(
            platform_env,
            """
            from tenantq.core.db import unscoped_session
            from tenantq.platform.jobs.schemas import JobCreate
            from tenantq.tenants.accounts.models import Tenant
            with unscoped_session() as session:
                tenant = session.get(Tenant, sys.argv[1])
                service.submit_job(session, tenant, JobCreate(task="demo.echo", args={"via": "submit"}))
            """,
            key.tenant_id,
        )
        died_at = time.monotonic()
        done = wait_job(api, key, job_id, timeout=60)
        assert done["status"] == "succeeded" and done["result"] == {"via": "submit"}
        assert_recovered_by_the_sweep(platform_processes, redis_client, [job_id], died_at)

    def test_batch_with_a_delayed_job(self, api, platform_env, platform_processes, redis_client):
        key = ApiKeyFactory()
        job_ids = die_after_commit(
            platform_env,
            """
            from tenantq.core.db import unscoped_session
            from tenantq.tenants.accounts.models import Tenant
            with unscoped_session() as session:
                tenant = session.get(Tenant, sys.argv[1])
                now = {"task": "demo.echo", "args": {"n": 1}}
                later = {"task": "demo.echo", "args": {"n": 2}, "countdown": 1}
                service.submit_batch(session, tenant, [now, later])
            """,
            key.tenant_id,
        )
        died_at = time.monotonic()
        assert len(job_ids) == 2
        results = [wait_job(api, key, j, timeout=60) for j in job_ids]
        assert [(r["status"], r["result"]) for r in results] == [
            ("succeeded", {"n": 1}),
            ("succeeded", {"n": 2}),
        ]
        assert_recovered_by_the_sweep(platform_processes, redis_client, job_ids, died_at)

    def test_schedule_firing(self, api, db_session, platform_env, platform_processes, redis_client):
        from tenantq.platform.schedules import service as schedules
        from tenantq.platform.schedules.schemas import ScheduleCreate

        key = ApiKeyFactory(tenant__plan_name="enterprise")
        sched = schedules.create_schedule(
            db_session,
            key.tenant,
            ScheduleCreate(task="demo.echo", args={"via": "beat"}, interval_seconds=3600),
        )
        db_session.commit()
        # Fired as beat fires it, at its due time (an hour ahead: no beat runs in the test session).
        [job_id] = die_after_commit(
            platform_env,
            """
            from datetime import datetime, timedelta
            from tenantq.core.db import session_factory
            from tenantq.platform.schedules.service import fire_due
            now = datetime.fromisoformat(sys.argv[1]) + timedelta(seconds=0.5)
            fire_due(session_factory()(), now)
            """,
            sched.next_run_at.isoformat(),
        )
        died_at = time.monotonic()
        done = wait_job(api, key, job_id, timeout=60)
        assert done["status"] == "succeeded" and done["result"] == {"via": "beat"}
        assert_recovered_by_the_sweep(platform_processes, redis_client, [job_id], died_at)

    def test_workflow_start(self, api, platform_env, platform_processes, redis_client):
        key = ApiKeyFactory()
        job_ids = die_after_commit(
            platform_env,
            """
            from tenantq.core.db import unscoped_session
            from tenantq.platform.workflows.schemas import WorkflowCreate
            from tenantq.platform.workflows.service import create_workflow
            from tenantq.tenants.accounts.models import Tenant
            group = [{"task": "demo.echo", "args": {"a": 1}}, {"task": "demo.echo", "args": {"b": 2}}]
            steps = [{"group": group}, {"task": "demo.echo"}]
            with unscoped_session() as session:
                tenant = session.get(Tenant, sys.argv[1])
                create_workflow(session, tenant, WorkflowCreate.model_validate({"steps": steps}))
            """,
            key.tenant_id,
        )
        died_at = time.monotonic()
        assert len(job_ids) == 2  # the first step's group
        first = get_job(api, key, job_ids[0])
        wf = wait_wf(api, key, first["workflow_id"], timeout=60)
        assert wf["status"] == "succeeded" and wf["result"] == {"input": [{"a": 1}, {"b": 2}]}
        assert_recovered_by_the_sweep(platform_processes, redis_client, job_ids, died_at)

    def test_next_workflow_step_created_by_a_worker(
        self, api, db_session, platform_env, platform_processes, redis_client
    ):
        """The worker's finish path (``lifecycle.attempt_succeeded``, the code a Celery worker and the
        dispatcher's settler run) commits the next step's jobs with the finished one, then enqueues."""
        from tenantq.platform.workflows.schemas import WorkflowCreate
        from tenantq.platform.workflows.service import create_workflow

        key = ApiKeyFactory()
        queues = TenantQueues(redis_client)
        queues.pause(key.tenant_id, "test")  # step 0 is "run" below, by the process that dies
        wf = create_workflow(
            db_session,
            key.tenant,
            WorkflowCreate.model_validate({"steps": [{"task": "demo.echo"}, {"task": "demo.echo"}]}),
        )
        [[step0]] = wf.job_ids
        assert queues.remove(key.tenant_id, step0)
        db_session.execute(
            update(Job).where(Job.id == step0).values(status="running", attempts=1, started_at=utcnow())
        )
        db_session.commit()
        wire = job_message(db_session.get(Job, step0), attempt=1)
        queues.resume(key.tenant_id)
        [job_id] = die_after_commit(
            platform_env,
            """
            from tenantq.platform.jobs import lifecycle
            from tenantq.platform.jobs.messages import JobMessage
            wire = json.loads(sys.argv[1])
            message = JobMessage.from_job(wire["task"], {**wire["job"], "dispatch": "1"}, wire["args"])
            lifecycle.attempt_succeeded(message, {"from": "step 0"})
            """,
            json.dumps(wire),
        )
        died_at = time.monotonic()
        done = wait_job(api, key, job_id, timeout=60)
        assert done["status"] == "succeeded" and done["result"] == {"input": {"from": "step 0"}}
        assert_recovered_by_the_sweep(platform_processes, redis_client, [job_id], died_at)
        body = api.get(f"/v1/workflows/{wf.id}", headers=auth(key)).json()
        assert body["status"] == "succeeded", body

    def test_rerun_of_a_job_cancelled_before_it_started(
        self, api, db_session, platform_env, platform_processes, redis_client
    ):
        """Its attempt 1 was cancelled in Redis only, so the re-run is attempt 2: the sweep must queue
        that number (attempt 1 would meet its cancel marker and never run) and bill it as the job."""
        key = ApiKeyFactory()
        job = submit(api, key, {"task": "demo.echo", "args": {"again": True}, "countdown": 3600})
        resp = api.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(key))
        assert resp.status_code == 200 and resp.json()["status"] == "cancelled", resp.text
        # A publish record of an earlier attempt (one cancelled while it waited in Celery) predates the
        # note: the sweep must not take it for this attempt's.
        redis_client.hset(DISPATCHED_AT, job["id"], time.time() - 60)
        [job_id] = die_after_commit(
            platform_env,
            """
            from tenantq.core.db import unscoped_session
            from tenantq.tenants.accounts.models import Tenant
            with unscoped_session() as session:
                tenant = session.get(Tenant, sys.argv[1])
                service.rerun_job(session, tenant, sys.argv[2])
            """,
            key.tenant_id,
            job["id"],
        )
        died_at = time.monotonic()
        assert job_id == job["id"]
        done = wait_job(api, key, job_id, timeout=60)
        assert done["status"] == "succeeded" and done["result"] == {"again": True}
        assert [a["attempt"] for a in done["attempt_log"]] == [2]
        assert_recovered_by_the_sweep(platform_processes, redis_client, [job_id], died_at)


class TestNormalPathsLeaveNoNote:
    def test_submission_batch_rerun_and_schedule(self, api, db_session, platform_processes, redis_client):
        from tenantq.platform.schedules import service as schedules
        from tenantq.platform.schedules.schemas import ScheduleCreate

        key = ApiKeyFactory(tenant__plan_name="enterprise")
        one = submit(api, key, {"task": "demo.echo"})
        resp = api.post(
            "/v1/jobs/batch",
            json={"jobs": [{"task": "demo.echo"}, {"task": "demo.echo", "countdown": 3600}]},
            headers=auth(key),
        )
        assert resp.status_code == 200, resp.text
        batch = [item["job"]["id"] for item in resp.json()["items"]]
        failing = submit(api, key, {"task": "demo.fail", "args": {"message": "x"}, "max_retries": 0})
        assert wait_job(api, key, failing["id"])["status"] == "failed"
        resp = api.post(f"/v1/jobs/{failing['id']}/retry", headers=auth(key))
        assert resp.status_code == 202, resp.text
        sched = schedules.create_schedule(
            db_session, key.tenant, ScheduleCreate(task="demo.echo", interval_seconds=3600)
        )
        db_session.commit()
        firing = schedules.fire(db_session, sched, sched.next_run_at + timedelta(seconds=0.5))
        assert firing is not None and firing.error is None
        ids = [one["id"], *batch, failing["id"], firing.job_id]
        assert no_notes(redis_client, ids)
        assert TenantQueues(redis_client).is_pending(key.tenant_id, batch[1])  # the delayed one

    def test_workflow_start_and_next_steps(self, api, platform_processes, redis_client):
        key = ApiKeyFactory()
        resp = api.post(
            "/v1/workflows",
            json={
                "steps": [
                    {"task": "demo.echo"},
                    {"group": [{"task": "demo.echo"}] * 2},
                    {"task": "demo.echo"},
                ]
            },
            headers=auth(key),
        )
        assert resp.status_code == 202, resp.text
        wf = resp.json()
        body = wait_wf(api, key, wf["id"])
        assert body["status"] == "succeeded"
        ids = [j["id"] for step in body["steps"] for j in step["jobs"]]
        assert len(ids) == 4 and no_notes(redis_client, ids)


def redis_down(*_args: Any, **_kwargs: Any) -> None:
    raise redis.ConnectionError("Redis is away")


class TestNoteNotWritten:
    def test_a_workflow_is_refused_whole(self, api, db_session, monkeypatch):
        key = ApiKeyFactory()
        monkeypatch.setattr(outbox, "note", redis_down)
        resp = api.post("/v1/workflows", json={"steps": [{"task": "demo.echo"}]}, headers=auth(key))
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "queue_unavailable"
        assert resp.headers["Retry-After"] == "1"
        db_session.expire_all()
        assert db_session.scalar(select(func.count()).where(Workflow.tenant_id == key.tenant_id)) == 0
        assert db_session.scalar(select(func.count()).where(Job.tenant_id == key.tenant_id)) == 0

    def test_a_rerun_is_refused_and_the_job_stays_as_it_was(self, api, db_session, monkeypatch):
        key = ApiKeyFactory()
        job = submit(api, key, {"task": "demo.echo", "countdown": 3600})
        api.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(key))
        monkeypatch.setattr(outbox, "note", redis_down)
        resp = api.post(f"/v1/jobs/{job['id']}/retry", headers=auth(key))
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "queue_unavailable"
        assert get_job(api, key, job["id"])["status"] == "cancelled"

    def test_a_submission_is_refused(self, api, db_session, monkeypatch):
        key = ApiKeyFactory()
        monkeypatch.setattr(outbox, "note", redis_down)
        resp = api.post("/v1/jobs", json={"task": "demo.echo"}, headers=auth(key))
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "queue_unavailable"
        db_session.expire_all()
        assert db_session.scalar(select(func.count()).where(Job.tenant_id == key.tenant_id)) == 0

    def test_a_worker_creating_the_next_step_goes_on_without_its_note(
        self, db_session, redis_client, monkeypatch, caplog
    ):
        """A finished attempt cannot be refused: the next step is created and queued all the same."""
        from tenantq.platform.jobs.hooks import AttemptOutcome
        from tenantq.platform.jobs.messages import JobMessage
        from tenantq.platform.workflows.schemas import WorkflowCreate
        from tenantq.platform.workflows.service import FINISH_HOOK, create_workflow

        key = ApiKeyFactory()
        TenantQueues(redis_client).pause(key.tenant_id, "test")  # nothing runs: the queue is looked at
        wf = create_workflow(
            db_session,
            key.tenant,
            WorkflowCreate.model_validate({"steps": [{"task": "demo.echo"}, {"task": "demo.echo"}]}),
        )
        [[step0]] = wf.job_ids
        db_session.execute(update(Job).where(Job.id == step0).values(status="succeeded", result={}))
        monkeypatch.setattr(outbox, "note", redis_down)
        wire = job_message(db_session.get(Job, step0), attempt=1)
        message = JobMessage.from_job(wire["task"], wire["job"], wire["args"])
        with caplog.at_level("WARNING", logger="tenantq.jobs"):
            after = FINISH_HOOK.in_transaction(db_session, AttemptOutcome(message, "succeeded"))
        db_session.commit()
        assert after is not None and any("not noted" in r.getMessage() for r in caplog.records)
        after()
        db_session.expire_all()
        step1 = db_session.get(Workflow, wf.id).job_ids[1][0]
        assert TenantQueues(redis_client).is_pending(key.tenant_id, step1)
        assert redis_client.zscore(OUTBOX, step1) is None


class TestRoundTrips:
    """The enqueue takes the note away in its own Redis call: after the commit, a submission costs one
    round trip, a batch one per kind (immediate, delayed), a workflow's first step one for the group."""

    @staticmethod
    def after_commit(db_session, monkeypatch, action) -> int:
        sent: list[int] = []
        commits: list[int] = []
        send = redis.connection.AbstractConnection.send_packed_command

        def counted(self, command, check_health=True):
            sent.append(1)
            return send(self, command, check_health)

        def committed(_session) -> None:
            commits.append(len(sent))

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
        event.listen(db_session, "after_commit", committed)
        try:
            action()
        finally:
            event.remove(db_session, "after_commit", committed)
            monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", send)
        assert len(commits) == 1, commits
        return len(sent) - commits[0]

    def test_after_the_commit(self, db_session, redis_client, monkeypatch):
        from tenantq.platform.jobs.schemas import JobCreate
        from tenantq.platform.jobs.service import submit_batch, submit_job
        from tenantq.platform.workflows.schemas import WorkflowCreate
        from tenantq.platform.workflows.service import create_workflow

        key = ApiKeyFactory(tenant__plan_name="enterprise")
        tenant = key.tenant
        TenantQueues(redis_client).pause(tenant.id, "test")  # nothing runs: only the requests count
        # Load the enqueue scripts first (a first EVALSHA answered NOSCRIPT costs a second round trip).
        submit_job(db_session, tenant, JobCreate(task="demo.echo"))
        submit_batch(db_session, tenant, [{"task": "demo.echo"}, {"task": "demo.echo", "countdown": 60}])
        one = self.after_commit(
            db_session, monkeypatch, lambda: submit_job(db_session, tenant, JobCreate(task="demo.echo"))
        )
        jobs = [{"task": "demo.echo"}] * 5 + [{"task": "demo.echo", "countdown": 60}] * 5
        batch = self.after_commit(db_session, monkeypatch, lambda: submit_batch(db_session, tenant, jobs))
        steps = {"steps": [{"group": [{"task": "demo.echo"}] * 3}, {"task": "demo.echo"}]}
        workflow = self.after_commit(
            db_session,
            monkeypatch,
            lambda: create_workflow(db_session, tenant, WorkflowCreate.model_validate(steps)),
        )
        assert (one, batch, workflow) == (1, 2, 1)
        db_session.expire_all()
        waiting = db_session.scalars(select(Job.id).where(Job.tenant_id == tenant.id)).all()
        assert len(waiting) == 1 + 2 + 1 + 10 + 3 and no_notes(redis_client, list(waiting))
