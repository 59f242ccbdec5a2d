"""Waiting for a job: ``GET /v1/jobs/{id}?wait=``, the event stream ``GET /v1/jobs/{id}/events`` and
progress reports. The API runs in-process (its one Redis subscriber fans out to the waiters); the job
changes come from the real lifecycle functions the worker calls, or from a real worker."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

import tenantq.platform.jobs.router as jobs_router
from tenantq.core.db import get_engine
from tenantq.core.redis import get_redis
from tenantq.platform.jobs import events, lifecycle
from tenantq.platform.jobs.messages import JobMessage
from tenantq.platform.jobs.waiters import _hubs
from tenantq.tenants.accounts.service import OPERATOR_PAUSE_REASON, PAUSED_SET, PAUSED_WHY
from tests.conftest import wait_until
from tests.factories import ApiKeyFactory, JobFactory, auth
from tests.platform.helpers import submit


def waiting() -> int:
    return sum(hub.waiting for hub in list(_hubs.values()))


def listening() -> bool:
    """Every hub has its pub/sub subscription: a message published before that reaches nobody (the
    hub's resync re-reads the job, but progress reports between are not replayed)."""
    return bool(_hubs) and all(hub.subscribed for hub in list(_hubs.values()))


def message_for(job, attempt: int = 1) -> JobMessage:
    return JobMessage.from_task_kwargs(
        job.task,
        {"job": {"id": job.id, "tenant_id": job.tenant_id, "attempt": attempt, "priority": 5}, "args": {}},
    )


class Background:
    """A request made from another thread (the TestClient blocks until the answer is complete)."""

    def __init__(self, fn) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.elapsed = 0.0
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn) -> None:
        try:
            self.result = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in join()
            self.error = exc
        self.elapsed = time.monotonic() - self.started

    def join(self, timeout: float = 60) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the request did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "event" in lines:
            found.append((lines["event"], json.loads(lines["data"])))
    return found


@pytest.fixture
def key():
    return ApiKeyFactory()


@pytest.fixture
def stream_reads(monkeypatch) -> list[str]:
    """The statuses the event streams read, in order. A stream registers its waiter before its first
    read, so a test that changes the job once the waiter shows may find the change already in that
    first read; waiting for the read itself makes the first event deterministic."""
    reads: list[str] = []
    original = jobs_router._read_job_apart

    def recorded(tenant_id: str, job_id: str):
        job = original(tenant_id, job_id)
        reads.append(job.status)
        return job

    monkeypatch.setattr(jobs_router, "_read_job_apart", recorded)
    return reads


def test_wait_returns_as_soon_as_the_job_finishes(api, key):
    job = JobFactory(tenant=key.tenant, status="queued", task="demo.echo")
    before = waiting()
    call = Background(lambda: api.get(f"/v1/jobs/{job.id}?wait=50", headers=auth(key)))
    wait_until(lambda: waiting() > before, message="the request to wait")
    message = message_for(job)
    assert lifecycle.attempt_started(message, "task-1", "worker-a")
    lifecycle.attempt_succeeded(message, {"ok": True})
    resp = call.join()
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "succeeded"
    assert resp.json()["result"] == {"ok": True}
    assert call.elapsed < 40  # woken by the event, not by the 50 s deadline
    assert waiting() == before  # the waiter is gone


def test_wait_answers_the_unfinished_job_when_the_time_is_up(api, key):
    job = JobFactory(tenant=key.tenant, status="queued")
    started = time.monotonic()
    resp = api.get(f"/v1/jobs/{job.id}?wait=1", headers=auth(key))
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "queued"
    assert time.monotonic() - started >= 1


def test_a_finished_job_answers_at_once_and_a_non_terminal_change_keeps_waiting(api, key):
    done = JobFactory(tenant=key.tenant, status="failed")
    started = time.monotonic()
    assert api.get(f"/v1/jobs/{done.id}?wait=50", headers=auth(key)).json()["status"] == "failed"
    assert time.monotonic() - started < 40
    job = JobFactory(tenant=key.tenant, status="queued")
    before = waiting()
    call = Background(lambda: api.get(f"/v1/jobs/{job.id}?wait=50", headers=auth(key)))
    wait_until(lambda: waiting() > before, message="the request to wait")
    message = message_for(job)
    assert lifecycle.attempt_started(message, "task-1", "worker-a")
    time.sleep(0.3)
    assert call.thread.is_alive(), "a running job is not finished: the wait goes on"
    lifecycle.attempt_failed(message, "RuntimeError: boom")
    assert call.join().json()["status"] == "failed"


@pytest.mark.parametrize("wait", ["-1", "61", "soon", "nan"])
def test_a_bad_wait_is_422_in_the_error_shape(api, key, wait):
    job = JobFactory(tenant=key.tenant, status="queued")
    resp = api.get(f"/v1/jobs/{job.id}?wait={wait}", headers=auth(key))
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["code"] == "invalid_input"


def test_waiting_requests_hold_no_database_connection(api, key):
    engine = get_engine()
    pool_capacity = engine.pool.size() + max(engine.pool._max_overflow, 0)  # type: ignore[attr-defined]
    count = pool_capacity + 5
    jobs = [JobFactory(tenant=key.tenant, status="queued") for _ in range(count)]
    before = waiting()
    calls = [Background(lambda j=j: api.get(f"/v1/jobs/{j.id}?wait=50", headers=auth(key))) for j in jobs]
    wait_until(lambda: waiting() >= before + count, timeout=60, message="every request to wait")
    # Each has read its job once (registered first, then read): from then on none holds a connection.
    wait_until(lambda: engine.pool.checkedout() == 0, timeout=60, message="the connections to return")
    assert all(c.thread.is_alive() for c in calls), "the waits are still open"
    # The API still answers while they wait, and cancelling the jobs ends every wait.
    for job in jobs:
        resp = api.post(f"/v1/jobs/{job.id}/cancel", headers=auth(key))
        assert resp.status_code == 200, resp.text
    assert {c.join().json()["status"] for c in calls} == {"cancelled"}


