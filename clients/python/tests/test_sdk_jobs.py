"""The sync and async clients against a real `tenantq up`: submit, wait, list, cancel, retry, errors,
retries with an automatic idempotency key."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from conftest import Server
from tenantq_client import AsyncClient, Client, RetryPolicy, errors


def test_submit_and_wait_returns_the_finished_job(client):
    job = client.jobs.submit("demo.echo", {"hello": "world"})
    assert job.status in ("queued", "running", "succeeded")
    done = client.jobs.wait(job.id, timeout=120)
    assert done.status == "succeeded"
    assert done.result == {"hello": "world"}
    assert done.attempt_log[0].status == "succeeded"


def test_wait_sees_progress_events_and_the_job_keeps_the_last_report(client):
    seen = []
    job = client.jobs.submit("demo.steps", {"steps": 3, "seconds": 0.3})
    done = client.jobs.wait(job.id, timeout=120, on_event=seen.append)
    assert done.status == "succeeded"
    fractions = [e.progress.fraction for e in seen if e.kind == "progress"]
    assert fractions and fractions[-1] == 1.0
    assert seen[0].kind == "job" and seen[-1].kind == "job"
    assert done.progress is not None and done.progress.message == "step 3 of 3"


def test_get_with_wait_long_polls_until_the_job_finishes(client):
    job = client.jobs.submit("demo.sleep", {"seconds": 1})
    started = time.monotonic()
    got = client.jobs.get(job.id, wait=50)
    assert got.status == "succeeded"
    assert time.monotonic() - started < 45


def test_wait_gives_up_at_its_timeout_with_the_job_as_it_is(client):
    job = client.jobs.submit("demo.echo", countdown=3600)
    with pytest.raises(errors.JobNotFinished) as caught:
        client.jobs.wait(job.id, timeout=1.5)
    assert caught.value.job.id == job.id and caught.value.job.status == "scheduled"
    assert client.jobs.cancel(job.id).cancellation == "dequeued"


def test_list_iterates_over_pages(client):
    mine = {client.jobs.submit("demo.echo", {"n": i}, countdown=3600).id for i in range(5)}
    listed = [job.id for job in client.jobs.list(status="scheduled", page_size=2)]
    assert mine <= set(listed)
    assert len(listed) == len(set(listed))
    pages = list(client.jobs.pages(status="scheduled", page_size=2))
    assert len(pages) >= 3 and all(len(p.items) <= 2 for p in pages)
    for job_id in mine:
        client.jobs.cancel(job_id)


def test_cancel_then_retry_runs_the_job_again(client):
    job = client.jobs.submit("demo.echo", {"again": True}, countdown=3600)
    cancelled = client.jobs.cancel(job.id)
    assert (cancelled.status, cancelled.cancellation) == ("cancelled", "dequeued")
    assert client.jobs.cancel(job.id).cancellation == "already_finished"
    rerun = client.jobs.retry(job.id)
    assert rerun.id == job.id and rerun.status == "queued"
    assert client.jobs.wait(job.id, timeout=120).result == {"again": True}
    with pytest.raises(errors.NotRerunnable) as caught:
        client.jobs.retry(job.id)
    assert caught.value.status_code == 409 and caught.value.code == "not_rerunnable"


def test_errors_are_raised_as_classes_named_after_their_codes(client, server: Server):
    with pytest.raises(errors.NotFound) as caught:
        client.jobs.get(str(uuid.uuid4()))
    assert caught.value.code == "not_found" and caught.value.request_id
    with pytest.raises(errors.UnknownTask):
        client.jobs.submit("no.such.task")
    with pytest.raises(errors.InvalidInput):
        client.jobs.submit("demo.sleep", {"seconds": "long"})
    with Client(api_key="tq_wrong", base_url=server.url) as wrong, pytest.raises(errors.Unauthorized):
        wrong.jobs.get(str(uuid.uuid4()))


def test_batch_gives_each_job_its_answer_and_a_key_that_makes_resubmission_harmless(client):
    jobs = [{"task": "demo.echo", "args": {"i": i}} for i in range(3)]
    items = client.jobs.batch([*jobs, {"task": "nope"}])
    assert [item.status_code for item in items] == [202, 202, 202, 422]
    assert items[3].error is not None and items[3].error.code == "unknown_task"
    again = client.jobs.batch(
        [{"task": "demo.echo", "args": {"i": 0}, "idempotency_key": items[0].job.idempotency_key}]
    )
    assert again[0].status_code == 200 and again[0].job.id == items[0].job.id


class LoseFirstAnswer(httpx.BaseTransport):
    """The real server gets the request and answers; the first answer is lost on the way back, as when
    a connection drops after the server committed. (Everything else goes through unchanged.)"""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.sent: list[bytes] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "POST":
            self.sent.append(request.read())
            if len(self.sent) == 1:
                response.read()
                raise httpx.ReadError("connection lost", request=request)
        return response


def test_a_retried_submission_never_creates_a_second_job(server: Server):
    transport = LoseFirstAnswer()
    http = httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}, transport=transport
    )
    with Client(api_key=server.key, base_url=server.url, http=http, retry=RetryPolicy(backoff=0.05)) as c:
        marker = uuid.uuid4().hex
        job = c.jobs.submit("demo.echo", {"marker": marker}, countdown=3600)
        assert len(transport.sent) == 2 and transport.sent[0] == transport.sent[1]  # same key both times
        same = [j for j in c.jobs.list(status="scheduled") if j.args.get("marker") == marker]
        assert [j.id for j in same] == [job.id]
        c.jobs.cancel(job.id)


class RefuseOnceWithRetryAfter(httpx.BaseTransport):
    """A 429 with Retry-After in the API's error shape (as a full queue answers), then the real server."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.times: list[float] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.times.append(time.monotonic())
        if len(self.times) == 1:
            body = {"error": {"code": "queue_full", "message": "The queue is full.", "details": None}}
            return httpx.Response(429, json=body, headers={"Retry-After": "1"}, request=request)
        return self.inner.handle_request(request)


