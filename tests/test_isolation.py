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
- ``AGGREGATE`` rows (figures over the caller's own data, e.g. usage): A's data (made by the row's
  ``sums`` builder) leaves B's answer byte for byte unchanged and never appears in it, while A's answer
  does reflect it (so the comparison is not vacuous);
- ``SIGNED`` rows (webhooks authenticated by a signature over the body, not by a tenant credential):
  unsigned, wrongly signed, or carrying a tenant's key instead -> a 4xx error (503 while no secret is
  configured), never a 2xx or a 500, and nothing is recorded;
- ``/admin/v1`` rows: tenant key or tenant session -> 401, admin token -> 2xx. Their path parameters
  are filled by ``ADMIN_PARAMS``; a row whose admin call changes global state undoes it in ``after``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import delete, func, select, update

from tenantq.billing.invoicing.models import BillingPeriod, Invoice, StripeEvent
from tenantq.billing.invoicing.pricing import PRICED_METRICS, set_price
from tenantq.billing.usage.models import UsageEvent
from tenantq.core.db import utcnow
from tenantq.core.redis import get_redis
from tenantq.core.settings import reset_settings_cache
from tenantq.platform.webhooks.models import WebhookAttempt, WebhookDelivery
from tenantq.tenants.access.keys import ALL_SCOPES
from tenantq.tenants.access.models import ApiKey
from tenantq.tenants.access.sessions import (
    ADMIN_SESSION_COOKIE,
    ALGORITHM,
    ISSUER,
    OPERATOR_AUDIENCE,
    SESSION_COOKIE,
    TENANT_AUDIENCE,
    _signing_secret,
    admin_token_fingerprint,
    key_id,
)
from tenantq.tenants.accounts.models import Plan, Tenant
from tenantq.tenants.accounts.service import OPERATOR_PAUSE_REASON, PAUSED_SET, PAUSED_WHY
from tests.billing.invoice_factories import InvoiceFactory, UsageEventFactory
from tests.factories import ApiKeyFactory, JobFactory, TenantFactory, auth

RESOURCE, LIST, CREATE, GLOBAL, PUBLIC, SIGNED = "resource", "list", "create", "global", "public", "signed"
AGGREGATE = "aggregate"
ADMIN = {"Authorization": "Bearer test-admin-token-0123456789abcdef"}


@dataclass(frozen=True)
class Signed:
    """How a SIGNED route is authenticated: a signature in ``header``, checked with the secret in the
    setting ``secret_env``. Without that secret the route must refuse everything (``unconfigured``)."""

    header: str
    secret_env: str
    recorded: Callable[[], int]  # rows the route stores when it accepts a request (must not grow)
    unconfigured: tuple[int, str]  # (status, error code) while the secret is not set
    rejected: tuple[int, str]  # (status, error code) for a missing or wrong signature


def _stripe_events() -> int:
    return _session().scalar(select(func.count()).select_from(StripeEvent))


STRIPE = Signed(
    "Stripe-Signature",
    "TENANTQ_STRIPE_WEBHOOK_SECRET",
    _stripe_events,
    unconfigured=(503, "stripe_webhook_not_configured"),
    rejected=(400, "invalid_signature"),
)
# A well-formed event: were the signature not checked, the route would accept and store it.
STRIPE_EVENT = {
    "id": "evt_matrix_unsigned",
    "object": "event",
    "type": "invoice.paid",
    "data": {"object": {"id": "in_matrix", "object": "invoice", "metadata": {}}},
}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    scope: str | None  # required scope; None = any valid tenant credential
    kind: str  # RESOURCE | LIST | CREATE | AGGREGATE | GLOBAL | PUBLIC | SIGNED
    body: Any = None  # JSON body sent with the request (valid for the owner)
    lists: str | None = None  # LIST rows: the builder (path-parameter name) of the listed resource
    sums: str | None = None  # AGGREGATE rows: the builder of the data the figures are computed from
    # Path parameter -> BUILDERS key, where this route needs another state of the resource than the
    # parameter's default builder makes (e.g. a job still waiting, so that cancelling it changes it).
    using: Mapping[str, str] = field(default_factory=dict, hash=False)
    signed: Signed | None = None  # SIGNED rows: how the request is authenticated
    query: str = ""  # a query string sent with the path: a second row for a route that behaves otherwise

    def __str__(self) -> str:
        return f"{self.method} {self.path}" + (f"?{self.query}" if self.query else "")


