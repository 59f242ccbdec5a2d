"""Idempotency keys: same key -> same job, different parameters -> 409, a retention window after which
the key may be reused, and exactly one job under concurrent duplicate submits to two API processes."""

from __future__ import annotations

import sys
import threading
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select

from tenantq.core.db import utcnow
from tenantq.platform.jobs.models import Job
from tests.conftest import ProcessGroup, free_port, wait_until
from tests.factories import ApiKeyFactory, JobFactory, auth


def jobs_with_key(session, tenant_id: str, key: str | None = None) -> int:
    session.expire_all()
    query = select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id)
    if key is not None:
        query = query.where(Job.idempotency_key == key)
    return session.scalar(query)


class TestRetention:
    def test_key_is_reusable_after_the_retention_window(self, api, db_session):
        key = ApiKeyFactory()
        old = JobFactory(
            tenant=key.tenant,
            idempotency_key="nightly",
            args={"day": 1},
            created_at=utcnow() - timedelta(hours=25),
        )
        resp = api.post(
            "/v1/jobs",
            json={"task": "demo.echo", "args": {"day": 2}, "idempotency_key": "nightly", "countdown": 3600},
            headers=auth(key),
        )
        assert resp.status_code == 202, resp.text
        assert resp.json()["id"] != old.id and resp.json()["idempotency_key"] == "nightly"
        db_session.expire_all()
        assert db_session.get(Job, old.id).idempotency_key is None  # released, job otherwise untouched
        again = api.post(
            "/v1/jobs",
            json={"task": "demo.echo", "args": {"day": 2}, "idempotency_key": "nightly", "countdown": 3600},
            headers=auth(key),
        )
        assert again.status_code == 200 and again.json()["id"] == resp.json()["id"]

    def test_key_within_window_still_conflicts(self, api):
        key = ApiKeyFactory()
        JobFactory(
            tenant=key.tenant, idempotency_key="k1", args={"a": 1}, created_at=utcnow() - timedelta(hours=23)
        )
        resp = api.post(
            "/v1/jobs",
            json={"task": "demo.echo", "args": {"a": 2}, "idempotency_key": "k1"},
            headers=auth(key),
        )
        assert resp.status_code == 409 and resp.json()["error"]["code"] == "idempotency_conflict"

    def test_keys_are_per_tenant(self, api):
        a, b = ApiKeyFactory(), ApiKeyFactory()
        body = {"task": "demo.echo", "args": {}, "idempotency_key": "shared", "countdown": 3600}
        ja = api.post("/v1/jobs", json=body, headers=auth(a))
        jb = api.post("/v1/jobs", json=body, headers=auth(b))
        assert ja.status_code == jb.status_code == 202 and ja.json()["id"] != jb.json()["id"]


@pytest.fixture(scope="module")
def two_api_processes(platform_env, tmp_path_factory):
    group = ProcessGroup(platform_env, tmp_path_factory.mktemp("api-logs"))
    urls = []
    for n in range(2):
        port = free_port()
        group.start(f"api{n}", [sys.executable, "-m", "tenantq.cli", "api", "--port", str(port)])
        urls.append(f"http://127.0.0.1:{port}")

    def up() -> bool:
        try:
            return all(httpx.get(u + "/healthz", timeout=1).status_code == 200 for u in urls)
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, timeout=60, interval=0.2, message="two API processes to answer")
        yield urls
    finally:
        group.stop_all()


def hammer(urls: list[str], headers: dict[str, str], bodies: list[dict]) -> list[httpx.Response]:
    """Send every body at once from its own thread, alternating between the API processes."""
    barrier = threading.Barrier(len(bodies))
    out: list[httpx.Response | BaseException | None] = [None] * len(bodies)

    def send(i: int) -> None:
        with httpx.Client(base_url=urls[i % len(urls)], headers=headers, timeout=60) as client:
            barrier.wait()
            try:
                out[i] = client.post("/v1/jobs", json=bodies[i])
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                out[i] = exc

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(isinstance(r, httpx.Response) for r in out), out
    return out  # type: ignore[return-value]


@pytest.mark.e2e
class TestConcurrentDuplicates:
    def test_twenty_concurrent_duplicates_make_one_job(self, two_api_processes, db_session):
        key = ApiKeyFactory()
        body = {"task": "demo.echo", "args": {"order": 42}, "idempotency_key": "order-42", "countdown": 3600}
        responses = hammer(two_api_processes, auth(key), [body] * 20)
        codes = sorted(r.status_code for r in responses)
        assert codes == [200] * 19 + [202], [r.text for r in responses if r.status_code not in (200, 202)]
        assert len({r.json()["id"] for r in responses}) == 1
        assert jobs_with_key(db_session, key.tenant_id) == 1

    def test_concurrent_reuse_after_retention_makes_one_new_job(self, two_api_processes, db_session):
        key = ApiKeyFactory()
        JobFactory(tenant=key.tenant, idempotency_key="daily", created_at=utcnow() - timedelta(days=2))
        body = {"task": "demo.echo", "args": {"day": 3}, "idempotency_key": "daily", "countdown": 3600}
        responses = hammer(two_api_processes, auth(key), [body] * 20)
        assert sorted(r.status_code for r in responses) == [200] * 19 + [202]
        assert jobs_with_key(db_session, key.tenant_id, "daily") == 1
        assert jobs_with_key(db_session, key.tenant_id) == 2  # the old job stays, without its key

    def test_concurrent_conflicting_parameters_make_one_job_and_409s(self, two_api_processes, db_session):
        key = ApiKeyFactory()
        bodies = [
            {"task": "demo.echo", "args": {"variant": i % 2}, "idempotency_key": "race", "countdown": 3600}
            for i in range(20)
        ]
        responses = hammer(two_api_processes, auth(key), bodies)
        winner = next(r.json() for r in responses if r.status_code == 202)
        for body, resp in zip(bodies, responses, strict=True):
            if body["args"] == winner["args"]:
                assert resp.status_code in (200, 202) and resp.json()["id"] == winner["id"]
            else:
                assert resp.status_code == 409 and resp.json()["error"]["code"] == "idempotency_conflict"
        assert jobs_with_key(db_session, key.tenant_id) == 1
