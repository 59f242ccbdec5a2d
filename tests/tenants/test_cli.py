"""The operator CLI for tenants, plans and keys (``--json`` output), run in-process with typer's runner
against the same database and Redis as the API."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from tenantq.cli import app
from tenantq.tenants.accounts.models import Plan
from tests.conftest import ROOT, ProcessGroup, free_port, wait_until
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


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real console entry point in a subprocess, with exactly this environment (no TENANTQ_*
    from the test session unless given): what a newcomer's shell runs."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TENANTQ_")}
    return subprocess.run(
        [sys.executable, "-m", "tenantq.cli", *args],
        env={**base, "PYTHONPATH": str(ROOT), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def all_commands(group: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, cmd in group.commands.items():
        yield (*prefix, name)
        if hasattr(cmd, "commands"):  # a command group
            yield from all_commands(cmd, (*prefix, name))


class TestHelpPages:
    """Help pages in the usual style, for every command."""

    def test_no_bool_on_flags_and_arguments_in_capitals(self):
        commands = list(all_commands(typer.main.get_command(app)))
        assert ("status",) in commands and ("tenant", "create") in commands
        for path in commands:
            out = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"}).output
            assert "<bool>" not in out and "{" not in out, (path, out)
        usage = CliRunner().invoke(app, ["tenant", "create", "--help"], env={"COLUMNS": "200"}).output
        assert "tenant create [OPTIONS] NAME" in usage
        assert re.search(r"--json\s+Print one JSON object", usage)


BAD_DB = "postgresql+psycopg://nobody:hunter2@127.0.0.1:1/nowhere"


class TestOneLineErrors:
    @pytest.mark.parametrize(
        "args", [("tenant", "list"), ("plan", "list"), ("key", "list", "acme"), ("db", "upgrade")]
    )
    def test_unreachable_database_is_one_line(self, args, tmp_path):
        res = run_cli(
            *args, env={"TENANTQ_DATABASE_URL": BAD_DB, "TENANTQ_DATA_DIR": str(tmp_path)}, cwd=tmp_path
        )
        assert res.returncode == 1 and res.stdout == ""
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1, res.stderr
        assert lines[0].startswith("error: cannot reach the database postgresql+psycopg://nobody:***@")
        assert "hunter2" not in res.stderr and "Traceback" not in res.stderr

    def test_unreachable_database_json(self, tmp_path):
        res = run_cli(
            "tenant",
            "list",
            "--json",
            env={"TENANTQ_DATABASE_URL": BAD_DB, "TENANTQ_DATA_DIR": str(tmp_path)},
            cwd=tmp_path,
        )
        assert res.returncode == 1 and res.stderr == ""
        assert json.loads(res.stdout)["error"]["code"] == "database_unavailable"


class TestWhichStore:
    """A command in the wrong folder says which data dir and database it used."""

    def test_new_and_empty_store_is_named_on_stderr(self, tmp_path):
        env: dict[str, str] = {}  # embedded defaults: ./.tenantq under the working directory
        data_dir = tmp_path / ".tenantq"
        first = run_cli("tenant", "list", "--json", env=env, cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout) == {"items": []}  # stdout stays one JSON object
        assert f"created a new, empty database (data dir {data_dir}, database {data_dir / 'tenantq.db'})" in (
            first.stderr
        )
        assert f"no tenants in data dir {data_dir}" in first.stderr
        again = run_cli("tenant", "list", env=env, cwd=tmp_path)
        assert "created" not in again.stderr and f"no tenants in data dir {data_dir}" in again.stderr
        assert run_cli("tenant", "create", "acme", env=env, cwd=tmp_path).returncode == 0
        listed = run_cli("tenant", "list", env=env, cwd=tmp_path)
        assert "acme" in listed.stdout and listed.stderr == ""


class TestStatus:
    def test_fresh_folder_creates_no_database(self, tmp_path):
        res = run_cli("status", "--json", env={}, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        s = json.loads(res.stdout)
        assert s["data_dir"] == str(tmp_path / ".tenantq") and s["data_dir_exists"] is False
        assert s["database"]["reachable"] is False and "not created yet" in s["database"]["error"]
        assert s["redis"] == {
            "url": f"unix://{tmp_path / '.tenantq' / 'redis.sock'}",
            "embedded": True,
            "reachable": False,
            "error": "not running (the embedded Redis runs only while `tenantq up` does)",
        }
        assert s["up"] == {"running": False, "pid": None, "api": None, "api_ready": None}
        assert s["workers"]["online"] == 0
        assert not (tmp_path / ".tenantq" / "tenantq.db").exists()
        text = run_cli("status", env={}, cwd=tmp_path).stdout
        assert "up        not running on this data dir" in text

    def test_running_up_its_api_and_workers(self, platform_env, platform_processes, tmp_path, monkeypatch):
        """A process holding the data dir's `up` lock, with a real `tenantq api` child on a free port:
        what `tenantq up` looks like from outside."""
        from tenantq.core.settings import reset_settings_cache
        from tenantq.ops.supervisor import DataDirLock

        data_dir = tmp_path / "data"
        data_dir.mkdir()
        lock = DataDirLock(data_dir)
        lock.acquire()
        group = ProcessGroup(platform_env, tmp_path)
        port = free_port()
        group.start("api", [sys.executable, "-m", "tenantq.cli", "api", "--port", str(port)])
        monkeypatch.setenv("TENANTQ_DATA_DIR", str(data_dir))
        reset_settings_cache()
        try:

            def ready() -> bool:
                out = CliRunner().invoke(app, ["status", "--json"])
                return json.loads(out.stdout)["up"]["api_ready"] is True

            wait_until(ready, timeout=60, interval=0.5, message="status to see the API ready")
            s = json.loads(CliRunner().invoke(app, ["status", "--json"]).stdout)
        finally:
            group.stop_all()
            lock.release()
            monkeypatch.undo()
            reset_settings_cache()
        assert s["up"] == {
            "running": True,
            "pid": os.getpid(),
            "api": f"http://127.0.0.1:{port}",
            "api_ready": True,
        }
        assert s["database"]["reachable"] is True and s["database"]["tenants"] >= 0
        assert s["redis"]["reachable"] is True and s["redis"]["embedded"] is False
        assert s["workers"]["online"] >= 1 and any(n.startswith("worker-") for n in s["workers"]["names"])


QUICKSTART_POST = re.compile(r"-d '(\{\"task\": \"demo.echo\".*?\})'")


class TestReadmeQuickstart:
    """The README's Quickstart works as written on the default plan, and the limits it
    states are the free plan's."""

    def test_quickstart_request_is_accepted_on_free(self, api):
        readme = (ROOT / "README.md").read_text()
        body = json.loads(QUICKSTART_POST.search(readme).group(1))
        created = cli("tenant", "create", f"qs-{uuid.uuid4().hex[:8]}")
        assert created["plan"] == "free"
        key = cli("key", "create", created["name"])["key"]
        resp = api.post("/v1/jobs", json=body, headers={"Authorization": f"Bearer {key}"})
        assert resp.status_code == 202, resp.text

    def test_stated_free_limits_match_the_plan(self, db_session):
        readme = " ".join((ROOT / "README.md").read_text().split())
        free = db_session.get(Plan, "free")
        stated = (
            f"priority {free.priority_min}-{free.priority_max}",
            f"time limits up to {free.max_time_limit_s} s",
            f"at most {free.concurrency} jobs running",
            f"schedules at most every {free.min_schedule_interval_s} s",
        )
        for s in stated:
            assert s in readme, s