# Far enough apart (and far enough ahead) for every plan's minimum interval; beat never fires it in a test.
SCHEDULE = {"task": "demo.echo", "args": {"from": "matrix"}, "interval_seconds": 3600}
# A literal public address: passes the private-address policy without DNS. Nothing is ever delivered
# to it: no job of the tenant that registers it finishes during these tests.
WEBHOOK = {"url": "https://93.184.215.14/matrix-hook", "events": ["job.succeeded", "job.failed"]}

# ------------------------------------------------------------------------------------------------
# The matrix: one row per (method, path) of /v1. Keep in step with the app (the test enforces it).
ROUTES: list[Route] = [
    Route("POST", "/v1/jobs", "jobs:write", CREATE, {"task": "demo.echo", "args": {"n": 1}}),
    Route("GET", "/v1/jobs", "jobs:read", LIST, lists="job_id"),
    Route("GET", "/v1/jobs/{job_id}", "jobs:read", RESOURCE),
    # Long-poll: another tenant's wait is refused at once (its job is failed, so the owner's returns too).
    Route("GET", "/v1/jobs/{job_id}", "jobs:read", RESOURCE, query="wait=5"),
    # Event stream: the owner's ends after one event (a finished job), another tenant gets 404.
    Route("GET", "/v1/jobs/{job_id}/events", "jobs:read", RESOURCE),
    # A waiting job: the owner's cancel dequeues it, so "B changed nothing" is a real check.
    Route("POST", "/v1/jobs/{job_id}/cancel", "jobs:write", RESOURCE, using={"job_id": "queued_job_id"}),
    Route("POST", "/v1/jobs/{job_id}/retry", "jobs:write", RESOURCE),  # job_id builds a failed job
    Route(
        "POST", "/v1/workflows", "jobs:write", CREATE, {"steps": [{"task": "demo.echo", "args": {"n": 1}}]}
    ),
    Route("GET", "/v1/workflows/{workflow_id}", "jobs:read", RESOURCE),
    Route("POST", "/v1/workflows/{workflow_id}/cancel", "jobs:write", RESOURCE),
    Route("GET", "/v1/invoices", "billing:read", LIST, lists="invoice_id"),
    Route("GET", "/v1/invoices/{invoice_id}", "billing:read", RESOURCE),
    Route("POST", "/v1/stripe/webhook", None, SIGNED, STRIPE_EVENT, signed=STRIPE),
    Route("GET", "/v1/task-types", None, GLOBAL),
    Route("POST", "/v1/schedules", "jobs:write", CREATE, SCHEDULE),
    Route("GET", "/v1/schedules", "jobs:read", LIST, lists="schedule_id"),
    Route("GET", "/v1/schedules/{schedule_id}", "jobs:read", RESOURCE),
    Route(
        "PATCH",
        "/v1/schedules/{schedule_id}",
        "jobs:write",
        RESOURCE,
        {"enabled": False, "interval_seconds": 7200},
    ),
    Route("DELETE", "/v1/schedules/{schedule_id}", "jobs:write", RESOURCE),
    Route("POST", "/v1/webhooks", "jobs:write", CREATE, WEBHOOK),
    Route("GET", "/v1/webhooks", "jobs:read", LIST, lists="webhook_id"),
    Route("GET", "/v1/webhooks/{webhook_id}", "jobs:read", RESOURCE),
    Route("DELETE", "/v1/webhooks/{webhook_id}", "jobs:write", RESOURCE),
    Route(
        "GET",
        "/v1/webhooks/{webhook_id}/deliveries",
        "jobs:read",
        RESOURCE,
        using={"webhook_id": "delivered_webhook_id"},
    ),
    Route("GET", "/v1/usage", "usage:read", AGGREGATE, sums="usage"),
    Route("GET", "/v1/billing/settings", "billing:read", AGGREGATE, sums="billing_email"),
    Route("PUT", "/v1/billing/settings", "keys:manage", CREATE, {"billing_email": "billing@example.com"}),
    Route("GET", "/v1/usage/report", "usage:read", AGGREGATE, sums="usage"),
    Route(
        "POST", "/v1/jobs/batch", "jobs:write", CREATE, {"jobs": [{"task": "demo.echo", "args": {"n": 1}}]}
    ),
    Route("GET", "/v1/queue", "jobs:read", AGGREGATE, sums="queued_jobs"),
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
    after: Callable[[], None] | None = None  # undoes global state the admin call changed

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
    AdminRoute("GET", "/admin/v1/overview"),
    AdminRoute("GET", "/admin/v1/workers"),  # no worker needed: reads the heartbeats in Redis
    AdminRoute("GET", "/admin/v1/billing/periods"),
    # Billing periods are global and close in order: close one long before any usage or tenant of the
    # suite (nothing to bill, nothing to block), and reopen it after, so due periods are as before.
    AdminRoute(
        "POST", "/admin/v1/billing/close", {"period": "{far_past}"}, after=lambda: _reopen_period(FAR_PAST)
    ),
    AdminRoute("GET", "/admin/v1/billing/prices"),
    AdminRoute("PUT", "/admin/v1/billing/prices/{plan}/{metric}", {"tiers": [{"unit_price": "0.01"}]}),
    AdminRoute("DELETE", "/admin/v1/billing/prices/{plan}/{metric}"),
    AdminRoute("GET", "/admin/v1/reports/usage"),
    AdminRoute("GET", "/admin/v1/billing/invoices/{invoice_id}"),
    AdminRoute("POST", "/admin/v1/billing/invoices/{invoice_id}/void", {"reason": "matrix", "reissue": True}),
    AdminRoute(
        "POST", "/admin/v1/billing/invoices/{invoice_id}/credit-notes", {"amount": "1.00", "reason": "x"}
    ),
    AdminRoute("GET", "/admin/v1/audit"),
    AdminRoute("GET", "/admin/v1/queues"),
    AdminRoute("POST", "/admin/v1/tenants/{tenant_id}/queue/pause"),
    AdminRoute("POST", "/admin/v1/tenants/{tenant_id}/queue/resume"),
    AdminRoute("POST", "/admin/v1/tenants/{tenant_id}/queue/purge"),
    AdminRoute("PUT", "/admin/v1/tenants/{tenant_id}/queue/pool"),
    AdminRoute("DELETE", "/admin/v1/tenants/{tenant_id}/queue/pool"),
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


def _session():
    from tests import factories

    return factories.TenantFactory._meta.sqlalchemy_session


def _failed_job(owner: Owner) -> str:
    # Failed for good, so the owner can re-run it (202); cancelling it would be a no-op 200.
    started = utcnow() - timedelta(seconds=5)
    return JobFactory(
        tenant=owner.tenant,
        status="failed",
        attempts=1,
        error="RuntimeError: boom",
        started_at=started,
        finished_at=started + timedelta(seconds=1),
    ).id


def _queued_job(owner: Owner) -> str:
    return JobFactory(tenant=owner.tenant, status="queued").id


def _job_snapshot(owner: Owner, rid: str) -> Any:
    return owner.api.get(f"/v1/jobs/{rid}", headers=owner.headers).json()


def _key(owner: Owner) -> str:
    return ApiKeyFactory(tenant=owner.tenant, scopes=list(ALL_SCOPES), name="victim").id


def _key_snapshot(owner: Owner, rid: str) -> Any:
    session = _session()
    session.expire_all()
    row = session.scalars(select(ApiKey).where(ApiKey.id == rid)).one()
    return (row.revoked_at, row.expires_at, row.scopes)


def _invoice(owner: Owner) -> str:
    # Written for this tenant alone (closing a period would bill everyone); its far-past period is
    # never one the billing tests close, and they delete every invoice before they start anyway.
    return InvoiceFactory(tenant=owner.tenant, usage={"jobs": 10}).id


def _invoice_snapshot(owner: Owner, rid: str) -> Any:
    return owner.api.get(f"/v1/invoices/{rid}", headers=owner.headers).json()


def _delivered_webhook(owner: Owner) -> str:
    """A webhook with one finished (failed, never to be retried) delivery and its attempt, so its
    delivery list has something another tenant must not see."""
    wid = WEBHOOK_BUILDER.create(owner)
    session = _session()
    now = utcnow()
    delivery = WebhookDelivery(
        tenant_id=owner.tenant.id,
        endpoint_id=wid,
        event_id=f"evt_{uuid.uuid4().hex}",
        event_type="job.failed",
        job_id=None,
        body='{"matrix": true}',
        status="failed",
        attempts=1,
        next_attempt_at=None,
        created_at=now,
        finished_at=now,
    )
    session.add(delivery)
    session.flush()
    session.add(
        WebhookAttempt(delivery_id=delivery.id, attempt=1, status_code=500, error="matrix", created_at=now)
    )
    session.commit()
    return wid


def _delivered_webhook_snapshot(owner: Owner, rid: str) -> Any:
    return (
        WEBHOOK_BUILDER.snapshot(owner, rid),
        owner.api.get(f"/v1/webhooks/{rid}/deliveries", headers=owner.headers).json(),
    )


def _usage(owner: Owner) -> str:
    """Current-period usage of the owner under a task name of its own (returned): jobs accepted,
    running and waiting, and what metering records for a finished attempt."""
    task = f"matrix.usage_{uuid.uuid4().hex[:10]}"
    now = utcnow()
    done = JobFactory(
        tenant=owner.tenant,
        task=task,
        status="succeeded",
        attempts=1,
        started_at=now - timedelta(seconds=3),
        finished_at=now - timedelta(seconds=1),
    )
    JobFactory(tenant=owner.tenant, task=task, status="running", attempts=1, started_at=now)
    JobFactory(tenant=owner.tenant, task=task, status="queued")
    for metric, quantity in {"jobs": 1, "attempts": 1, "compute_ms": 1500, "wall_ms": 2000}.items():
        UsageEventFactory(
            tenant=owner.tenant, job_id=done.id, task=task, metric=metric, quantity=quantity, occurred_at=now
        )
    return task


def _billing_email(owner: Owner) -> str:
    email = f"billing-{uuid.uuid4().hex[:10]}@example.com"
    session = _session()
    session.get_one(Tenant, owner.tenant.id).billing_email = email
    session.commit()
    return email


def _queued_batch(owner: Owner) -> str:
    """Three jobs submitted in one batch; returns the first job's id as the marker."""
    resp = owner.api.post("/v1/jobs/batch", json={"jobs": [{"task": "demo.echo"}] * 3}, headers=owner.headers)
    assert resp.status_code == 200, resp.text
    return resp.json()["items"][0]["job"]["id"]


def hold_queue(builder: Builder) -> Builder:
    """``builder`` with the owner's queue paused first (as an operator pause would), so a worker that
    is running in this test session cannot move the resource's jobs between two snapshots."""

    def create(owner: Owner) -> str:
        client = get_redis()
        client.sadd(PAUSED_SET, owner.tenant.id)
        client.hset(PAUSED_WHY, owner.tenant.id, OPERATOR_PAUSE_REASON)
        return builder.create(owner)

    return Builder(create, builder.snapshot)


WEBHOOK_BUILDER = api_builder("/v1/webhooks", WEBHOOK)

# Keyed by path-parameter name (or the name a row gives in ``using``, ``lists`` or ``sums``).
BUILDERS: dict[str, Builder] = {
    "job_id": Builder(_failed_job, _job_snapshot),
    "queued_job_id": Builder(_queued_job, _job_snapshot),
    "key_id": Builder(_key, _key_snapshot),
    "invoice_id": Builder(_invoice, _invoice_snapshot),
    "workflow_id": hold_queue(
        api_builder(
            "/v1/workflows", {"steps": [{"task": "demo.echo", "args": {"n": 1}}, {"task": "demo.echo"}]}
        )
    ),
    "schedule_id": api_builder("/v1/schedules", SCHEDULE),
    "webhook_id": WEBHOOK_BUILDER,
    "delivered_webhook_id": Builder(_delivered_webhook, _delivered_webhook_snapshot),
    "usage": Builder(_usage),  # -> a task name that appears in the owner's usage
    "billing_email": Builder(_billing_email),  # -> the owner's new billing email
    # Three jobs waiting in the owner's (paused) queue: its depth and paused flag are the owner's figures.
    "queued_jobs": hold_queue(Builder(_queued_batch)),
}

PARAM = re.compile(r"{(\w+)}")


def fill(route: Route, owner: Owner) -> tuple[str, list[tuple[Builder, str]]]:
    """Substitute each path parameter of ``route`` with a new resource of ``owner``."""
    built: list[tuple[Builder, str]] = []

    def sub(match: re.Match) -> str:
        name = route.using.get(match.group(1), match.group(1))
        assert name in BUILDERS, f"no builder for path parameter {name!r}: add one to BUILDERS"
        rid = BUILDERS[name].create(owner)
        built.append((BUILDERS[name], rid))
        return rid

    return PARAM.sub(sub, route.path) + (f"?{route.query}" if route.query else ""), built


def app_routes(prefix: str) -> set[tuple[str, str]]:
    from tenantq.app import create_app

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
    """The owner's session token as a bearer header. The exchange also sets the ``tq_session`` cookie
    in the client's jar: drop it, or every later request of the test would carry that credential too
    (a "no credential" request would then be a cookie-session one)."""
    token = api.post("/v1/auth/session", headers=owner.headers).json()["token"]
    api.cookies.clear()
    return {"Authorization": f"Bearer {token}"}


# --- forged session tokens ----------------------------------------------------------------------
# Secrets an attacker would try first: the constant default of earlier releases and common guesses.
GUESSED_SECRETS = ["dev-insecure-secret-change-me", "secret", "change-me", "tenantq", "s" * 32]


# POST /v1/auth/session opens sessions with an API key only, and says so.
REFUSED_CODES = ("unauthorized", "invalid_session", "api_key_required")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _sign(claims: dict[str, Any], secret: str) -> str:
    """An HS256 token exactly as the server makes one (derived key, ``kid``), but with ``secret``."""
    header = {"alg": ALGORITHM, "typ": "JWT", "kid": key_id(secret)}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    sig = hmac.new(_signing_secret(secret).encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(sig)}"


def _unsigned(claims: dict[str, Any]) -> str:
    header = {"alg": "none", "typ": "JWT"}
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}."


