"""Tenant isolation matrix over EVERY route of the app.

``create_app().routes`` is enumerated; each ``/v1`` route must have a row in ``ROUTES`` and each
``/admin/v1`` route a row in ``ADMIN_ROUTES`` (a route without a row, or a row without a route,
fails ``test_every_route_is_in_the_matrix``), so a new endpoint cannot skip these checks.

Adding a route is one line: ``Route(method, path, scope, kind, body)``. Path parameters are filled by
``BUILDERS`` (keyed by the parameter's name: ``job_id``, ``key_id``, ...), which create a resource
owned by a given tenant; add a builder once per new resource type (``api_builder`` makes one from a
create endpoint in one line). Then, for every row:
- no credential -> 401; a key of the owning tenant lacking the row's scope -> 403;
- ``RESOURCE`` rows: tenant B's key (and B's session) on A's resources -> 404, A's resource unchanged,
  and A itself gets a 2xx (so the 404 is isolation, not a broken builder);
- ``LIST`` rows: B sees B's resource and never A's; ``CREATE`` rows: B creates its own, never A's;
- ``/admin/v1`` rows: tenant key or tenant session -> 401, admin token -> 2xx.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import select

from tenantq.tenants.keys import ALL_SCOPES
from tenantq.tenants.models import ApiKey, Plan
from tests.factories import ApiKeyFactory, JobFactory, TenantFactory, auth

RESOURCE, LIST, CREATE, GLOBAL, PUBLIC = "resource", "list", "create", "global", "public"
ADMIN = {"Authorization": "Bearer test-admin-token"}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    scope: str | None  # required scope; None = any valid tenant credential
    kind: str  # RESOURCE | LIST | CREATE | GLOBAL | PUBLIC
    body: Any = None  # JSON body sent with the request (valid for the owner)
    lists: str | None = None  # LIST rows: the builder (path-parameter name) of the listed resource

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


# ------------------------------------------------------------------------------------------------
# The matrix: one row per (method, path) of /v1. Keep in step with the app (the test enforces it).
ROUTES: list[Route] = [
    Route("POST", "/v1/jobs", "jobs:write", CREATE, {"task": "demo.echo", "args": {"n": 1}}),
    Route("GET", "/v1/jobs", "jobs:read", LIST, lists="job_id"),
    Route("GET", "/v1/jobs/{job_id}", "jobs:read", RESOURCE),
    Route("GET", "/v1/task-types", None, GLOBAL),
    Route("GET", "/v1/keys", "keys:manage", LIST, lists="key_id"),
    Route("POST", "/v1/keys", "keys:manage", CREATE, {"name": "matrix", "scopes": ["jobs:read"]}),
    Route("DELETE", "/v1/keys/{key_id}", "keys:manage", RESOURCE),
    Route("POST", "/v1/keys/{key_id}/rotate", "keys:manage", RESOURCE, {"grace_seconds": 60}),
    Route("POST", "/v1/auth/session", None, CREATE),
    Route("DELETE", "/v1/auth/session", None, PUBLIC),
]


@dataclass(frozen=True)
class AdminRoute:
    method: str
    path: str
    body: Any = None

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


ADMIN_ROUTES: list[AdminRoute] = [
    AdminRoute("GET", "/admin/v1/tenants"),
    AdminRoute("POST", "/admin/v1/tenants", {"name": "matrix-{uniq}"}),
    AdminRoute("GET", "/admin/v1/tenants/{tenant_id}"),
    AdminRoute("PATCH", "/admin/v1/tenants/{tenant_id}", {"overrides": {"concurrency": 3}}),
    AdminRoute("POST", "/admin/v1/tenants/{tenant_id}/suspend"),
    AdminRoute("POST", "/admin/v1/tenants/{tenant_id}/reactivate"),
    AdminRoute("GET", "/admin/v1/tenants/{tenant_id}/keys"),
    AdminRoute("POST", "/admin/v1/tenants/{tenant_id}/keys", {"name": "onboarding", "scopes": ["jobs:read"]}),
    AdminRoute("GET", "/admin/v1/plans"),
    AdminRoute("POST", "/admin/v1/plans", {"name": "matrix-{uniq}"}),
    AdminRoute("PATCH", "/admin/v1/plans/{plan_name}", {"concurrency": 4}),
]


# ------------------------------------------------------------------------------------------------
@dataclass
class Owner:
    """A tenant with a full-scope key; builders create resources owned by it."""

    api: Any
    tenant: Any
    key: Any
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def new(cls, api) -> Owner:
        key = ApiKeyFactory(scopes=list(ALL_SCOPES))
        return cls(api=api, tenant=key.tenant, key=key, headers=auth(key))


@dataclass(frozen=True)
class Builder:
    create: Callable[[Owner], str]  # -> id of a new resource owned by the owner
    snapshot: Callable[[Owner, str], Any] = lambda owner, rid: None  # state another tenant must not change


def api_builder(collection: str, body: dict, id_field: str = "id", readable: bool = True) -> Builder:
    """A builder from a create endpoint: POST ``collection`` as the owner, snapshot via GET item."""

    def create(owner: Owner) -> str:
        resp = owner.api.post(collection, json=body, headers=owner.headers)
        assert resp.status_code < 300, f"builder POST {collection}: {resp.status_code} {resp.text}"
        return resp.json()[id_field]

    def snapshot(owner: Owner, rid: str) -> Any:
        return owner.api.get(f"{collection}/{rid}", headers=owner.headers).json() if readable else None

    return Builder(create, snapshot)


def _job(owner: Owner) -> str:
    return JobFactory(tenant=owner.tenant, status="queued").id


def _job_snapshot(owner: Owner, rid: str) -> Any:
    return owner.api.get(f"/v1/jobs/{rid}", headers=owner.headers).json()


def _key(owner: Owner) -> str:
    return ApiKeyFactory(tenant=owner.tenant, scopes=list(ALL_SCOPES), name="victim").id


def _key_snapshot(owner: Owner, rid: str) -> Any:
    from tests import factories

    session = factories.TenantFactory._meta.sqlalchemy_session
    session.expire_all()
    row = session.scalars(select(ApiKey).where(ApiKey.id == rid)).one()
    return (row.revoked_at, row.expires_at, row.scopes)


# Keyed by path-parameter name. E.g. for schedules: "schedule_id": api_builder("/v1/schedules", {...}).
BUILDERS: dict[str, Builder] = {
    "job_id": Builder(_job, _job_snapshot),
    "key_id": Builder(_key, _key_snapshot),
}

PARAM = re.compile(r"{(\w+)}")


def fill(path: str, owner: Owner) -> tuple[str, list[tuple[Builder, str]]]:
    """Substitute each path parameter with a new resource of ``owner``."""
    built: list[tuple[Builder, str]] = []

    def sub(match: re.Match) -> str:
        name = match.group(1)
        assert name in BUILDERS, f"no builder for path parameter {name!r}: add one to BUILDERS"
        rid = BUILDERS[name].create(owner)
        built.append((BUILDERS[name], rid))
        return rid

    return PARAM.sub(sub, path), built


def app_routes(prefix: str) -> set[tuple[str, str]]:
    from tenantq.platform.app import create_app

    app = create_app()
    try:
        from fastapi.routing import iter_route_contexts  # FastAPI >= 0.16x keeps included routers lazy

        routes = list(iter_route_contexts(app.routes))
    except ImportError:  # pragma: no cover - older FastAPI
        routes = app.routes
    found = set()
    for route in routes:
        path = getattr(route, "path", "")
        if path == prefix.rstrip("/") or path.startswith(prefix):
            for method in getattr(route, "methods", None) or ():
                if method != "HEAD":
                    found.add((method, path))
    return found


def call(api, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None):
    return api.request(method, path, json=body, headers=headers or {})


def session_headers(api, owner: Owner) -> dict[str, str]:
    token = api.post("/v1/auth/session", headers=owner.headers).json()["token"]
    return {"Authorization": f"Bearer {token}"}


# ------------------------------------------------------------------------------------------------
class TestCompleteness:
    def test_every_route_is_in_the_matrix(self):
        assert len({(r.method, r.path) for r in ROUTES}) == len(ROUTES), "duplicate rows in ROUTES"
        table = {(r.method, r.path) for r in ROUTES}
        served = app_routes("/v1/")
        assert not served - table, f"routes missing from ROUTES in tests/test_isolation.py: {sorted(served - table)}"
        assert not table - served, f"rows in ROUTES for routes the app does not serve: {sorted(table - served)}"
        admin_table = {(r.method, r.path) for r in ADMIN_ROUTES}
        admin_served = app_routes("/admin/v1/")
        assert not admin_served - admin_table, f"missing from ADMIN_ROUTES: {sorted(admin_served - admin_table)}"
        assert not admin_table - admin_served, f"stale ADMIN_ROUTES rows: {sorted(admin_table - admin_served)}"

    def test_every_path_parameter_has_a_builder(self):
        for route in ROUTES:
            for name in PARAM.findall(route.path):
                assert name in BUILDERS, f"{route}: no builder for {{{name}}}"


@pytest.mark.parametrize("route", ROUTES, ids=str)
class TestTenantRoutes:
    def test_no_credential_is_401(self, api, route):
        if route.kind == PUBLIC:
            assert call(api, route.method, route.path, route.body).status_code < 300
            return
        owner = Owner.new(api)
        path, _ = fill(route.path, owner)
        resp = call(api, route.method, path, route.body)
        assert resp.status_code == 401, resp.text
        assert resp.json()["error"]["code"] == "unauthorized"

    def test_key_without_the_scope_is_403(self, api, route):
        if route.scope is None:
            pytest.skip("route needs a valid credential, no particular scope")
        owner = Owner.new(api)
        path, built = fill(route.path, owner)
        before = [b.snapshot(owner, rid) for b, rid in built]
        lacking = ApiKeyFactory(tenant=owner.tenant, scopes=[s for s in ALL_SCOPES if s != route.scope])
        resp = call(api, route.method, path, route.body, auth(lacking))
        assert resp.status_code == 403, resp.text
        assert resp.json()["error"]["code"] == "missing_scope"
        assert [b.snapshot(owner, rid) for b, rid in built] == before

    def test_other_tenant(self, api, route):
        a, b = Owner.new(api), Owner.new(api)
        if route.kind == PUBLIC:
            pytest.skip("no tenant data behind this route")
        if route.kind == RESOURCE:
            path, built = fill(route.path, a)
            before = [bl.snapshot(a, rid) for bl, rid in built]
            for headers in (b.headers, session_headers(api, b)):
                resp = call(api, route.method, path, route.body, headers)
                assert resp.status_code == 404, f"{route}: tenant B got {resp.status_code} {resp.text}"
                assert resp.json()["error"]["code"] == "not_found"
            assert [bl.snapshot(a, rid) for bl, rid in built] == before, f"{route}: B changed A's resource"
            own = call(api, route.method, path, route.body, a.headers)
            assert 200 <= own.status_code < 300, f"{route}: owner got {own.status_code} {own.text}"
        elif route.kind == LIST:
            builder = BUILDERS[route.lists]
            a_id, b_id = builder.create(a), builder.create(b)
            seen_by_b = call(api, route.method, route.path, route.body, b.headers)
            assert seen_by_b.status_code == 200, seen_by_b.text
            assert a_id not in seen_by_b.text and a.tenant.id not in seen_by_b.text
            assert b_id in seen_by_b.text
            assert a_id in call(api, route.method, route.path, route.body, a.headers).text
        elif route.kind == CREATE:
            resp = call(api, route.method, route.path, route.body, b.headers)
            assert 200 <= resp.status_code < 300, resp.text
            assert a.tenant.id not in resp.text
        elif route.kind == GLOBAL:
            seen_by_a = call(api, route.method, route.path, route.body, a.headers)
            seen_by_b = call(api, route.method, route.path, route.body, b.headers)
            assert seen_by_a.status_code == seen_by_b.status_code == 200
            assert seen_by_a.json() == seen_by_b.json()
        else:  # pragma: no cover
            pytest.fail(f"unknown kind {route.kind!r}")


def admin_fill(path: str, body: Any) -> tuple[str, Any]:
    """Fill ``{tenant_id}`` with a new tenant, ``{plan_name}`` with a new plan, ``{uniq}`` in the body."""
    from tests import factories

    values: dict[str, str] = {}
    if "{tenant_id}" in path:
        values["tenant_id"] = TenantFactory().id
    if "{plan_name}" in path:
        session = factories.TenantFactory._meta.sqlalchemy_session
        name = f"matrix-plan-{uuid.uuid4().hex[:10]}"
        session.add(Plan(name=name, display_name=name))
        session.commit()
        values["plan_name"] = name
    for name in PARAM.findall(path):
        assert name in values, f"admin matrix: no builder for {{{name}}}"
    uniq = uuid.uuid4().hex[:10]
    if isinstance(body, dict):
        body = {k: (v.replace("{uniq}", uniq) if isinstance(v, str) else v) for k, v in body.items()}
    return path.format(**values), body


@pytest.mark.parametrize("route", ADMIN_ROUTES, ids=str)
class TestOperatorRoutes:
    def test_tenant_credentials_are_401_and_admin_token_works(self, api, route):
        owner = Owner.new(api)
        path, body = admin_fill(route.path, route.body)
        for headers in ({}, owner.headers, session_headers(api, owner)):
            resp = call(api, route.method, path, body, headers)
            assert resp.status_code == 401, f"{route} with {list(headers)}: {resp.status_code} {resp.text}"
        resp = call(api, route.method, path, body, ADMIN)
        assert 200 <= resp.status_code < 300, f"{route}: {resp.status_code} {resp.text}"
