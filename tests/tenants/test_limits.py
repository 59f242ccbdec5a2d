"""Rate limits: the Redis token bucket, per-tenant submission limits (one process and two real API
processes sharing one bucket), and failed-authentication throttling per client address."""

from __future__ import annotations

import sys
import threading
import time
import uuid

import httpx
import pytest
from sqlalchemy import func, select

from tenantq.core.errors import InvalidInput, TooManyRequests
from tenantq.core.settings import get_settings
from tenantq.platform.jobs.models import Job
from tenantq.tenants.access.limits import TokenBucket, submission_rate_limit
from tests.conftest import ProcessGroup, free_port, wait_until
from tests.factories import ApiKeyFactory, TenantFactory, auth

ADMIN = {"Authorization": "Bearer test-admin-token-0123456789abcdef"}


def job_count(session, tenant_id: str) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id))


class TestTokenBucket:
    def test_burst_then_refuse_then_refill(self, redis_client):
        bucket, key = TokenBucket(redis_client), f"tq:rl:test:{uuid.uuid4().hex}"
        results = [bucket.take(key, rate=0.001, burst=3) for _ in range(4)]
        assert [r.allowed for r in results] == [True, True, True, False]
        assert results[3].retry_after > 100  # 1 token at 0.001/s
        assert redis_client.pttl(key) > 0  # the key expires on its own
        fast = f"tq:rl:test:{uuid.uuid4().hex}"
        assert bucket.take(fast, rate=1000, burst=2, n=2).allowed
        wait_until(lambda: bucket.take(fast, rate=1000, burst=2, n=2).allowed, timeout=10, message="refill")

    def test_n_tokens_at_once_and_peek(self, redis_client):
        bucket, key = TokenBucket(redis_client), f"tq:rl:test:{uuid.uuid4().hex}"
        assert not bucket.take(key, rate=0.001, burst=5, n=6).allowed
        assert bucket.take(key, rate=0.001, burst=5, n=5).allowed
        peek = bucket.take(key, rate=0.001, burst=5, n=0)
        assert peek.allowed and peek.remaining < 1


class TestSubmissionLimit:
    def test_429_with_headers_and_nothing_written(self, api, db_session):
        tenant = TenantFactory(overrides={"submit_rate": 0.01, "submit_burst": 3})
        key = ApiKeyFactory(tenant=tenant)
        codes = [
            api.post("/v1/jobs", json={"task": "demo.echo"}, headers=auth(key)).status_code for _ in range(3)
        ]
        assert codes == [202, 202, 202]
        resp = api.post("/v1/jobs", json={"task": "demo.echo"}, headers=auth(key))
        assert resp.status_code == 429
        error = resp.json()["error"]
        assert error["code"] == "rate_limited" and error["details"]["burst"] == 3
        assert int(resp.headers["Retry-After"]) >= 1
        assert resp.headers["RateLimit-Limit"] == "3" and resp.headers["RateLimit-Remaining"] == "0"
        assert int(resp.headers["RateLimit-Reset"]) >= int(resp.headers["Retry-After"])
        assert job_count(db_session, tenant.id) == 3
        # Other tenants have their own bucket.
        assert (
            api.post("/v1/jobs", json={"task": "demo.echo"}, headers=auth(ApiKeyFactory())).status_code == 202
        )

    def test_idempotent_replay_does_not_consume(self, api):
        tenant = TenantFactory(overrides={"submit_rate": 0.01, "submit_burst": 1})
        key = ApiKeyFactory(tenant=tenant)
        body = {"task": "demo.echo", "idempotency_key": "once"}
        assert api.post("/v1/jobs", json=body, headers=auth(key)).status_code == 202
        assert api.post("/v1/jobs", json=body, headers=auth(key)).status_code == 200

    def test_batch_consumes_count_and_oversized_batch_is_422(self, db_session):
        tenant = TenantFactory(overrides={"submit_rate": 0.01, "submit_burst": 10})
        submission_rate_limit(db_session, tenant, 7)
        with pytest.raises(TooManyRequests):
            submission_rate_limit(db_session, tenant, 4)
        submission_rate_limit(db_session, tenant, 3)
        with pytest.raises(InvalidInput) as exc:
            submission_rate_limit(db_session, tenant, 11)
        assert exc.value.code == "batch_exceeds_burst"

    def test_unthrottled_factory_trait(self, db_session):
        tenant = TenantFactory(unthrottled=True)
        submission_rate_limit(db_session, tenant, 100_000)

    def test_plan_limit_applies_without_overrides(self, db_session):
        tenant = TenantFactory(plan_name="free")  # free: burst 20
        submission_rate_limit(db_session, tenant, 20)
        with pytest.raises(TooManyRequests):
            submission_rate_limit(db_session, tenant, 20)


