"""``/metrics`` is closed outside embedded defaults, the failed-login
limiter never locks out a verified credential and trusts only configured proxies, IPv6 forms of private
IPv4 addresses are refused, and Stripe signatures dated in the future are refused."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tenantq.core.outbound import BlockedDestination, NetworkPolicy, check_url
from tenantq.core.settings import Settings, get_settings
from tenantq.tenants.access.keys import generate_key
from tests.conftest import ProcessGroup, free_port, wait_until
from tests.factories import ApiKeyFactory, auth

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"  # set by the platform_env fixture

ClientFrom = Callable[[str], TestClient]


@pytest.fixture
def client_from() -> Iterator[ClientFrom]:
    """An in-process client whose requests come from a given address (the limiter keys on it)."""
    from tenantq.app import create_app

    clients: list[TestClient] = []

    def make(address: str) -> TestClient:
        client = TestClient(create_app(), raise_server_exceptions=False, client=(address, 40000))
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()


def new_address() -> str:
    # 198.18.0.0/15 (benchmarking): no other test shares these allowances.
    n = uuid.uuid4().int
    return f"198.19.{n % 250}.{n // 250 % 250 + 1}"


# -- /metrics ---------------------------------------------------------------------------------
class TestMetricsAccess:
    def test_closed_outside_embedded_defaults_without_token(
        self, api: TestClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(get_settings(), "metrics_public", False)
        monkeypatch.setattr(get_settings(), "metrics_token", None)
        resp = api.get("/metrics")
        assert resp.status_code == 403, resp.text
        assert resp.json()["error"]["code"] == "metrics_disabled"
        assert "tenantq_" not in resp.text

    def test_token_opens_it_and_public_opens_it_explicitly(
        self, api: TestClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(get_settings(), "metrics_public", False)
        monkeypatch.setattr(get_settings(), "metrics_token", "scrape-token-0123456789")
        assert api.get("/metrics").json()["error"]["code"] == "invalid_metrics_token"
        ok = api.get("/metrics", headers={"Authorization": "Bearer scrape-token-0123456789"})
        assert ok.status_code == 200 and "tenantq_redis_up" in ok.text
        # A token, once set, is required even where the operator opened /metrics.
        monkeypatch.setattr(get_settings(), "metrics_public", True)
        assert api.get("/metrics").status_code == 401
        monkeypatch.setattr(get_settings(), "metrics_token", None)
        assert api.get("/metrics").status_code == 200

    def test_embedded_defaults_stay_open(self, tmp_path: Path) -> None:
        from tenantq.ops.metrics import embedded_deployment

        nothing = Settings(data_dir=tmp_path, database_url=None, redis_url=None)
        assert embedded_deployment(nothing)
        # `tenantq up` hands its children the data dir's own database file and Redis socket.
        up_child = Settings(
            data_dir=tmp_path,
            database_url=f"sqlite:///{tmp_path.resolve() / 'tenantq.db'}",
            redis_url=f"unix://{tmp_path.resolve() / 'redis.sock'}",
        )
        assert embedded_deployment(up_child)
        external = Settings(
            data_dir=tmp_path,
            database_url=f"sqlite:///{tmp_path.resolve() / 'tenantq.db'}",
            redis_url="redis://redis.internal:6379/0",
        )
        assert not embedded_deployment(external)


# -- failed-login limiter -----------------------------------------------------------------------
class TestFailedLoginLimiter:
    LIMIT = 20

    @pytest.fixture(autouse=True)
    def limit(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(get_settings(), "auth_failure_limit", self.LIMIT)
        monkeypatch.setattr(get_settings(), "auth_failure_window_s", 600)

    def test_valid_key_gets_in_after_made_up_keys_from_its_address(self, client_from: ClientFrom) -> None:
        key = ApiKeyFactory()
        client = client_from(new_address())
        for _ in range(self.LIMIT):
            made_up = {"Authorization": f"Bearer {generate_key(get_settings().env)[0]}"}
            assert client.get("/v1/jobs", headers=made_up).status_code == 401
        # The address has spent its allowance: one more failure is told to stop...
        made_up = {"Authorization": f"Bearer {generate_key(get_settings().env)[0]}"}
        resp = client.get("/v1/jobs", headers=made_up)
        assert resp.status_code == 429 and resp.json()["error"]["code"] == "too_many_auth_failures"
        # ...but a key that verifies is not refused for those failures, nor is a session from it.
        assert client.get("/v1/jobs", headers=auth(key)).status_code == 200
        assert client.post("/v1/auth/session", headers=auth(key)).status_code in (200, 201)
        assert client.get("/admin/v1/tenants", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).is_success

    def test_guessing_one_key_is_limited_per_address_and_key(self, client_from: ClientFrom) -> None:
        key = ApiKeyFactory()
        guess = {"Authorization": "Bearer " + wrong_secret(key.plaintext)}
        attacker = client_from(new_address())
        for _ in range(self.LIMIT):
            assert attacker.get("/v1/jobs", headers=guess).status_code == 401
        # That key id is refused from that address before its secret is looked at...
        resp = attacker.get("/v1/jobs", headers=auth(key))
        assert resp.status_code == 429 and resp.json()["error"]["code"] == "too_many_auth_failures"
        assert int(resp.headers["Retry-After"]) >= 1
        # ...another key from the same address and the same key from elsewhere are not.
        assert attacker.get("/v1/jobs", headers=auth(ApiKeyFactory())).status_code == 200
        assert client_from(new_address()).get("/v1/jobs", headers=auth(key)).status_code == 200


def wrong_secret(plaintext: str) -> str:
    """The same key id with another (checksummed) secret: a guess at that very key."""
    from tenantq.tenants.access import keys

    made_up = generate_key(get_settings().env)[0]
    prefix, rest = plaintext[: len("tq_live_")], plaintext[len("tq_live_") :]
    body = prefix + rest[: keys.KID_LEN + 1] + made_up[-(keys.SECRET_LEN + keys.CHECK_LEN) : -keys.CHECK_LEN]
    return body + keys._checksum(body)


class ApiProcess:
    def __init__(self, group: ProcessGroup, extra_env: dict[str, str]) -> None:
        port = free_port()
        group.start(
            f"api-{port}",
            [sys.executable, "-m", "tenantq.cli", "api", "--port", str(port)],
            extra_env={
                "TENANTQ_AUTH_FAILURE_LIMIT": "3",
                "TENANTQ_AUTH_FAILURE_WINDOW_S": "600",
                **extra_env,
            },
        )
        self.url = f"http://127.0.0.1:{port}"
        wait_until(self._up, timeout=90, interval=0.2, message=f"API at {self.url}")

    def _up(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def guess(self, forwarded_for: str) -> int:
        headers = {"Authorization": f"Bearer guess-{uuid.uuid4().hex}", "X-Forwarded-For": forwarded_for}
        return httpx.get(f"{self.url}/admin/v1/tenants", headers=headers, timeout=10).status_code


class TestForwardedFor:
    def test_forwarded_for_is_honoured_only_from_configured_proxies(
        self, platform_env: dict[str, str], tmp_path: Path
    ) -> None:
        group = ProcessGroup(platform_env, tmp_path)
        try:
            # Default: no proxy is trusted, not even 127.0.0.1, so rotating the header gains nothing.
            plain = ApiProcess(group, {"TENANTQ_FORWARDED_ALLOW_IPS": ""})
            codes = [plain.guess(f"203.0.113.{i}") for i in range(1, 6)]
            assert codes[:3] == [401, 401, 401] and codes[3:] == [429, 429], codes
            # Behind a configured proxy, each forwarded client has its own allowance.
            proxied = ApiProcess(group, {"TENANTQ_FORWARDED_ALLOW_IPS": "127.0.0.1"})
            client = f"198.18.{uuid.uuid4().int % 250}.7"
            assert [proxied.guess(client) for _ in range(4)] == [401, 401, 401, 429]
            assert proxied.guess(f"198.18.{uuid.uuid4().int % 250}.8") == 401
        finally:
            group.stop_all()


# -- IPv6 forms of private IPv4 ------------------------------------------------------------------
class TestEmbeddedIpv4:
    @pytest.mark.parametrize(
        "host",
        [
            "[::127.0.0.1]",  # IPv4-compatible
            "[::ffff:127.0.0.1]",  # IPv4-mapped
            "[::ffff:10.1.2.3]",
            "[64:ff9b::7f00:1]",  # NAT64 of 127.0.0.1
            "[64:ff9b::a9fe:a9fe]",  # NAT64 of 169.254.169.254 (cloud metadata)
            "[2002:7f00:1::]",  # 6to4 of 127.0.0.1
            "[2002:c0a8:101::1]",  # 6to4 of 192.168.1.1
            "[2001:0:4136:e378:8000:63bf:80ff:fffe]",  # Teredo, client 127.0.0.1
            "[64:ff9b:1::a00:1]",  # local-use NAT64
        ],
    )
    def test_refused_like_the_ipv4_they_embed(self, host: str) -> None:
        with pytest.raises(BlockedDestination):
            check_url(f"http://{host}/hook", NetworkPolicy())

    def test_public_ipv4_through_nat64_and_6to4_still_allowed(self) -> None:
        policy = NetworkPolicy()
        for ip in ("64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8"):
            assert policy.why_blocked(ipaddress.ip_address(ip)) is None, ip
        # The operator's IPv4 deny list applies to the embedded address too.
        deny = NetworkPolicy(deny=(ipaddress.ip_network("8.8.8.0/24"),))
        assert deny.why_blocked(ipaddress.ip_address("64:ff9b::808:808")) is not None

    def test_webhook_registration_answers_422(self, api: TestClient) -> None:
        key = ApiKeyFactory()
        resp = api.post("/v1/webhooks", json={"url": "http://[64:ff9b::7f00:1]:6379/"}, headers=auth(key))
        assert resp.status_code == 422, resp.text


# -- Stripe signatures from the future ---------------------------------------------------------
WEBHOOK_SECRET = "whsec_" + uuid.uuid4().hex


def stripe_signature(payload: bytes, timestamp: int) -> str:
    mac = hmac.new(WEBHOOK_SECRET.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


class TestStripeFutureSignature:
    @pytest.fixture(autouse=True)
    def webhook_secret(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(get_settings(), "stripe_webhook_secret", WEBHOOK_SECRET)
        monkeypatch.setattr(get_settings(), "stripe_webhook_tolerance_seconds", 300)

    def post(self, api: TestClient, timestamp: int) -> httpx.Response:
        payload = json.dumps(
            {"id": f"evt_{uuid.uuid4().hex[:24]}", "object": "event", "type": "customer.created", "data": {}}
        ).encode()
        headers = {
            "content-type": "application/json",
            "stripe-signature": stripe_signature(payload, timestamp),
        }
        return api.post("/v1/stripe/webhook", content=payload, headers=headers)

    def test_future_beyond_tolerance_is_refused(self, api: TestClient) -> None:
        resp = self.post(api, int(time.time()) + 3600)
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_signature"
        assert "future" in resp.json()["error"]["message"]

    def test_within_tolerance_either_way_is_accepted(self, api: TestClient) -> None:
        for skew in (-60, 60):
            resp = self.post(api, int(time.time()) + skew)
            assert resp.is_success, resp.text
