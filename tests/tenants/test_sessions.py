"""Dashboard sessions: exchange, cookie flags, and forged or misused tokens (all 401, or 404 across
tenants)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tenantq.core.settings import get_settings, reset_settings_cache
from tenantq.tenants.access.sessions import (
    ALGORITHM,
    ISSUER,
    OPERATOR_AUDIENCE,
    TENANT_AUDIENCE,
    _signing_secret,
    issue_token,
    key_id,
)
from tests.factories import ApiKeyFactory, JobFactory, auth


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def forge(header: dict, claims: dict, secret: bytes | None) -> str:
    """Build a JWT by hand, so nothing in a JWT library refuses to make the attack token."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    sig = b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()) if secret is not None else ""
    return f"{signing_input}.{sig}"


def claims_for(tenant_id: str, **over) -> dict:
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": TENANT_AUDIENCE,
        "sub": tenant_id,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "scopes": ["jobs:read", "jobs:write"],
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def good_header() -> dict:
    return {"alg": ALGORITHM, "typ": "JWT", "kid": key_id(get_settings().secret_key)}


def server_secret() -> bytes:
    return _signing_secret(get_settings().secret_key).encode()


def assert_401(resp, code: str = "invalid_session") -> None:
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"]["code"] == code


class TestExchange:
    def test_bearer_key_gives_session_and_cookie(self, api):
        key = ApiKeyFactory()
        resp = api.post("/v1/auth/session", headers=auth(key))
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["token_type"] == "bearer" and body["token"].count(".") == 2 and body["expires_at"]
        cookie = resp.headers["set-cookie"]
        assert cookie.startswith("tq_session=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
        assert "Secure" not in cookie  # plain http here
        # The token works as bearer and as cookie, with the key's scopes.
        headers = {"Authorization": f"Bearer {body['token']}"}
        assert api.get("/v1/jobs", headers=headers).status_code == 200
        api.cookies.set("tq_session", body["token"])
        try:
            assert api.get("/v1/jobs").status_code == 200
        finally:
            api.cookies.clear()

    def test_secure_cookie_over_https(self, platform_env):
        from fastapi.testclient import TestClient

        from tenantq.app import create_app

        key = ApiKeyFactory()
        with TestClient(create_app(), base_url="https://testserver") as client:
            resp = client.post("/v1/auth/session", headers=auth(key))
        assert resp.status_code == 200 and "Secure" in resp.headers["set-cookie"]

    def test_session_never_outlives_its_key(self, api):
        from datetime import datetime, timedelta

        from tenantq.core.db import utcnow

        expires = utcnow() + timedelta(minutes=10)
        key = ApiKeyFactory(expires_at=expires)
        body = api.post("/v1/auth/session", headers=auth(key)).json()
        assert datetime.fromisoformat(body["expires_at"]) <= expires

    def test_key_in_body(self, api):
        key = ApiKeyFactory()
        resp = api.post("/v1/auth/session", json={"api_key": key.plaintext})
        assert resp.status_code == 200

    def test_session_scopes_follow_the_key(self, api):
        key = ApiKeyFactory(scopes=["jobs:read"])
        token = api.post("/v1/auth/session", headers=auth(key)).json()["token"]
        resp = api.post("/v1/jobs", json={"task": "demo.echo"}, headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "missing_scope"

    def test_no_key_bad_key_and_session_for_session(self, api):
        assert_401(api.post("/v1/auth/session"), "unauthorized")
        assert_401(api.post("/v1/auth/session", json={"api_key": "tq_live_nope"}), "invalid_api_key")
        key = ApiKeyFactory()
        token = api.post("/v1/auth/session", headers=auth(key)).json()["token"]
        # A session cannot mint a fresh session (that would make a stolen session immortal).
        assert_401(
            api.post("/v1/auth/session", headers={"Authorization": f"Bearer {token}"}), "api_key_required"
        )

    def test_logout_clears_cookie(self, api):
        resp = api.delete("/v1/auth/session")
        assert resp.status_code == 204
        cookie = resp.headers["set-cookie"]
        assert cookie.startswith("tq_session=") and ("Max-Age=0" in cookie or "expires=" in cookie.lower())

    def test_session_dies_with_its_key(self, api):
        key = ApiKeyFactory()
        token = api.post("/v1/auth/session", headers=auth(key)).json()["token"]
        api.delete(f"/v1/keys/{key.id}", headers=auth(key))
        assert_401(api.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"}), "revoked_session")


class TestForgedTokens:
    """Every token here is refused with 401 before any tenant data is read."""

    @pytest.fixture
    def tenant_id(self):
        return ApiKeyFactory().tenant_id

    def get(self, api, token):
        return api.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"})

    def test_control_a_correctly_signed_token_works(self, api):
        key = ApiKeyFactory()
        token = forge(good_header(), claims_for(key.tenant_id, kid_api=key.id), server_secret())
        assert self.get(api, token).status_code == 200

    def test_alg_none(self, api, tenant_id):
        for alg in ("none", "None", "NONE"):
            assert_401(self.get(api, forge({**good_header(), "alg": alg}, claims_for(tenant_id), None)))

    def test_hs256_signed_with_public_key_pem(self, api, tenant_id):
        # The classic algorithm-confusion attack: an attacker who knows a public key signs HS256 with it.
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert_401(self.get(api, forge(good_header(), claims_for(tenant_id), pem)))
        assert_401(self.get(api, forge({**good_header(), "alg": "RS256"}, claims_for(tenant_id), pem)))

    def test_expired(self, api, tenant_id):
        now = int(time.time())
        token = forge(
            good_header(),
            claims_for(tenant_id, iat=now - 7200, nbf=now - 7200, exp=now - 3600),
            server_secret(),
        )
        assert_401(self.get(api, token), "expired_session")

    def test_missing_exp(self, api, tenant_id):
        token = forge(
            good_header(), {k: v for k, v in claims_for(tenant_id).items() if k != "exp"}, server_secret()
        )
        assert_401(self.get(api, token))

    def test_wrong_audience(self, api, tenant_id):
        for aud in ("tenantq:elsewhere", OPERATOR_AUDIENCE):
            assert_401(self.get(api, forge(good_header(), claims_for(tenant_id, aud=aud), server_secret())))

    def test_wrong_issuer(self, api, tenant_id):
        assert_401(self.get(api, forge(good_header(), claims_for(tenant_id, iss="evil"), server_secret())))

    def test_tampered_payload(self, api, tenant_id):
        token = forge(good_header(), claims_for(tenant_id, scopes=["jobs:read"]), server_secret())
        head, _payload, sig = token.split(".")
        widened = b64(
            json.dumps(claims_for(tenant_id, scopes=["jobs:read", "billing:read", "keys:manage"])).encode()
        )
        assert_401(self.get(api, f"{head}.{widened}.{sig}"))

    def test_unknown_kid(self, api, tenant_id):
        assert_401(
            self.get(
                api,
                forge({**good_header(), "kid": "0123456789abcdef"}, claims_for(tenant_id), server_secret()),
            )
        )
        header = good_header()
        del header["kid"]
        assert_401(self.get(api, forge(header, claims_for(tenant_id), server_secret())))

    def test_garbage(self, api):
        for token in (
            "a.b.c",
            f"{b64(b'[1]')}.{b64(b'{}')}.x",
            f"{b64(b'null')}.e30.x",
            "x" * 5000 + ".a.b",
            f"{b64(json.dumps(good_header()).encode())}.{b64(b'[1,2]')}.x",
        ):
            assert_401(self.get(api, token))
        assert_401(self.get(api, "...."), "invalid_api_key")  # not even shaped like a JWT

    def test_unknown_tenant_and_bad_claim_types(self, api, tenant_id):
        assert_401(self.get(api, forge(good_header(), claims_for("no-such-tenant"), server_secret())))
        assert_401(
            self.get(api, forge(good_header(), claims_for(tenant_id, scopes="jobs:read"), server_secret()))
        )
        assert_401(self.get(api, forge(good_header(), claims_for(tenant_id, sub=123), server_secret())))

    def test_tenant_session_is_not_an_operator_credential(self, api, tenant_id):
        token, _ = issue_token(subject=tenant_id, scopes=["jobs:read"])
        assert api.get("/admin/v1/tenants", headers={"Authorization": f"Bearer {token}"}).status_code == 401
        operator_token, _ = issue_token(subject="operator", audience=OPERATOR_AUDIENCE)
        assert (
            api.get("/admin/v1/tenants", headers={"Authorization": f"Bearer {operator_token}"}).status_code
            == 200
        )
        # ... and an operator token is not a tenant session.
        assert_401(self.get(api, operator_token))


class TestCrossTenant:
    def test_session_of_a_on_b_job_is_404(self, api):
        key_a, key_b = ApiKeyFactory(), ApiKeyFactory()
        job_b = JobFactory(tenant=key_b.tenant)
        token_a = api.post("/v1/auth/session", headers=auth(key_a)).json()["token"]
        resp = api.get(f"/v1/jobs/{job_b.id}", headers={"Authorization": f"Bearer {token_a}"})
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
        api.cookies.set("tq_session", token_a)
        try:
            assert api.get(f"/v1/jobs/{job_b.id}").status_code == 404
        finally:
            api.cookies.clear()

    def test_forged_subject_with_a_real_key_id_of_another_tenant(self, api):
        key_a, key_b = ApiKeyFactory(), ApiKeyFactory()
        # Even correctly signed (i.e. the server secret leaked partially?) a session whose key belongs to
        # another tenant is refused: the session dies with, and is bound to, its key.
        token = forge(good_header(), claims_for(key_b.tenant_id, kid_api=key_a.id), server_secret())
        assert_401(api.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"}), "revoked_session")


class TestSecretRotation:
    @pytest.fixture
    def rotate(self, monkeypatch):
        def _rotate(new: str, previous: list[str]) -> None:
            monkeypatch.setenv("TENANTQ_SECRET_KEY", new)
            monkeypatch.setenv("TENANTQ_PREVIOUS_SECRET_KEYS", json.dumps(previous))
            reset_settings_cache()

        yield _rotate
        reset_settings_cache()

    def test_old_sessions_and_keys_survive_rotation_until_secret_dropped(self, api, rotate):
        key = ApiKeyFactory()
        old_secret = get_settings().secret_key
        old_token = api.post("/v1/auth/session", headers=auth(key)).json()["token"]
        rotate("rotated-secret-" + old_secret[-8:], [old_secret])
        assert api.get("/v1/jobs", headers={"Authorization": f"Bearer {old_token}"}).status_code == 200
        assert api.get("/v1/jobs", headers=auth(key)).status_code == 200  # key hashed with the old secret
        new_token = api.post("/v1/auth/session", headers=auth(key)).json()["token"]
        header = json.loads(base64.urlsafe_b64decode(new_token.split(".")[0] + "=="))
        assert header["kid"] == key_id(get_settings().secret_key) != key_id(old_secret)
        rotate(get_settings().secret_key, [])
        assert_401(api.get("/v1/jobs", headers={"Authorization": f"Bearer {old_token}"}))
        assert api.get("/v1/jobs", headers={"Authorization": f"Bearer {new_token}"}).status_code == 200
