"""Dashboard pages over HTTP (in-process): sign-in, cookies, page guards, isolation, assets, CSRF guard,
and the operator JSON endpoints the dashboard adds."""

from __future__ import annotations

import time
import uuid

import pytest

from tenantq.tenants.access.sessions import OPERATOR_AUDIENCE, SESSION_COOKIE, decode_token, looks_like_jwt
from tests.factories import ApiKeyFactory, JobFactory, TenantFactory, auth

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"  # set by the platform_env fixture
PAGES = [
    "/dashboard/jobs",
    "/dashboard/usage",
    "/dashboard/queue",
    "/dashboard/billing",
    "/dashboard/settings",
]
ADMIN_PAGES = ["/admin", "/admin/workers", "/admin/plans", "/admin/billing"]


def login(api, key) -> None:
    resp = api.post("/dashboard/login", data={"api_key": key.plaintext}, follow_redirects=False)
    assert resp.status_code == 303, resp.text


def admin_login(api) -> None:
    resp = api.post("/admin/login", data={"token": ADMIN_TOKEN}, follow_redirects=False)
    assert resp.status_code == 303, resp.text


class TestTenantLogin:
    def test_login_sets_httponly_lax_session_cookie(self, api):
        key = ApiKeyFactory(scopes=["jobs:read", "usage:read"])
        resp = api.post(
            "/dashboard/login",
            data={"api_key": key.plaintext, "next": "/dashboard/usage"},
            follow_redirects=False,
        )
        assert resp.status_code == 303
        assert resp.headers["location"] == "/dashboard/usage"
        cookie = resp.headers["set-cookie"]
        assert cookie.startswith(f"{SESSION_COOKIE}=")
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
        # Plain HTTP here; the Secure flag is set only when the request came over https.
        assert "Secure" not in cookie
        token = resp.cookies[SESSION_COOKIE]
        assert looks_like_jwt(token) and key.plaintext not in cookie
        claims = decode_token(token)
        assert claims.subject == key.tenant_id and claims.key_id == key.id
        assert claims.scopes == frozenset({"jobs:read", "usage:read"})

    def test_session_cookie_works_for_the_api(self, api):
        key = ApiKeyFactory()
        JobFactory(tenant=key.tenant)
        login(api, key)
        resp = api.get("/v1/jobs")
        assert resp.status_code == 200 and len(resp.json()["items"]) == 1

    def test_wrong_key_rerenders_form_with_error(self, api):
        resp = api.post("/dashboard/login", data={"api_key": "tq_live_nope"}, follow_redirects=False)
        assert resp.status_code == 401
        assert "text/html" in resp.headers["content-type"]
        assert "Malformed API key" in resp.text and SESSION_COOKIE not in resp.cookies

    def test_revoked_key_cannot_sign_in(self, api, db_session):
        from tenantq.core.db import utcnow

        key = ApiKeyFactory()
        key.revoked_at = utcnow()
        db_session.commit()
        resp = api.post("/dashboard/login", data={"api_key": key.plaintext}, follow_redirects=False)
        assert resp.status_code == 401 and "revoked" in resp.text

    def test_next_is_never_an_open_redirect(self, api):
        key = ApiKeyFactory()
        for evil in ["https://evil.example/", "//evil.example/x", "/\\evil.example", "/v1/jobs"]:
            resp = api.post(
                "/dashboard/login", data={"api_key": key.plaintext, "next": evil}, follow_redirects=False
            )
            assert resp.headers["location"] == "/dashboard/jobs", evil

    def test_cross_site_form_post_is_refused(self, api):
        key = ApiKeyFactory()
        resp = api.post(
            "/dashboard/login",
            data={"api_key": key.plaintext},
            headers={"Origin": "https://evil.example"},
            follow_redirects=False,
        )
        assert resp.status_code == 403 and SESSION_COOKIE not in resp.cookies

    def test_logout_clears_cookie(self, api):
        login(api, ApiKeyFactory())
        resp = api.post("/dashboard/logout", follow_redirects=False)
        assert resp.status_code == 303 and resp.headers["location"] == "/dashboard/login"
        assert (
            f'{SESSION_COOKIE}=""' in resp.headers["set-cookie"] and "Max-Age=0" in resp.headers["set-cookie"]
        )
        assert api.get("/dashboard/jobs", follow_redirects=False).status_code == 303

    def test_logged_in_user_skips_login_form(self, api):
        login(api, ApiKeyFactory())
        resp = api.get("/dashboard/login", follow_redirects=False)
        assert resp.status_code == 303 and resp.headers["location"] == "/dashboard/jobs"