class TestAuthFailureLimit:
    @pytest.fixture(autouse=True)
    def low_limit(self, monkeypatch):
        monkeypatch.setattr(get_settings(), "auth_failure_limit", 5)
        monkeypatch.setattr(get_settings(), "auth_failure_window_s", 600)

    def test_failures_per_address_then_429(self, client_from):
        key = ApiKeyFactory()
        attacker = client_from(f"198.51.100.{uuid.uuid4().int % 250 + 1}")
        bad = {"Authorization": "Bearer " + key.plaintext[:-8] + "AAAAAAAA"}
        codes = [attacker.get("/v1/jobs", headers=bad).status_code for _ in range(5)]
        assert codes == [401] * 5
        resp = attacker.get("/v1/jobs", headers=bad)
        assert resp.status_code == 429 and resp.json()["error"]["code"] == "too_many_auth_failures"
        assert int(resp.headers["Retry-After"]) >= 1 and resp.headers["RateLimit-Limit"] == "5"
        # Malformed keys never name a real key: a credential that verifies is not refused for them
        # (guessing one key's secret is limited per key id: tests/security/test_network_and_limits.py).
        assert attacker.get("/v1/jobs", headers=auth(key)).status_code == 200
        assert attacker.get("/admin/v1/tenants", headers=ADMIN).status_code == 200
        # Another address is not affected.
        assert client_from("192.0.2.200").get("/v1/jobs", headers=auth(key)).status_code == 200

    def test_stale_genuine_credentials_do_not_count(self, client_from, db_session):
        from tenantq.core.db import utcnow

        key, revoked = ApiKeyFactory(), ApiKeyFactory()
        revoked.revoked_at = utcnow()
        db_session.commit()
        client = client_from(f"203.0.113.{uuid.uuid4().int % 250 + 1}")
        for _ in range(8):
            assert client.get("/v1/jobs", headers=auth(revoked)).status_code == 401
        assert client.get("/v1/jobs", headers=auth(key)).status_code == 200

    def test_missing_credentials_do_not_count_but_bad_admin_tokens_do(self, client_from):
        key = ApiKeyFactory()
        client = client_from(f"203.0.113.{uuid.uuid4().int % 250 + 1}")
        for _ in range(10):
            assert client.get("/v1/jobs").status_code == 401
        assert client.get("/v1/jobs", headers=auth(key)).status_code == 200
        for _ in range(5):
            assert (
                client.get("/admin/v1/tenants", headers={"Authorization": "Bearer guess"}).status_code == 401
            )
        assert client.get("/admin/v1/tenants", headers=ADMIN).status_code == 429


class ApiProcesses:
    def __init__(self, group: ProcessGroup, count: int = 2) -> None:
        self.urls = []
        for i in range(count):
            port = free_port()
            group.start(f"api-{i}-{port}", [sys.executable, "-m", "tenantq.cli", "api", "--port", str(port)])
            self.urls.append(f"http://127.0.0.1:{port}")
        for url in self.urls:
            wait_until(lambda u=url: self._up(u), timeout=90, interval=0.2, message=f"API at {url}")

    @staticmethod
    def _up(url: str) -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


@pytest.fixture(scope="module")
def two_apis(platform_env, tmp_path_factory):
    group = ProcessGroup(platform_env, tmp_path_factory.mktemp("api-logs"))
    try:
        yield ApiProcesses(group, 2)
    finally:
        group.stop_all()


@pytest.mark.e2e
class TestAcrossProcesses:
    def test_two_api_processes_share_one_submission_bucket(self, two_apis, db_session):
        rate, burst, window = 5.0, 10, 3.0
        tenant = TenantFactory(overrides={"submit_rate": rate, "submit_burst": burst})
        key = ApiKeyFactory(tenant=tenant)
        accepted = dict.fromkeys(two_apis.urls, 0)
        limited: list[httpx.Response] = []
        other: list[int] = []
        lock = threading.Lock()
        start = time.monotonic()

        def hammer(url: str) -> None:
            with httpx.Client(base_url=url, headers=auth(key), timeout=30) as client:
                # At least the window, and on until the bucket refused something: on a loaded machine
                # four clients may send fewer than the burst within the window (bounded at 60 s).
                while (time.monotonic() - start < window or not limited) and time.monotonic() - start < 60:
                    resp = client.post("/v1/jobs", json={"task": "demo.echo"})
                    with lock:
                        if resp.status_code == 202:
                            accepted[url] += 1
                        elif resp.status_code == 429:
                            limited.append(resp)
                        else:
                            other.append(resp.status_code)

        threads = [threading.Thread(target=hammer, args=(u,)) for u in two_apis.urls for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
        total = sum(accepted.values())
        assert other == []
        # The bound holds for the cluster, not per process: two processes do not get two buckets.
        assert total <= rate * elapsed + burst, (total, elapsed, accepted)
        assert total >= burst and limited, (total, accepted)
        assert all(n > 0 for n in accepted.values()), accepted
        assert job_count(db_session, tenant.id) == total
        sample = limited[0]
        assert sample.json()["error"]["code"] == "rate_limited"
        assert all(
            h in sample.headers
            for h in ("Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
        )

    def test_revocation_is_seen_by_the_other_process_at_once(self, two_apis):
        first, second = two_apis.urls
        admin = ApiKeyFactory()
        victim = ApiKeyFactory(tenant=admin.tenant)
        assert httpx.get(f"{second}/v1/jobs", headers=auth(victim)).status_code == 200
        assert httpx.delete(f"{first}/v1/keys/{victim.id}", headers=auth(admin)).status_code == 204
        resp = httpx.get(f"{second}/v1/jobs", headers=auth(victim))
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "revoked_api_key"

    def test_chunked_body_over_the_limit_is_413_over_real_http(self, two_apis, db_session):
        key = ApiKeyFactory()
        limit = get_settings().max_body_bytes

        def chunks():
            yield b'{"task": "demo.echo", "args": {"blob": "'
            for _ in range(limit // 65536 + 2):
                yield b"x" * 65536
            yield b'"}}'

        resp = httpx.post(
            f"{two_apis.urls[0]}/v1/jobs",
            content=chunks(),
            headers={**auth(key), "content-type": "application/json"},
            timeout=30,
        )
        assert resp.status_code == 413 and resp.json()["error"]["code"] == "payload_too_large"
        assert job_count(db_session, key.tenant_id) == 0
