"""One login path: the ``/v1`` and ``/admin/v1`` APIs, ``POST /v1/auth/session``, the dashboard's key
sign-in form and the operator's token sign-in form all spend one failed-login allowance per client
address (``tenantq.tenants.access.auth``)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest
from fastapi.testclient import TestClient

from tenantq.core.settings import get_settings
from tenantq.tenants.access.keys import generate_key
from tenantq.tenants.access.sessions import ADMIN_SESSION_COOKIE, SESSION_COOKIE
from tests.conftest import selects_run_by
from tests.factories import ApiKeyFactory, auth

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"  # set by the platform_env fixture
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
LIMIT = 5

ClientFrom = Callable[[str], TestClient]


def new_address() -> str:
    # 198.18.0.0/15 is reserved for benchmarking: no test elsewhere shares its allowance.
    n = uuid.uuid4().int
    return f"198.18.{n % 250}.{n // 250 % 250 + 1}"


def wrong_key() -> str:
    """Well formed (checksum included) but never issued: a guess."""
    return generate_key(get_settings().env)[0]


def key_form(client: TestClient, api_key: str) -> httpx.Response:
    return client.post("/dashboard/login", data={"api_key": api_key}, follow_redirects=False)


def admin_form(client: TestClient, token: str) -> httpx.Response:
    return client.post("/admin/login", data={"token": token}, follow_redirects=False)


def assert_throttled_page(resp: httpx.Response) -> None:
    """The sign-in page re-rendered with the limiter's message, as for a 401, but 429 + Retry-After."""
    assert resp.status_code == 429, resp.text
    assert "text/html" in resp.headers["content-type"]
    assert "Too many failed authentication attempts" in resp.text and 'role="alert"' in resp.text
    assert int(resp.headers["Retry-After"]) >= 1 and resp.headers["RateLimit-Limit"] == str(LIMIT)
    assert SESSION_COOKIE not in resp.cookies and ADMIN_SESSION_COOKIE not in resp.cookies


def assert_throttled_api(resp: httpx.Response) -> None:
    assert resp.status_code == 429, resp.text
    assert resp.json()["error"]["code"] == "too_many_auth_failures"
    assert int(resp.headers["Retry-After"]) >= 1


class TestOneLoginPath:
    @pytest.fixture(autouse=True)
    def low_limit(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(get_settings(), "auth_failure_limit", LIMIT)
        monkeypatch.setattr(get_settings(), "auth_failure_window_s", 600)

    def test_sixth_wrong_admin_token_on_the_form_is_429(self, client_from: ClientFrom) -> None:
        client = client_from(new_address())
        for _ in range(LIMIT):
            resp = admin_form(client, "guess")
            assert resp.status_code == 401 and "Wrong operator token." in resp.text
        assert_throttled_page(admin_form(client, "guess"))
        # Blocked: the right token waits too, on the form and on the API.
        assert_throttled_page(admin_form(client, ADMIN_TOKEN))
        assert_throttled_api(client.get("/admin/v1/tenants", headers=ADMIN))
        # Another address still signs in.
        assert admin_form(client_from(new_address()), ADMIN_TOKEN).status_code == 303

    def test_dashboard_key_form_is_limited_the_same_way(self, client_from: ClientFrom) -> None:
        key = ApiKeyFactory()
        client = client_from(new_address())
        for _ in range(LIMIT):
            resp = key_form(client, wrong_key())
            assert resp.status_code == 401 and "Unknown API key." in resp.text
        assert_throttled_page(key_form(client, wrong_key()))
        # Made-up keys are not the real key's failures: it still signs in.
        assert key_form(client, key.plaintext).status_code == 303

    def test_one_allowance_across_forms_and_apis(self, client_from: ClientFrom) -> None:
        key = ApiKeyFactory()
        client = client_from(new_address())
        # Five wrong admin tokens, each at another door...
        assert admin_form(client, "guess").status_code == 401
        assert client.get("/admin/v1/tenants", headers={"Authorization": "Bearer guess"}).status_code == 401
        assert admin_form(client, "guess-2").status_code == 401
        assert client.get("/admin/v1/tenants", headers={"Authorization": "Bearer g3"}).status_code == 401
        assert admin_form(client, "guess-4").status_code == 401
        # ...use up the operator credential's one allowance from this address, at every door...
        assert_throttled_api(client.get("/admin/v1/tenants", headers=ADMIN))
        assert_throttled_page(admin_form(client, ADMIN_TOKEN))
        # ...and nothing else's: a tenant key from the same address still gets in.
        assert client.get("/v1/jobs", headers=auth(key)).status_code == 200
        assert key_form(client, key.plaintext).status_code == 303

    def test_a_session_offered_as_key_counts_as_a_guess(self, client_from: ClientFrom) -> None:
        key = ApiKeyFactory()
        token = client_from(new_address()).post("/v1/auth/session", headers=auth(key)).json()["token"]
        client = client_from(new_address())
        for _ in range(LIMIT):
            resp = client.post("/v1/auth/session", headers={"Authorization": f"Bearer {token}"})
            assert resp.status_code == 401 and resp.json()["error"]["code"] == "api_key_required"
        assert_throttled_api(client.post("/v1/auth/session", headers=auth(key)))

    def test_empty_and_cross_site_forms_are_not_guesses(self, client_from: ClientFrom) -> None:
        key = ApiKeyFactory()
        client = client_from(new_address())
        cross_site = {"Origin": "https://evil.example"}
        for _ in range(LIMIT + 2):
            assert key_form(client, "").status_code == 401
            assert admin_form(client, "").status_code == 401
            resp = client.post(
                "/dashboard/login", data={"api_key": "x"}, headers=cross_site, follow_redirects=False
            )
            assert resp.status_code == 403
        assert key_form(client, key.plaintext).status_code == 303
        assert admin_form(client, ADMIN_TOKEN).status_code == 303


class TestOneQuery:
    """Authentication reads the credential's key and tenant in one SELECT (an API key: inner join; a
    session: its tenant outer-joined to the key it was opened with)."""

    @staticmethod
    def selects(run: Callable[[], object]) -> list[str]:
        return selects_run_by(run)

    def test_an_api_key_and_its_tenant(self):
        from tenantq.core.db import session_factory
        from tenantq.tenants.access.auth import _verify_key

        key = ApiKeyFactory()
        with session_factory()() as session:
            selects = self.selects(lambda: _verify_key(session, key.plaintext))
            assert len(selects) == 1, selects
            assert " JOIN tenant " in selects[0] and "OUTER" not in selects[0].upper(), selects[0]

    def test_a_session_its_tenant_and_its_key(self):
        from tenantq.core.db import session_factory
        from tenantq.tenants.access.auth import _authenticate_session
        from tenantq.tenants.access.sessions import issue_token

        key = ApiKeyFactory()
        token, _exp = issue_token(subject=key.tenant_id, scopes=["jobs:read"], api_key_id=key.id)
        with session_factory()() as session:
            contexts = []
            selects = self.selects(lambda: contexts.append(_authenticate_session(session, token)))
            assert len(selects) == 1, selects
            assert contexts[0].tenant.id == key.tenant_id and contexts[0].key_id == key.id
