"""No role starts with a guessable secret or admin token, sessions have a
bounded life and a binding (a live API key, the current admin token), and logout revokes server-side."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tenantq.core.keys import revoked_session_key
from tenantq.core.settings import (
    SECRET_FILE_NAME,
    InsecureSettings,
    Settings,
    check_server_settings,
    get_settings,
    reset_settings_cache,
)
from tenantq.tenants.access.sessions import (
    ADMIN_SESSION_COOKIE,
    ALGORITHM,
    ISSUER,
    OPERATOR_AUDIENCE,
    SESSION_COOKIE,
    TENANT_AUDIENCE,
    _signing_secret,
    key_id,
)
from tests.conftest import ROOT
from tests.factories import ApiKeyFactory, auth

ROLES = [["api"], ["worker"], ["beat"], ["dispatcher"], ["billing", "flush"]]
LONG_SECRET = "s" * 32
LONG_ADMIN_TOKEN = "a" * 32


def run_cli(
    args: list[str], env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """A role that is refused exits at once; one that is not would keep running into the timeout."""
    return subprocess.run(
        [sys.executable, "-m", "tenantq.cli", *args],
        env={**env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def settings_env(monkeypatch):
    """Change TENANTQ_* variables for one test; the settings cache follows them."""

    def _set(**values: str | None) -> None:
        for name, value in values.items():
            if value is None:
                monkeypatch.delenv(f"TENANTQ_{name.upper()}", raising=False)
            else:
                monkeypatch.setenv(f"TENANTQ_{name.upper()}", value)
        reset_settings_cache()

    yield _set
    reset_settings_cache()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def forge(claims: dict) -> str:
    """A token signed with the real server secret: only the claims can make it refused."""
    secret = get_settings().secret_key
    header = {"alg": ALGORITHM, "typ": "JWT", "kid": key_id(secret)}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    sig = hmac.new(_signing_secret(secret).encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


def tenant_claims(key, **over) -> dict:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": TENANT_AUDIENCE,
        "sub": key.tenant_id,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "scopes": ["jobs:read", "jobs:write", "keys:manage"],
        "kid_api": key.id,
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error_code(resp) -> str:
    return resp.json()["error"]["code"]


# ------------------------------------------------------------------------------------ server secret
class TestServerSecret:
    @pytest.mark.parametrize("role", ROLES, ids=" ".join)
    @pytest.mark.parametrize("secret", [None, "", "x" * 31], ids=["unset", "empty", "short"])
    def test_roles_refuse_a_weak_secret_outside_embedded_defaults(self, platform_env, role, secret):
        env = {k: v for k, v in os.environ.items() if k != "TENANTQ_SECRET_KEY"}
        if secret is not None:
            env["TENANTQ_SECRET_KEY"] = secret
        assert len(env.get("TENANTQ_SECRET_KEY", "")) < 32
        out = run_cli(role, env)
        assert out.returncode == 1, out.stdout + out.stderr
        assert "refusing to start" in out.stderr and "TENANTQ_SECRET_KEY" in out.stderr

    @pytest.mark.parametrize("command", ["worker", "beat"])
    def test_celery_started_directly_refuses_a_weak_secret(self, platform_env, command):
        env = {k: v for k, v in os.environ.items() if k != "TENANTQ_SECRET_KEY"}
        env["TENANTQ_SECRET_KEY"] = "x" * 31
        out = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "tenantq.worker", command, "--loglevel=WARNING"],
            env={**env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 1, out.stdout + out.stderr
        assert "refusing to start" in out.stderr and "TENANTQ_SECRET_KEY" in out.stderr

    def test_api_factory_refuses_a_weak_secret(self, platform_env, settings_env):
        from tenantq.app import create_app

        settings_env(secret_key="too-short")
        with pytest.raises(InsecureSettings, match="TENANTQ_SECRET_KEY"):
            create_app()
        settings_env(secret_key=LONG_SECRET)
        create_app()  # 32 bytes is enough

    def test_short_previous_secret_is_refused_too(self):
        settings = Settings(
            redis_url="redis://127.0.0.1:1/0", secret_key=LONG_SECRET, previous_secret_keys=["old"]
        )
        with pytest.raises(InsecureSettings, match="PREVIOUS"):
            check_server_settings(settings)

    def test_embedded_defaults_generate_one_private_secret_per_data_dir(self, tmp_path, settings_env):
        settings_env(database_url=None, redis_url=None, secret_key=None, data_dir=str(tmp_path / "d"))
        first = get_settings().secret_key
        path = tmp_path / "d" / SECRET_FILE_NAME
        assert len(first.encode()) >= 32 and path.read_text().strip() == first
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        check_server_settings(get_settings())  # embedded defaults: no secret to configure
        reset_settings_cache()
        assert get_settings().secret_key == first  # reused, not generated again
        settings_env(data_dir=str(tmp_path / "other"))
        assert get_settings().secret_key != first  # one per data dir

    def test_up_children_get_the_generated_secret(self, tmp_path, settings_env):
        from tenantq.ops.supervisor import Supervisor

        settings_env(database_url=None, redis_url=None, secret_key=None, data_dir=str(tmp_path))
        settings = get_settings()
        supervisor = Supervisor(settings, host="127.0.0.1", port=0, concurrency=1)
        supervisor.redis_url = "unix:///nowhere.sock"
        env = supervisor.child_env()
        # The children see explicit URLs (non-embedded rules), so they must be handed the same secret
        # the CLI commands read from the data dir.
        assert env["TENANTQ_SECRET_KEY"] == (tmp_path / SECRET_FILE_NAME).read_text().strip()
        check_server_settings(Settings(secret_key=env["TENANTQ_SECRET_KEY"], redis_url="x"))

    def test_up_refuses_a_short_secret_set_by_hand(self, platform_env, tmp_path):
        env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTQ_")}
        env["TENANTQ_SECRET_KEY"] = "hand-made"
        out = run_cli(["up", "--data-dir", str(tmp_path)], env, cwd=tmp_path)
        assert out.returncode == 1 and "TENANTQ_SECRET_KEY" in out.stderr, out.stdout + out.stderr
        assert not (tmp_path / "redis.sock").exists()  # refused before anything started

    def test_session_lifetime_has_a_hard_maximum(self, api):
        key = ApiKeyFactory()
        now = int(time.time())
        assert api.get("/v1/jobs", headers=bearer(forge(tenant_claims(key)))).status_code == 200  # control
        ten_years = forge(tenant_claims(key, exp=now + 10 * 365 * 86400))
        resp = api.get("/v1/jobs", headers=bearer(ten_years))
        assert resp.status_code == 401 and error_code(resp) == "invalid_session"
        # Backdating iat does not help: exp - iat is what is bounded.
        backdated = forge(tenant_claims(key, iat=now - 7200, nbf=now - 7200, exp=now + 60))
        assert api.get("/v1/jobs", headers=bearer(backdated)).status_code == 401
        no_iat = forge(tenant_claims(key, iat=None))
        assert api.get("/v1/jobs", headers=bearer(no_iat)).status_code == 401

    def test_tenant_session_must_name_a_live_key(self, api):
        key = ApiKeyFactory()
        unbound = forge(tenant_claims(key, kid_api=None))
        resp = api.get("/v1/jobs", headers=bearer(unbound))
        assert resp.status_code == 401 and error_code(resp) == "invalid_session"
        # The issue's attack: an unbound session minting a permanent key.
        assert api.post("/v1/keys", json={"name": "x"}, headers=bearer(unbound)).status_code == 401
        no_jti = forge(tenant_claims(key, jti=None))
        assert api.get("/v1/jobs", headers=bearer(no_jti)).status_code == 401


# --------------------------------------------------------------------------------- admin token length
class TestAdminTokenLength:
    @pytest.mark.parametrize("role", [["api"], ["dispatcher"]], ids=" ".join)
    def test_roles_refuse_a_short_admin_token(self, platform_env, role):
        env = {**os.environ, "TENANTQ_ADMIN_TOKEN": "a" * 31}
        out = run_cli(role, env)
        assert out.returncode == 1 and "TENANTQ_ADMIN_TOKEN" in out.stderr, out.stdout + out.stderr

    def test_unset_or_empty_admin_token_is_allowed_and_32_is_enough(self):
        base = {"redis_url": "redis://127.0.0.1:1/0", "secret_key": LONG_SECRET}
        check_server_settings(Settings(**base))
        assert Settings(**base, admin_token="").admin_token is None  # empty means unset
        check_server_settings(Settings(**base, admin_token=LONG_ADMIN_TOKEN))
        with pytest.raises(InsecureSettings, match="TENANTQ_ADMIN_TOKEN"):
            check_server_settings(Settings(**base, admin_token="a" * 31))


# ------------------------------------------------------------------------------- operator sessions
def operator_session(api) -> str:
    resp = api.post("/admin/login", data={"token": get_settings().admin_token}, follow_redirects=False)
    assert resp.status_code == 303, resp.text
    return resp.cookies[ADMIN_SESSION_COOKIE]


class TestOperatorSessions:
    def test_rotating_the_admin_token_ends_operator_sessions(self, api, settings_env):
        token = operator_session(api)
        assert api.get("/admin/v1/tenants", headers=bearer(token)).status_code == 200
        settings_env(admin_token="rotated-" + "b" * 32)
        resp = api.get("/admin/v1/tenants", headers=bearer(token))
        assert resp.status_code == 401 and error_code(resp) == "revoked_session"
        api.cookies.set(ADMIN_SESSION_COOKIE, token)
        assert api.get("/admin", follow_redirects=False).status_code == 303  # back to the sign-in page

    def test_no_operator_access_while_the_token_is_unset(self, api, settings_env):
        token = operator_session(api)
        settings_env(admin_token=None)
        resp = api.get("/admin/v1/tenants", headers=bearer(token))
        assert resp.status_code == 403 and error_code(resp) == "operator_disabled"
        api.cookies.set(ADMIN_SESSION_COOKIE, token)
        tenant = ApiKeyFactory().tenant_id
        # The issue's case: a cookie session suspending a tenant after the token was removed.
        resp = api.post(
            f"/admin/v1/tenants/{tenant}/suspend", headers={"X-Requested-With": "tenantq-dashboard"}
        )
        assert resp.status_code == 403 and error_code(resp) == "operator_disabled"

    def test_operator_logout_revokes_the_session(self, api, redis_client):
        token = operator_session(api)
        api.cookies.set(ADMIN_SESSION_COOKIE, token)
        assert api.post("/admin/logout", follow_redirects=False).status_code == 303
        resp = api.get("/admin/v1/tenants", headers=bearer(token))  # a copy kept by whoever had it
        assert resp.status_code == 401 and error_code(resp) == "revoked_session"


class TestTenantLogout:
    def test_api_logout_revokes_the_bearer_session(self, api, redis_client):
        key = ApiKeyFactory()
        body = api.post("/v1/auth/session", headers=auth(key)).json()
        assert api.get("/v1/jobs", headers=bearer(body["token"])).status_code == 200
        assert api.delete("/v1/auth/session", headers=bearer(body["token"])).status_code == 204
        resp = api.get("/v1/jobs", headers=bearer(body["token"]))
        assert resp.status_code == 401 and error_code(resp) == "revoked_session"
        assert api.get("/v1/jobs", headers=auth(key)).status_code == 200  # the key itself lives on
        # The denylist entry lasts until the token's exp, not forever.
        jti = json.loads(base64.urlsafe_b64decode(body["token"].split(".")[1] + "=="))["jti"]
        assert 0 < redis_client.ttl(revoked_session_key(jti)) <= 3601

    def test_dashboard_logout_revokes_the_cookie_session(self, api):
        key = ApiKeyFactory()
        resp = api.post("/dashboard/login", data={"api_key": key.plaintext}, follow_redirects=False)
        token = resp.cookies[SESSION_COOKIE]
        assert api.post("/dashboard/logout", follow_redirects=False).status_code == 303
        resp = api.get("/v1/jobs", headers=bearer(token))
        assert resp.status_code == 401 and error_code(resp) == "revoked_session"

    def test_logout_without_a_valid_session_still_answers(self, api):
        assert api.delete("/v1/auth/session", headers=bearer("a.b.c")).status_code == 204
        assert api.delete("/v1/auth/session").status_code == 204
        # A session of the wrong audience is not revoked by the other logout.
        operator = operator_session(api)
        api.cookies.clear()
        assert api.delete("/v1/auth/session", headers=bearer(operator)).status_code == 204
        assert api.get("/admin/v1/tenants", headers=bearer(operator)).status_code == 200


def test_issued_sessions_carry_their_binding(platform_env):
    from tenantq.tenants.access.sessions import decode_token, issue_token

    key = ApiKeyFactory()
    token, _ = issue_token(subject=key.tenant_id, api_key_id=key.id)
    claims = decode_token(token)
    assert claims.key_id == key.id and len(claims.token_id) == 32
    operator, _ = issue_token(subject="operator", audience=OPERATOR_AUDIENCE)
    assert decode_token(operator, audience=OPERATOR_AUDIENCE).subject == "operator"
    from datetime import timedelta

    with pytest.raises(ValueError, match="exceeds"):
        issue_token(subject=key.tenant_id, api_key_id=key.id, ttl=timedelta(days=1))