class TestTenantPages:
    @pytest.mark.parametrize("path", PAGES)
    def test_pages_need_a_session(self, api, path):
        resp = api.get(path, follow_redirects=False)
        assert resp.status_code == 303
        assert resp.headers["location"] == f"/dashboard/login?next={path}"

    @pytest.mark.parametrize("path", PAGES)
    def test_pages_render_with_landmarks_and_assets(self, api, path):
        key = ApiKeyFactory()
        login(api, key)
        resp = api.get(path)
        assert resp.status_code == 200 and "text/html" in resp.headers["content-type"]
        html = resp.text
        assert '<main id="main"' in html and '<nav aria-label="Main">' in html and 'lang="en"' in html
        assert 'aria-current="page"' in html and key.tenant.name in html
        assert "/dashboard/static/dashboard.js?v=" in html and "/dashboard/static/dashboard.css?v=" in html
        assert "https://" not in html.split("<body")[0]  # nothing loaded from a CDN
        csp = resp.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp

    def test_suspended_tenant_sees_banner(self, api):
        tenant = TenantFactory(status="suspended")
        login(api, ApiKeyFactory(tenant=tenant))
        assert "This account is suspended" in api.get("/dashboard/jobs").text

    def test_own_job_page_renders(self, api):
        key = ApiKeyFactory()
        job = JobFactory(tenant=key.tenant)
        login(api, key)
        resp = api.get(f"/dashboard/jobs/{job.id}")
        assert resp.status_code == 200 and f'data-job-id="{job.id}"' in resp.text

    def test_other_tenants_job_page_is_404(self, api):
        mine, theirs = ApiKeyFactory(), ApiKeyFactory()
        their_job = JobFactory(tenant=theirs.tenant, args={"secret": "their-data"})
        login(api, mine)
        resp = api.get(f"/dashboard/jobs/{their_job.id}")
        assert resp.status_code == 404 and "text/html" in resp.headers["content-type"]
        assert "Job not found" in resp.text and "their-data" not in resp.text

    def test_job_page_without_jobs_read_scope_is_403(self, api):
        key = ApiKeyFactory(scopes=["usage:read"])
        job = JobFactory(tenant=key.tenant)
        login(api, key)
        assert api.get(f"/dashboard/jobs/{job.id}").status_code == 403

    def test_unknown_dashboard_path_is_html_404(self, api):
        resp = api.get("/dashboard/nope/nothing")
        assert resp.status_code == 404 and "text/html" in resp.headers["content-type"]
        assert "This page does not exist" in resp.text

    def test_session_dies_with_its_key(self, api, db_session):
        from tenantq.core.db import utcnow

        key = ApiKeyFactory()
        login(api, key)
        assert api.get("/dashboard/jobs").status_code == 200
        key.revoked_at = utcnow()
        db_session.commit()
        assert api.get("/dashboard/jobs", follow_redirects=False).status_code == 303