def _claims(audience: str, subject: str, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "aud": audience,
        "sub": subject,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "scopes": sorted(ALL_SCOPES),
        **extra,
    }


def forged_tenant_tokens(victim: Owner) -> dict[str, str]:
    """Tokens naming the victim's tenant and key with every claim right, none signed with the secret."""
    claims = _claims(TENANT_AUDIENCE, victim.tenant.id, kid_api=victim.key.id)
    forged = {f"hs256 secret {s!r}": _sign(claims, s) for s in GUESSED_SECRETS}
    forged["alg none"] = _unsigned(claims)
    forged["another tenant's id, wrong key"] = _sign(claims, uuid.uuid4().hex * 2)
    return forged


def forged_operator_tokens() -> dict[str, str]:
    token = ADMIN["Authorization"].removeprefix("Bearer ")
    claims = _claims(OPERATOR_AUDIENCE, "operator", adm=admin_token_fingerprint(token))
    forged = {f"hs256 secret {s!r}": _sign(claims, s) for s in GUESSED_SECRETS}
    forged["alg none"] = _unsigned(claims)
    forged["wrong key"] = _sign(claims, uuid.uuid4().hex * 2)
    return forged


def refused_everywhere(api, method: str, path: str, body: Any, tokens: dict[str, str], cookie: str) -> None:
    """Each token, as a bearer header and as the session cookie, answers 401. The cookie request
    passes the CSRF check, so that only the token can be what refuses it."""
    for name, token in tokens.items():
        for headers in (
            {"Authorization": f"Bearer {token}"},
            {"Cookie": f"{cookie}={token}", "X-Requested-With": "fetch"},
        ):
            resp = call(api, method, path, body, headers)
            assert resp.status_code == 401, f"{method} {path} with {name} ({list(headers)}): {resp.text}"
            assert resp.json()["error"]["code"] in REFUSED_CODES, resp.text


