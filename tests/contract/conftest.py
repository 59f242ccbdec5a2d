"""A live API server for the contract tests, on a database of its own.

Contract tests drive the API the way a tenant's own tooling does: over real HTTP, from the published
``/openapi.json``. Fuzzing the operator API creates, renames and suspends tenants and rewrites plans,
so the server gets a scratch database (made like the session's, dropped at the end) and a Redis
database index of its own: nothing it does can reach the data the other tests use.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import ROOT, ProcessGroup, _make_database, free_port

ADMIN_TOKEN_ENV = "TENANTQ_ADMIN_TOKEN"
# Redis database index for the contract server; the session's tests use 0.
CONTRACT_REDIS_DB = 7


ALL_SCOPES = ["jobs:read", "jobs:write", "usage:read", "billing:read", "keys:manage"]


@dataclass(frozen=True)
class LiveApi:
    url: str
    admin_token: str

    @property
    def operator_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def new_tenant(self, name: str) -> tuple[str, str]:
        """(tenant id, API key with every scope) of a new tenant: each test gets its own."""
        with httpx.Client(base_url=self.url, timeout=60, headers=self.operator_headers) as client:
            tenant = client.post("/admin/v1/tenants", json={"name": name})
            tenant.raise_for_status()
            tenant_id = tenant.json()["id"]
            key = client.post(
                f"/admin/v1/tenants/{tenant_id}/keys", json={"name": name, "scopes": ALL_SCOPES}
            )
            key.raise_for_status()
        return tenant_id, key.json()["key"]


def _wait_healthy(client: httpx.Client, group: ProcessGroup, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = group.procs["api"]
        if proc.poll() is not None:
            raise RuntimeError(f"contract API server exited:\n{group.log('api')}")
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"contract API server did not answer /healthz:\n{group.log('api')}")


@pytest.fixture(scope="session")
def live_api(platform_env, redis_server, tmp_path_factory) -> Iterator[LiveApi]:
    db_url, drop = _make_database(tmp_path_factory)
    env = {
        **platform_env,
        "TENANTQ_DATABASE_URL": db_url,
        "TENANTQ_REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/{CONTRACT_REDIS_DB}",
        "TENANTQ_DATA_DIR": str(tmp_path_factory.mktemp("contract-data")),
        # Configured, so the webhook answers 400 to a bad signature rather than 503 "not configured".
        "TENANTQ_STRIPE_WEBHOOK_SECRET": "whsec_contract_" + "0" * 32,
        # The generated-client test registers a webhook on this host (nothing is delivered: no worker).
        "TENANTQ_HTTP_ALLOW_PRIVATE": "1",
    }
    group = ProcessGroup(env, tmp_path_factory.mktemp("contract-logs"))
    subprocess.run(
        [sys.executable, "-m", "tenantq.cli", "db", "upgrade"],
        env=group.env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    port = free_port()
    group.start(
        "api",
        [
            sys.executable,
            "-m",
            "uvicorn",
            "tenantq.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            _wait_healthy(client, group)
        yield LiveApi(url=url, admin_token=env[ADMIN_TOKEN_ENV])
    finally:
        group.stop_all()
        drop()