class TestStartupCost:
    """Commands load only what they run (bench/cli_startup.py has the timings)."""

    HEAVY = (
        "sqlalchemy",
        "celery",
        "alembic",
        "fastapi",
        "httpx",
        "tenantq.assembly",
        "tenantq.core.settings",
    )

    def _loaded_after(self, args: list[str], tmp_path: Path) -> list[str]:
        code = (
            "import json, sys\n"
            "from typer.testing import CliRunner\n"
            "from tenantq.cli import app\n"
            f"res = CliRunner().invoke(app, {args!r})\n"
            "assert res.exit_code == 0, res.output\n"
            f"print(json.dumps(sorted(m for m in {self.HEAVY!r} if m in sys.modules)))\n"
        )
        base = {k: v for k, v in os.environ.items() if not k.startswith("TENANTQ_")}
        res = subprocess.run(
            [sys.executable, "-c", code],
            env={**base, "PYTHONPATH": str(ROOT), "TENANTQ_DATA_DIR": str(tmp_path)},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout.strip().splitlines()[-1])

    def test_help_loads_no_platform(self, tmp_path):
        assert self._loaded_after(["--help"], tmp_path) == []
        assert self._loaded_after(["tenant", "--help"], tmp_path) == []

    def test_operator_commands_skip_assembly_celery_and_a_current_migration(self, tmp_path):
        assert (
            run_cli(
                "tenant", "create", "acme", env={"TENANTQ_DATA_DIR": str(tmp_path)}, cwd=tmp_path
            ).returncode
            == 0
        )
        loaded = self._loaded_after(["tenant", "list"], tmp_path)
        assert "sqlalchemy" in loaded  # it did read the database
        assert not {"alembic", "celery", "tenantq.assembly"} & set(loaded), loaded