class TestStaticAssets:
    @pytest.mark.parametrize(
        ("name", "ctype"), [("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")]
    )
    def test_served_with_type_and_cache(self, api, name, ctype):
        resp = api.get(f"/dashboard/static/{name}")
        assert resp.status_code == 200 and resp.headers["content-type"].startswith(ctype)
        assert (
            resp.headers["x-content-type-options"] == "nosniff" and "max-age" in resp.headers["cache-control"]
        )

    @pytest.mark.parametrize("name", ["..%2Frouter.py", "router.py", "..%2F..%2Fsettings.py", "nope.js"])
    def test_only_listed_assets(self, api, name):
        assert api.get(f"/dashboard/static/{name}").status_code == 404


class TestCsrfGuard:
    def test_cookie_write_without_proof_is_refused(self, api):
        login(api, ApiKeyFactory())
        resp = api.post("/v1/jobs", content=b'{"task": "demo.echo"}', headers={"Content-Type": "text/plain"})
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "csrf_check_failed"

    def test_cookie_write_with_header_or_json_passes(self, api):
        login(api, ApiKeyFactory())
        assert api.post("/v1/jobs", json={"task": "demo.echo", "countdown": 3600}).status_code == 202
        resp = api.post(
            "/v1/jobs",
            content=b'{"task": "demo.echo", "countdown": 3600}',
            headers={"X-Requested-With": "tenantq-dashboard", "Content-Type": "application/json"},
        )
        assert resp.status_code == 202

    def test_bearer_clients_untouched(self, api):
        key = ApiKeyFactory()
        resp = api.post(
            "/v1/jobs",
            content=b'{"task": "demo.echo", "countdown": 3600}',
            headers={**auth(key), "Content-Type": "text/plain"},
        )
        assert resp.status_code != 403

    def test_reads_untouched(self, api):
        login(api, ApiKeyFactory())
        assert api.get("/v1/jobs").status_code == 200


