"""The operator CLI for tenants, plans and keys (``--json`` output), run in-process with typer's runner
against the same database and Redis as the API."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

from typer.testing import CliRunner

from tenantq.cli import app
from tenantq.tenants.accounts.models import Plan
from tests.factories import ApiKeyFactory, TenantFactory, auth


def cli(*args: str, ok: bool = True) -> dict:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert (result.exit_code == 0) == ok, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


class TestTenantCommands:
    def test_update_suspend_reactivate_list(self, api, redis_client):
        tenant = TenantFactory(plan_name="free")
        key = ApiKeyFactory(tenant=tenant)
        out = cli(
            "tenant",
            "update",
            tenant.name,
            "--plan",
            "pro",
            "--override",
            "concurrency=4",
            "--override",
            "submit_rate=2.5",
        )
        assert out["plan"] == "pro" and out["overrides"] == {"concurrency": 4, "submit_rate": 2.5}
        out = cli("tenant", "update", tenant.id, "--override", "concurrency=null")
        assert out["overrides"] == {"submit_rate": 2.5}
        bad = cli("tenant", "update", tenant.id, "--override", "concurrency=0", ok=False)
        assert bad["error"]["code"] == "invalid_overrides"
        assert cli("tenant", "suspend", tenant.name)["status"] == "suspended"
        assert redis_client.hget("tq:paused:why", tenant.id) == "suspended"
        assert api.post("/v1/jobs", json={"task": "demo.echo"}, headers=auth(key)).status_code == 403
        listed = cli("tenant", "list", "--status", "suspended")["items"]
        assert tenant.id in {t["id"] for t in listed}
        assert cli("tenant", "reactivate", tenant.name)["status"] == "active"
        assert not redis_client.sismember("tq:paused", tenant.id)
        assert (
            cli("tenant", "suspend", "no-such-tenant-" + uuid.uuid4().hex, ok=False)["error"]["code"]
            == "not_found"
        )


class TestPlanAndKeyCommands:
    def test_plan_list_update(self, db_session):
        name = f"cli-{uuid.uuid4().hex[:8]}"
        db_session.add(Plan(name=name, display_name=name))
        db_session.commit()
        names = {p["name"] for p in cli("plan", "list")["items"]}
        assert {"free", "pro", "enterprise", name} <= names
        out = cli("plan", "update", name, "--set", "weight=6", "--set", "base_fee=19.90")
        assert out["weight"] == 6 and Decimal(out["base_fee"]) == Decimal("19.90")
        assert (
            cli("plan", "update", name, "--set", "exec_rate=0", ok=False)["error"]["code"] == "invalid_input"
        )

    def test_key_list_and_revoke(self, api):
        key = ApiKeyFactory()
        items = cli("key", "list", key.tenant.name)["items"]
        assert [i["id"] for i in items] == [key.id] and key.plaintext not in json.dumps(items)
        assert cli("key", "revoke", key.id)["id"] == key.id
        assert api.get("/v1/jobs", headers=auth(key)).status_code == 401
        assert cli("key", "revoke", "nope", ok=False)["error"]["code"] == "not_found"