class TestOperatorCommandsLoadNoWebFramework:
    """FastAPI and Starlette (a quarter of a second of start-up) load only for the API: the error
    classes every command raises and catches live apart from their HTTP handlers
    (``tenantq.core.errors`` / ``tenantq.core.http_errors``). The Redis client (another tenth of a
    second) loads only for the commands that use Redis: suspension is apart from the tenant service
    (``tenantq.tenants.accounts.suspension``)."""

    # (arguments, exit code, whether it may load the Redis client): each command really runs against a
    # migrated embedded database; the refused ones cover the error paths (no Redis, no such tenant),
    # where the error report checks for Redis errors.
    COMMANDS: tuple[tuple[list[str], int, bool], ...] = (
        (["tenant", "create", "acme"], 0, False),
        (["tenant", "list"], 0, False),
        (["tenant", "update", "acme", "--override", "concurrency=2"], 0, False),
        (["tenant", "suspend", "acme"], 1, True),  # no `tenantq up` here, so no embedded Redis
        (["key", "create", "acme"], 0, False),
        (["key", "list", "acme"], 0, False),
        (["key", "list", "no-such-tenant"], 1, True),
        (["plan", "list"], 0, False),
        (["plan", "update", "pro", "--set", "weight=3"], 0, False),
        (["billing", "close"], 0, False),
        (["db", "check"], 0, False),
        (["status"], 0, True),  # it asks Redis which workers are online
    )
    # ``python -m tenantq.cli ARGS``, which then writes the top-level packages it loaded to $OUT.
    RUN_AND_REPORT = (
        "import atexit, json, os, runpy, sys\n"
        "def report():\n"
        "    with open(os.environ['OUT'], 'w') as f:\n"
        "        json.dump(sorted({m.split('.')[0] for m in sys.modules}), f)\n"
        "atexit.register(report)\n"
        "sys.argv = ['tenantq', *sys.argv[1:]]\n"
        "runpy.run_module('tenantq.cli', run_name='__main__', alter_sys=True)\n"
    )

    def test_no_fastapi_or_starlette_and_redis_only_where_used(self, tmp_path):
        base = {k: v for k, v in os.environ.items() if not k.startswith("TENANTQ_")}
        out = tmp_path / "packages.json"
        unwanted = {}
        for args, expected, uses_redis in self.COMMANDS:  # in order: the first creates the tenant
            out.unlink(missing_ok=True)
            res = subprocess.run(
                [sys.executable, "-c", self.RUN_AND_REPORT, *args],
                env={**base, "PYTHONPATH": str(ROOT), "TENANTQ_DATA_DIR": str(tmp_path), "OUT": str(out)},
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert res.returncode == expected, (args, res.stdout, res.stderr)
            loaded = set(json.loads(out.read_text()))
            assert "sqlalchemy" in loaded  # the report works: every one of them reads the database
            found = loaded & ({"fastapi", "starlette"} | (set() if uses_redis else {"redis"}))
            if found:
                unwanted[" ".join(args)] = sorted(found)
        assert unwanted == {}

    def test_the_api_does_load_them(self):
        # The check above looks at the right names: the app's error handling is where they come in.
        code = (
            "import sys\n"
            "import tenantq.core.errors\n"
            "assert 'fastapi' not in sys.modules and 'starlette' not in sys.modules\n"
            "import tenantq.core.http_errors\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'starlette'}))\n"
        )
        res = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == "['fastapi', 'starlette']"


class TestMigrationCheck:
    """The embedded database skips Alembic only when it is at the shipped head."""

    def test_shipped_heads_agree_with_alembic(self):
        from alembic.script import ScriptDirectory

        from tenantq.cli.common import shipped_heads
        from tenantq.ops.migrate import alembic_config

        assert shipped_heads() == set(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())

    def test_at_head_reads_the_version_table(self, tmp_path):
        import sqlite3

        from tenantq.cli.common import _at_head, shipped_heads
        from tenantq.ops.migrate import upgrade

        db = tmp_path / "tenantq.db"
        assert not _at_head(db)  # no file
        sqlite3.connect(db).close()
        assert not _at_head(db)  # no version table
        upgrade(f"sqlite:///{db}")
        assert _at_head(db)
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE alembic_version SET version_num = 'older'")
        assert not _at_head(db)
        assert shipped_heads() != {"older"}

    def test_seed_plans_are_topped_up_without_alembic(self, tmp_path):
        import sqlite3

        env = {"TENANTQ_DATA_DIR": str(tmp_path)}
        assert run_cli("plan", "list", env=env, cwd=tmp_path).returncode == 0
        with sqlite3.connect(tmp_path / "tenantq.db") as conn:
            prices = "SELECT id FROM plan_price WHERE plan_name = 'pro'"
            conn.execute(f"DELETE FROM price_tier WHERE price_id IN ({prices})")
            conn.execute("DELETE FROM plan_price WHERE plan_name = 'pro'")
            assert conn.execute("DELETE FROM plan WHERE name = 'pro'").rowcount == 1
        res = run_cli("plan", "list", "--json", env=env, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert "pro" in {p["name"] for p in json.loads(res.stdout)["items"]}