def test_the_stream_of_a_finished_job_is_the_job_and_ends(api, key):
    job = JobFactory(tenant=key.tenant, status="succeeded", attempts=1)
    resp = api.get(f"/v1/jobs/{job.id}/events", headers=auth(key))
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert [(name, data["status"]) for name, data in sse(resp.text)] == [("job", "succeeded")]


def test_the_stream_carries_status_attempts_and_progress_until_the_end(api, key, stream_reads):
    job = JobFactory(tenant=key.tenant, status="queued")
    call = Background(lambda: api.get(f"/v1/jobs/{job.id}/events", headers=auth(key)))
    wait_until(lambda: stream_reads and listening(), message="the stream's first read")
    assert stream_reads[0] == "queued"
    message = message_for(job)
    assert lifecycle.attempt_started(message, "task-1", "worker-a")
    events.report_progress(job.tenant_id, job.id, 1, 0.4, "resized 4 of 10")
    lifecycle.attempt_succeeded(message, {"done": 10})
    resp = call.join()
    assert resp.status_code == 200, resp.text
    received = sse(resp.text)
    names = [name for name, _ in received]
    assert names[0] == "job" and received[0][1]["status"] == "queued"
    assert names[-1] == "job" and received[-1][1]["status"] == "succeeded"
    statuses = [data["status"] for name, data in received if name == "status"]
    assert statuses[-1] == "succeeded"
    assert any(name == "attempt" and data["attempt"] == 1 for name, data in received)
    progress = [data for name, data in received if name == "progress"]
    assert progress == [
        {"id": job.id, "attempt": 1, "fraction": 0.4, "message": "resized 4 of 10", "at": progress[0]["at"]}
    ]
    assert received[-1][1]["progress"]["message"] == "resized 4 of 10"


def test_the_stream_ends_when_the_job_is_cancelled(api, key, stream_reads):
    job = JobFactory(tenant=key.tenant, status="queued")
    call = Background(lambda: api.get(f"/v1/jobs/{job.id}/events", headers=auth(key)))
    wait_until(lambda: stream_reads and listening(), message="the stream's first read")
    assert stream_reads[0] == "queued"
    assert api.post(f"/v1/jobs/{job.id}/cancel", headers=auth(key)).status_code == 200
    received = sse(call.join().text)
    assert ("status", {"id": job.id, "status": "cancelled", "attempts": 0}) in received
    assert received[-1][0] == "job" and received[-1][1]["status"] == "cancelled"


def test_progress_shows_on_the_job_for_its_current_attempt_only(api, key):
    job = JobFactory(tenant=key.tenant, status="running", attempts=2)
    assert api.get(f"/v1/jobs/{job.id}", headers=auth(key)).json()["progress"] is None
    events.report_progress(job.tenant_id, job.id, 1, 0.9, "from the first attempt")
    assert api.get(f"/v1/jobs/{job.id}", headers=auth(key)).json()["progress"] is None
    events.report_progress(job.tenant_id, job.id, 2, 0.25, "a quarter")
    shown = api.get(f"/v1/jobs/{job.id}", headers=auth(key)).json()["progress"]
    assert {k: shown[k] for k in ("attempt", "fraction", "message")} == {
        "attempt": 2,
        "fraction": 0.25,
        "message": "a quarter",
    }
    listed = api.get("/v1/jobs", headers=auth(key)).json()["items"]
    assert [j["progress"]["message"] for j in listed if j["id"] == job.id] == ["a quarter"]


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan")])
def test_progress_outside_zero_to_one_is_refused(fraction):
    with pytest.raises(ValueError, match="between 0 and 1"):
        events.report_progress("t", "j", 1, fraction)


@pytest.mark.e2e
def test_a_worker_reports_progress_of_a_real_task(api, platform_processes):
    key = ApiKeyFactory()
    job = submit(api, key, {"task": "demo.steps", "args": {"steps": 4, "seconds": 0.3}})
    resp = api.get(f"/v1/jobs/{job['id']}/events", headers=auth(key))
    received = sse(resp.text)
    assert received[-1][1]["status"] == "succeeded", resp.text
    fractions = [data["fraction"] for name, data in received if name == "progress"]
    assert fractions and fractions[-1] == 1.0
    final = api.get(f"/v1/jobs/{job['id']}?wait=5", headers=auth(key)).json()
    assert final["progress"]["message"] == "step 4 of 4"


def test_a_paused_tenants_job_waits_until_purged(api, key, redis_client):
    # The operator's purge cancels waiting jobs in bulk: their waiters hear it too.
    get_redis().sadd(PAUSED_SET, key.tenant.id)
    get_redis().hset(PAUSED_WHY, key.tenant.id, OPERATOR_PAUSE_REASON)
    job = submit(api, key, {"task": "demo.echo"})
    before = waiting()
    call = Background(lambda: api.get(f"/v1/jobs/{job['id']}?wait=50", headers=auth(key)))
    wait_until(lambda: waiting() > before, message="the request to wait")
    admin = {"Authorization": "Bearer test-admin-token-0123456789abcdef"}
    resp = api.post(f"/admin/v1/tenants/{key.tenant.id}/queue/purge", headers=admin)
    assert resp.status_code == 200 and resp.json()["purged"] == 1, resp.text
    assert call.join().json()["status"] == "cancelled"
    assert call.elapsed < 40