# ------------------------------------------------------------------------------------------------
class TestCompleteness:
    def test_every_route_is_in_the_matrix(self):
        assert len({(r.method, r.path, r.query) for r in ROUTES}) == len(ROUTES), "duplicate rows in ROUTES"
        table = {(r.method, r.path) for r in ROUTES}
        served = app_routes("/v1/")
        assert not served - table, (
            f"routes missing from ROUTES in tests/test_isolation.py: {sorted(served - table)}"
        )
        assert not table - served, (
            f"rows in ROUTES for routes the app does not serve: {sorted(table - served)}"
        )
        admin_table = {(r.method, r.path) for r in ADMIN_ROUTES}
        admin_served = app_routes("/admin/v1/")
        assert not admin_served - admin_table, (
            f"missing from ADMIN_ROUTES: {sorted(admin_served - admin_table)}"
        )
        assert not admin_table - admin_served, (
            f"stale ADMIN_ROUTES rows: {sorted(admin_table - admin_served)}"
        )

    def test_every_path_parameter_has_a_builder(self):
        for route in ROUTES:
            for name in PARAM.findall(route.path):
                assert route.using.get(name, name) in BUILDERS, f"{route}: no builder for {{{name}}}"
            assert (route.kind == SIGNED) == (route.signed is not None), (
                f"{route}: SIGNED rows say how they are signed"
            )
            assert (route.kind == LIST) == (route.lists in BUILDERS), (
                f"{route}: LIST rows name the listed builder"
            )
            assert (route.kind == AGGREGATE) == (route.sums in BUILDERS), (
                f"{route}: AGGREGATE rows name a builder"
            )