def test_a_refusal_is_retried_after_the_servers_retry_after(server: Server):
    transport = RefuseOnceWithRetryAfter()
    http = httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}, transport=transport
    )
    with Client(api_key=server.key, base_url=server.url, http=http, retry=RetryPolicy(backoff=0.01)) as c:
        job = c.jobs.submit("demo.echo", {"patient": True})
        assert job.task == "demo.echo"
    assert transport.times[1] - transport.times[0] >= 1.0
    with (
        Client(
            api_key=server.key,
            base_url=server.url,
            http=httpx.Client(base_url=server.url, transport=RefuseOnceWithRetryAfter()),
            retry=RetryPolicy(attempts=1),
        ) as once,
        pytest.raises(errors.QueueFull) as caught,
    ):
        once.jobs.submit("demo.echo")
    assert caught.value.retry_after == 1.0


def test_the_async_client_does_the_same(server: Server):
    async def main() -> None:
        async with AsyncClient(api_key=server.key, base_url=server.url) as c:
            jobs = await asyncio.gather(*(c.jobs.submit("demo.echo", {"a": i}) for i in range(3)))
            done = await asyncio.gather(*(c.jobs.wait(j.id, timeout=120) for j in jobs))
            assert sorted(d.result["a"] for d in done) == [0, 1, 2]
            seen = [job.id async for job in c.jobs.list(status="succeeded", page_size=2)]
            assert {j.id for j in jobs} <= set(seen)
            assert (await c.jobs.get(jobs[0].id, wait=5)).status == "succeeded"
            with pytest.raises(errors.NotFound):
                await c.jobs.cancel(str(uuid.uuid4()))
            usage = await c.usage()
            assert any(q.name == "jobs" for q in usage.quotas)

    asyncio.run(main())