class TestOperatorLogin:
    def test_login_stores_operator_jwt_not_the_token(self, api):
        resp = api.post("/admin/login", data={"token": ADMIN_TOKEN}, follow_redirects=False)
        assert resp.status_code == 303 and resp.headers["location"] == "/admin"
        cookie = resp.headers["set-cookie"]
        assert cookie.startswith("tq_admin_session=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
        assert ADMIN_TOKEN not in cookie
        claims = decode_token(resp.cookies["tq_admin_session"], audience=OPERATOR_AUDIENCE)
        assert claims.subject == "operator"

    def test_wrong_token(self, api):
        resp = api.post("/admin/login", data={"token": "nope"}, follow_redirects=False)
        assert resp.status_code == 401 and "tq_admin_session" not in resp.cookies

    def test_tenant_session_is_not_an_operator_session(self, api):
        login(api, ApiKeyFactory())
        api.cookies.set("tq_admin_session", api.cookies[SESSION_COOKIE])
        assert api.get("/admin", follow_redirects=False).status_code == 303
        assert api.get("/admin/v1/overview").status_code == 401

    @pytest.mark.parametrize("path", ADMIN_PAGES)
    def test_pages_need_operator_session(self, api, path):
        resp = api.get(path, follow_redirects=False)
        assert resp.status_code == 303 and resp.headers["location"].startswith("/admin/login")

    @pytest.mark.parametrize("path", ADMIN_PAGES)
    def test_pages_render(self, api, path):
        admin_login(api)
        resp = api.get(path)
        assert resp.status_code == 200 and 'data-area="admin"' in resp.text and "<main" in resp.text

    def test_logout(self, api):
        admin_login(api)
        assert api.post("/admin/logout", follow_redirects=False).status_code == 303
        assert api.get("/admin", follow_redirects=False).status_code == 303


class TestOperatorApi:
    def test_overview_requires_operator(self, api):
        assert api.get("/admin/v1/overview").status_code == 401
        key = ApiKeyFactory()
        assert api.get("/admin/v1/overview", headers=auth(key)).status_code == 401

    def test_overview_lists_tenant_with_depth_and_counts(self, api, redis_client):
        tenant = TenantFactory(plan_name="pro")
        JobFactory(tenant=tenant, status="running")
        JobFactory(tenant=tenant, status="failed")
        redis_client.zadd(f"tq:q:{tenant.id}", {"a": 1, "b": 2, "c": 3})
        redis_client.sadd("tq:paused", tenant.id)
        try:
            body = api.get("/admin/v1/overview", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
        finally:
            redis_client.delete(f"tq:q:{tenant.id}")
            redis_client.srem("tq:paused", tenant.id)
        row = next(t for t in body["tenants"] if t["id"] == tenant.id)
        assert row["plan"] == "pro" and row["status"] == "active" and row["paused"] is True
        assert row["queue_depth"] == 3 and row["running"] == 1
        assert row["jobs_this_period"] == 2 and row["failed_this_period"] == 1
        assert {q["name"] for q in body["exec_queues"]} == {"tq.exec", "tq.system"}
        assert len(body["throughput"]) == 30 and {p["name"] for p in body["plans"]} >= {"pro"}

    def test_throughput_counts_finished_jobs_per_minute(self, api, db_session):
        from tenantq.core.db import utcnow

        tenant = TenantFactory()
        now = utcnow()
        JobFactory(tenant=tenant, status="succeeded", finished_at=now)
        JobFactory(tenant=tenant, status="failed", finished_at=now)
        from tenantq.dashboard.service import throughput

        last = throughput(db_session, now)[-1]
        assert last["succeeded"] >= 1 and last["failed"] >= 1

    def test_workers_without_workers_answer_empty_not_500(self, api):
        admin_login(api)
        resp = api.get("/admin/v1/workers")
        assert resp.status_code == 200
        body = resp.json()
        assert isinstance(body["workers"], list) and "error" in body

    def test_workers_come_from_heartbeats_fast(self, api, redis_client):
        now = time.time()
        fresh, silent = f"fresh-{uuid.uuid4().hex[:6]}@host", f"silent-{uuid.uuid4().hex[:6]}@host"
        redis_client.zadd("tq:workers", {fresh: now - 2, silent: now - 600})
        try:
            admin_login(api)
            api.get("/admin/v1/workers")  # warm: the first request builds the app's lazy parts
            began = time.perf_counter()
            resp = api.get("/admin/v1/workers")
            elapsed = time.perf_counter() - began
        finally:
            redis_client.zrem("tq:workers", fresh, silent)
        assert resp.status_code == 200 and resp.json()["error"] is None
        by_name = {w["name"]: w for w in resp.json()["workers"]}
        assert by_name[fresh]["online"] is True and 1 <= by_name[fresh]["heartbeat_age_s"] < 30
        assert by_name[silent]["online"] is False and by_name[silent]["heartbeat_age_s"] >= 600
        # One Redis read, not a broadcast waiting out its timeout (it took 1-3 s); generous for a loaded CI.
        assert elapsed < 0.5, elapsed

    def test_workers_redis_down_is_reported_not_raised(self):
        import redis

        from tenantq.dashboard.service import heartbeat_workers

        dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
        body = heartbeat_workers(dead)
        assert body["workers"] == [] and body["error"].startswith("Cannot reach Redis")

    def test_usage_page_explains_job_counts(self, api):
        login(api, ApiKeyFactory())
        html = api.get("/dashboard/usage").text
        assert 'id="jobs-counts-note"' in html and "accepted" in html and "ran" in html

    def test_operator_endpoints_in_openapi(self, api):
        paths = api.get("/openapi.json").json()["paths"]
        assert "/admin/v1/overview" in paths and "/admin/v1/workers" in paths
        assert not any(p.startswith("/dashboard") for p in paths)


class TestCsrfGuardOperator:
    def test_operator_cookie_write_without_proof_is_refused(self, api):
        admin_login(api)
        resp = api.post("/admin/v1/tenants/x/suspend", content=b"", headers={"Content-Type": "text/plain"})
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "csrf_check_failed"
        resp = api.post("/admin/v1/tenants/x/suspend", headers={"X-Requested-With": "tenantq-dashboard"})
        assert resp.status_code != 403