@pytest.mark.parametrize("route", ROUTES, ids=str)
class TestTenantRoutes:
    def test_no_credential_is_401(self, api, route, monkeypatch):
        if route.kind == PUBLIC:
            assert call(api, route.method, route.path, route.body).status_code < 300
            return
        if route.kind == SIGNED:
            check_signature_required(api, route, monkeypatch)
            return
        owner = Owner.new(api)
        path, _ = fill(route, owner)
        resp = call(api, route.method, path, route.body)
        assert resp.status_code == 401, resp.text
        assert resp.json()["error"]["code"] == "unauthorized"

    def test_forged_session_tokens_are_401(self, api, route):
        if route.kind in (PUBLIC, SIGNED):
            pytest.skip("no session credential is read here (see test_no_credential_is_401)")
        victim = Owner.new(api)
        path, built = fill(route, victim)
        before = [b.snapshot(victim, rid) for b, rid in built]
        refused_everywhere(api, route.method, path, route.body, forged_tenant_tokens(victim), SESSION_COOKIE)
        assert [b.snapshot(victim, rid) for b, rid in built] == before

    def test_key_without_the_scope_is_403(self, api, route):
        if route.kind == SIGNED:
            pytest.skip("authenticated by a signature, not a tenant key: no scope applies")
        if route.scope is None:
            pytest.skip("route needs a valid credential, no particular scope")
        owner = Owner.new(api)
        path, built = fill(route, owner)
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
        if route.kind == SIGNED:
            pytest.skip(
                "no tenant credential is accepted here at all (a tenant key is refused like no "
                "signature, see test_no_credential_is_401): there is no 'other tenant' to test"
            )
        if route.kind == RESOURCE:
            path, built = fill(route, a)
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
        elif route.kind == AGGREGATE:
            # A's data is made between B's two reads. It must not move B's figures by a byte (nor show
            # up in them), while A's own answer does reflect it: otherwise "unchanged" proves nothing.
            # (A is not read before: a first read may cache its figures, e.g. quota counters in Redis.)
            b_credentials = (b.headers, session_headers(api, b))
            before = [call(api, route.method, route.path, route.body, h) for h in b_credentials]
            assert all(r.status_code == 200 for r in before), [r.text for r in before]
            marker = BUILDERS[route.sums].create(a)
            for headers, earlier in zip(b_credentials, before, strict=True):
                later = call(api, route.method, route.path, route.body, headers)
                assert later.status_code == 200, later.text
                assert later.content == earlier.content, (
                    f"{route}: A's data changed B's figures: {later.text}"
                )
                assert marker not in later.text and a.tenant.id not in later.text
            seen_by_a = call(api, route.method, route.path, route.body, a.headers)
            assert seen_by_a.status_code == 200, seen_by_a.text
            assert seen_by_a.content != before[0].content, f"{route}: A's answer does not reflect A's data"
        elif route.kind == GLOBAL:
            seen_by_a = call(api, route.method, route.path, route.body, a.headers)
            seen_by_b = call(api, route.method, route.path, route.body, b.headers)
            assert seen_by_a.status_code == seen_by_b.status_code == 200
            assert seen_by_a.json() == seen_by_b.json()
        else:  # pragma: no cover
            pytest.fail(f"unknown kind {route.kind!r}")


