"""/v1/keys: list, create (shown once, scopes within the caller's), revoke (immediate), rotate (grace)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from tenantq.core.db import utcnow
from tenantq.tenants.access.keys import ALL_SCOPES, parse_key
from tenantq.tenants.access.models import ApiKey
from tests.factories import ApiKeyFactory, auth

KEY_FIELDS = {"id", "prefix", "name", "scopes", "created_at", "last_used_at", "expires_at", "revoked_at"}


def bearer(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}


def key_count(session, tenant_id: str) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.tenant_id == tenant_id))


class TestListAndCreate:
    def test_list_never_shows_secrets(self, api):
        key = ApiKeyFactory()
        ApiKeyFactory(tenant=key.tenant, scopes=["jobs:read"], name="reader")
        resp = api.get("/v1/keys", headers=auth(key))
        assert resp.status_code == 200
        items = resp.json()["items"]
        assert len(items) == 2 and all(set(i) == KEY_FIELDS for i in items)
        assert key.plaintext not in resp.text and key.secret_hash not in resp.text
        assert {i["name"] for i in items} == {"test key", "reader"}

    def test_create_returns_working_key_once(self, api, db_session):
        key = ApiKeyFactory()
        resp = api.post("/v1/keys", json={"name": "ci 🚀 مفتاح", "scopes": ["jobs:read"]}, headers=auth(key))
        assert resp.status_code == 201, resp.text
        body = resp.json()
        assert set(body) == KEY_FIELDS | {"key"} and body["name"] == "ci 🚀 مفتاح"
        parsed = parse_key(body["key"])
        assert parsed is not None and parsed.kid == body["id"] and body["key"].startswith(body["prefix"])
        # The new key works, with exactly its scopes.
        assert api.get("/v1/jobs", headers=bearer(body["key"])).status_code == 200
        assert (
            api.post("/v1/jobs", json={"task": "demo.echo"}, headers=bearer(body["key"])).status_code == 403
        )
        # Only the hash is stored.
        row = db_session.get(ApiKey, body["id"])
        assert row.secret_hash != body["key"] and body["key"] not in row.secret_hash
        listed = api.get("/v1/keys", headers=auth(key)).text
        assert body["key"] not in listed

    def test_cannot_grant_scopes_the_caller_lacks(self, api, db_session):
        key = ApiKeyFactory(scopes=["keys:manage", "jobs:read"])
        before = key_count(db_session, key.tenant_id)
        resp = api.post("/v1/keys", json={"name": "x", "scopes": ["billing:read"]}, headers=auth(key))
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "scope_escalation"
        assert resp.json()["error"]["details"] == {"missing": ["billing:read"]}
        assert key_count(db_session, key.tenant_id) == before

    def test_create_validation(self, api, db_session):
        key = ApiKeyFactory()
        before = key_count(db_session, key.tenant_id)
        cases = [
            {"name": "x", "scopes": ["admin:everything"]},
            {"name": "x", "scopes": []},
            {"name": "x"},
            {"name": "x", "scopes": ["jobs:read"], "expires_at": (utcnow() - timedelta(hours=1)).isoformat()},
            {"name": "tab\there", "scopes": ["jobs:read"]},
            {"name": "x" * 129, "scopes": ["jobs:read"]},
            {"name": "x", "scopes": ["jobs:read"], "role": "admin"},
        ]
        for body in cases:
            resp = api.post("/v1/keys", json=body, headers=auth(key))
            assert resp.status_code == 422, (body, resp.text)
            assert set(resp.json()["error"]) == {"code", "message", "details"}
        assert key_count(db_session, key.tenant_id) == before

    def test_expiring_key(self, api):
        key = ApiKeyFactory()
        expires = (utcnow() + timedelta(days=1)).isoformat()
        body = api.post(
            "/v1/keys", json={"scopes": list(ALL_SCOPES), "expires_at": expires}, headers=auth(key)
        ).json()
        assert body["expires_at"] is not None

    def test_expired_key_rejected(self, api, db_session):
        key = ApiKeyFactory()
        key.expires_at = utcnow() - timedelta(seconds=1)
        db_session.commit()
        resp = api.get("/v1/jobs", headers=auth(key))
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "expired_api_key"


class TestRevoke:
    def test_revoke_is_immediate_and_idempotent(self, api, db_session):
        admin = ApiKeyFactory()
        victim = ApiKeyFactory(tenant=admin.tenant)
        assert api.get("/v1/jobs", headers=auth(victim)).status_code == 200
        assert api.delete(f"/v1/keys/{victim.id}", headers=auth(admin)).status_code == 204
        # The very next request is refused: there is no key cache to wait for.
        resp = api.get("/v1/jobs", headers=auth(victim))
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "revoked_api_key"
        db_session.expire_all()
        first = db_session.get(ApiKey, victim.id).revoked_at
        assert first is not None
        assert api.delete(f"/v1/keys/{victim.id}", headers=auth(admin)).status_code == 204
        db_session.expire_all()
        assert db_session.get(ApiKey, victim.id).revoked_at == first

    def test_unknown_key_404(self, api):
        key = ApiKeyFactory()
        resp = api.delete("/v1/keys/doesnotexist", headers=auth(key))
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"

    def test_key_can_revoke_itself(self, api):
        key = ApiKeyFactory()
        assert api.delete(f"/v1/keys/{key.id}", headers=auth(key)).status_code == 204
        assert api.get("/v1/keys", headers=auth(key)).status_code == 401


class TestRotate:
    def test_rotate_with_grace_keeps_old_key_until_grace_ends(self, api, db_session):
        key = ApiKeyFactory(scopes=list(ALL_SCOPES), name="deploy")
        resp = api.post(f"/v1/keys/{key.id}/rotate", json={"grace_seconds": 3600}, headers=auth(key))
        assert resp.status_code == 201, resp.text
        new = resp.json()
        assert new["id"] != key.id and new["name"] == "deploy" and new["scopes"] == list(ALL_SCOPES)
        assert api.get("/v1/jobs", headers=bearer(new["key"])).status_code == 200
        assert api.get("/v1/jobs", headers=auth(key)).status_code == 200  # still in its grace period
        db_session.expire_all()
        old = db_session.get(ApiKey, key.id)
        delta = old.expires_at - utcnow()
        assert timedelta(minutes=59) < delta <= timedelta(hours=1)

    def test_rotate_without_grace_stops_old_key_now(self, api):
        key = ApiKeyFactory()
        new = api.post(f"/v1/keys/{key.id}/rotate", json={"grace_seconds": 0}, headers=auth(key)).json()
        resp = api.get("/v1/jobs", headers=auth(key))
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "expired_api_key"
        assert api.get("/v1/jobs", headers=bearer(new["key"])).status_code == 200

    def test_grace_never_extends_an_earlier_expiry(self, api, db_session):
        key = ApiKeyFactory(expires_at=utcnow() + timedelta(minutes=5))
        api.post(f"/v1/keys/{key.id}/rotate", json={"grace_seconds": 86400}, headers=auth(key))
        db_session.expire_all()
        assert db_session.get(ApiKey, key.id).expires_at <= utcnow() + timedelta(minutes=5)

    def test_rotate_validation_and_states(self, api, db_session):
        key = ApiKeyFactory()
        other = ApiKeyFactory(tenant=key.tenant)
        before = key_count(db_session, key.tenant_id)
        for body in ({}, {"grace_seconds": -1}, {"grace_seconds": 10**9}, {"grace_seconds": "soon"}):
            assert api.post(f"/v1/keys/{other.id}/rotate", json=body, headers=auth(key)).status_code == 422
        api.delete(f"/v1/keys/{other.id}", headers=auth(key))
        resp = api.post(f"/v1/keys/{other.id}/rotate", json={"grace_seconds": 10}, headers=auth(key))
        assert resp.status_code == 409 and resp.json()["error"]["code"] == "key_revoked"
        assert key_count(db_session, key.tenant_id) == before

    def test_rotating_a_broader_key_is_escalation(self, api, db_session):
        manager = ApiKeyFactory(scopes=["keys:manage"])
        full = ApiKeyFactory(tenant=manager.tenant)
        before = key_count(db_session, manager.tenant_id)
        resp = api.post(f"/v1/keys/{full.id}/rotate", json={"grace_seconds": 0}, headers=auth(manager))
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "scope_escalation"
        assert key_count(db_session, manager.tenant_id) == before
        assert api.get("/v1/jobs", headers=auth(full)).status_code == 200


class TestLastUsed:
    def test_last_used_written_at_most_once_a_minute(self, api, db_session):
        key = ApiKeyFactory()
        assert key.last_used_at is None
        api.get("/v1/jobs", headers=auth(key))
        db_session.expire_all()
        first = db_session.get(ApiKey, key.id).last_used_at
        assert first is not None
        api.get("/v1/jobs", headers=auth(key))
        db_session.expire_all()
        assert db_session.get(ApiKey, key.id).last_used_at == first
        # Older than the resolution: the next request writes it again.
        row = db_session.get(ApiKey, key.id)
        row.last_used_at = first - timedelta(minutes=2)
        db_session.commit()
        api.get("/v1/jobs", headers=auth(key))
        db_session.expire_all()
        assert db_session.get(ApiKey, key.id).last_used_at >= first