def check_signature_required(api, route: Route, monkeypatch) -> None:
    """A SIGNED route refuses every request it cannot verify: with no secret configured, without a
    signature, with a forged one, and with a tenant's key (or session) in place of a signature."""
    spec = route.signed
    owner = Owner.new(api)
    before = spec.recorded()

    def refused(resp, expected: tuple[int, str], what: str) -> None:
        assert resp.status_code == expected[0], f"{route} {what}: {resp.status_code} {resp.text}"
        assert resp.json()["error"]["code"] == expected[1], f"{route} {what}: {resp.text}"

    monkeypatch.delenv(spec.secret_env, raising=False)
    reset_settings_cache()
    try:
        refused(
            call(api, route.method, route.path, route.body), spec.unconfigured, "with no secret configured"
        )
        refused(
            call(api, route.method, route.path, route.body, owner.headers),
            spec.unconfigured,
            "with no secret configured, tenant key",
        )
        monkeypatch.setenv(spec.secret_env, "whsec_matrix_" + uuid.uuid4().hex)
        reset_settings_cache()
        forged = {spec.header: f"t={int(utcnow().timestamp())},v1={'0' * 64}"}
        for what, headers in [
            ("unsigned", {}),
            ("forged signature", forged),
            ("garbage signature", {spec.header: "not a signature"}),
            ("tenant key instead of a signature", owner.headers),
            ("tenant session instead of a signature", session_headers(api, owner)),
            ("tenant key and a forged signature", {**owner.headers, **forged}),
        ]:
            refused(call(api, route.method, route.path, route.body, headers), spec.rejected, what)
    finally:
        monkeypatch.undo()
        reset_settings_cache()
    assert spec.recorded() == before, f"{route}: an unverified request was recorded"


# --- /admin/v1 ----------------------------------------------------------------------------------
FAR_PAST = "1970-01"  # before every tenant and usage event of the suite


def _new_plan() -> str:
    session = _session()
    name = f"matrix-plan-{uuid.uuid4().hex[:10]}"
    session.add(Plan(name=name, display_name=name))
    session.commit()
    return name


def _priced_plan() -> str:
    """A new plan with a price on every metric, so ``{metric}`` may be any of them (PUT replaces it,
    DELETE finds it)."""
    name, session = _new_plan(), _session()
    for metric in PRICED_METRICS:
        set_price(session, plan_name=name, metric=metric, tiers=[(None, Decimal(0))])
    session.commit()
    return name


def _reopen_period(period: str) -> None:
    """Undo a close of ``period``: its invoices, the usage marked as billed in it, the period row."""
    session = _session()
    session.rollback()
    session.execute(delete(Invoice).where(Invoice.period == period))
    session.execute(update(UsageEvent).where(UsageEvent.billed_period == period).values(billed_period=None))
    session.execute(delete(BillingPeriod).where(BillingPeriod.period == period))
    session.commit()


# Keyed by the path parameter's (or ``{name}`` body placeholder's) name; called once per row.
ADMIN_PARAMS: dict[str, Callable[[], str]] = {
    "tenant_id": lambda: TenantFactory().id,
    "plan_name": _new_plan,
    "plan": _priced_plan,
    "metric": lambda: PRICED_METRICS[0],
    "uniq": lambda: uuid.uuid4().hex[:10],
    "far_past": lambda: FAR_PAST,
    # An open pro invoice of 49.00 (the base fee), written for its own tenant.
    "invoice_id": lambda: InvoiceFactory(tenant=TenantFactory(plan_name="pro")).id,
}


def admin_fill(path: str, body: Any) -> tuple[str, Any]:
    """Fill the path parameters and the body's ``{name}`` placeholders from ``ADMIN_PARAMS``."""
    names = set(PARAM.findall(path))
    if isinstance(body, dict):
        names |= {n for v in body.values() if isinstance(v, str) for n in PARAM.findall(v)}
    for name in names:
        assert name in ADMIN_PARAMS, f"admin matrix: no builder for {{{name}}}: add one to ADMIN_PARAMS"
    values = {name: ADMIN_PARAMS[name]() for name in sorted(names)}
    if isinstance(body, dict):
        body = {k: (v.format(**values) if isinstance(v, str) else v) for k, v in body.items()}
    return path.format(**values), body


@pytest.mark.parametrize("route", ADMIN_ROUTES, ids=str)
class TestOperatorRoutes:
    def test_tenant_credentials_are_401_and_admin_token_works(self, api, route):
        owner = Owner.new(api)
        path, body = admin_fill(route.path, route.body)
        try:
            for headers in ({}, owner.headers, session_headers(api, owner)):
                resp = call(api, route.method, path, body, headers)
                assert resp.status_code == 401, (
                    f"{route} with {list(headers)}: {resp.status_code} {resp.text}"
                )
            refused_everywhere(api, route.method, path, body, forged_operator_tokens(), ADMIN_SESSION_COOKIE)
            resp = call(api, route.method, path, body, ADMIN)
            assert 200 <= resp.status_code < 300, f"{route}: {resp.status_code} {resp.text}"
        finally:
            if route.after is not None:
                route.after()
