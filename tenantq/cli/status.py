"""``tenantq status``: which data dir, database and Redis this folder's commands use, and whether a
``tenantq up`` runs on them (its API address, workers online). It only looks: it creates no database
(loading the settings on embedded defaults generates the data dir's secret, as every command does)."""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from tenantq.cli.common import DataDir, JsonOut, load_settings, safe_url

if TYPE_CHECKING:
    from tenantq.core.settings import Settings

# The same freshness rule as the tenantq_workers metric and the operator dashboard.
WORKER_STALE_AFTER_S = 30.0
PROBE_TIMEOUT_S = 2.0


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _database(settings: Settings) -> dict[str, Any]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    url = settings.effective_database_url
    out: dict[str, Any] = {"url": safe_url(url), "reachable": False, "tenants": None, "error": None}
    if settings.database_url is None:
        path = settings.resolved_data_dir / "tenantq.db"
        out["path"] = str(path)
        if not path.exists():
            out["error"] = "not created yet (the first command or `tenantq up` creates it)"
            return out
    connect_args = {"connect_timeout": int(PROBE_TIMEOUT_S)} if url.startswith("postgresql") else {}
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect() as conn:
            out["reachable"] = True
            try:
                out["tenants"] = int(conn.execute(text("SELECT count(*) FROM tenant")).scalar_one())
            except Exception as exc:  # noqa: BLE001 - reachable, but not migrated yet
                out["error"] = f"no tenants table (run `tenantq db upgrade`): {_first_line(exc)}"
    except Exception as exc:  # noqa: BLE001 - the point of status is to report it
        out["error"] = f"unreachable: {_first_line(exc)}"
    finally:
        engine.dispose()
    return out


def _redis_url(settings: Settings) -> str:
    from tenantq.ops.supervisor import socket_path_for

    if settings.redis_url:
        return settings.redis_url
    return f"unix://{socket_path_for(settings.resolved_data_dir)}"


def _redis(url: str, embedded: bool) -> tuple[dict[str, Any], Any]:
    import redis

    out: dict[str, Any] = {"url": safe_url(url), "embedded": embedded, "reachable": False, "error": None}
    if embedded and not Path(url.removeprefix("unix://")).exists():
        out["error"] = "not running (the embedded Redis runs only while `tenantq up` does)"
        return out, None
    client = redis.Redis.from_url(
        url, socket_timeout=PROBE_TIMEOUT_S, socket_connect_timeout=PROBE_TIMEOUT_S, decode_responses=True
    )
    try:
        client.ping()
        out["reachable"] = True
        return out, client
    except redis.RedisError as exc:
        out["error"] = _first_line(exc) + (
            " (the embedded Redis runs only while `tenantq up` does)" if embedded else ""
        )
        return out, None


def _api_address(up_pid: int) -> str | None:
    """The address of the API that ``up`` (``up_pid``) started: read from its ``tenantq api`` child's
    command line, so it is right whatever --host/--port that ``up`` was given."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != up_pid:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
        args = [a.decode(errors="replace") for a in argv if a]
        if "tenantq.cli" not in args or "api" not in args:
            continue
        host, port = "127.0.0.1", "8000"
        for flag, value in itertools.pairwise(args):
            if flag == "--host":
                host = value
            elif flag == "--port":
                port = value
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"
    return None


def _api_ready(base: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=PROBE_TIMEOUT_S) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _workers(client: Any) -> list[str]:
    from tenantq.core import keys

    if client is None:
        return []
    return sorted(client.zrangebyscore(keys.WORKERS, time.time() - WORKER_STALE_AFTER_S, "+inf"))


def collect(settings: Settings, data_dir_existed: bool) -> dict[str, Any]:
    from tenantq.ops.supervisor import running_pid

    data_dir = settings.resolved_data_dir
    pid = running_pid(data_dir) if data_dir.is_dir() else None
    redis_info, client = _redis(_redis_url(settings), embedded=settings.redis_url is None)
    api = _api_address(pid) if pid and pid > 0 else None
    try:
        workers = _workers(client)
    except Exception as exc:  # noqa: BLE001
        workers = []
        redis_info["error"] = _first_line(exc)
    return {
        "data_dir": str(data_dir),
        "data_dir_exists": data_dir_existed,
        "database": _database(settings),
        "redis": redis_info,
        "up": {
            "running": pid is not None,
            "pid": pid if pid and pid > 0 else None,
            "api": api,
            "api_ready": _api_ready(api) if api else None,
        },
        "workers": {"online": len(workers), "names": workers},
    }


def _text(s: dict[str, Any]) -> str:
    db, rd, up, wk = s["database"], s["redis"], s["up"], s["workers"]

    def state(ok: bool, err: str | None, extra: str = "") -> str:
        return ("reachable" + extra) if ok and not err else ("reachable; " if ok else "") + (err or "")

    tenants = f", {db['tenants']} tenants" if db["tenants"] is not None else ""
    if up["running"]:
        up_line = f"running (pid {up['pid'] or '?'})"
        api_line = (
            f"{up['api']} ({'ready' if up['api_ready'] else 'not answering /readyz yet'})"
            if up["api"]
            else "unknown"
        )
    else:
        up_line, api_line = "not running on this data dir", "-"
    names = f": {', '.join(wk['names'])}" if wk["names"] else ""
    return "\n".join(
        [
            f"data dir  {s['data_dir']}{'' if s['data_dir_exists'] else ' (does not exist yet)'}",
            f"database  {db.get('path') or db['url']}  {state(db['reachable'], db['error'], tenants)}",
            f"redis     {rd['url']}  {state(rd['reachable'], rd['error'])}",
            f"up        {up_line}",
            f"api       {api_line}",
            f"workers   {wk['online']} online{names}",
        ]
    )


def status(as_json: JsonOut = False, data_dir: DataDir = None) -> None:
    """Show the data dir, database and Redis this folder's commands use, whether `tenantq up` runs on
    them (its API address) and how many workers are online. Creates no database; exits 0 either way."""
    # Looked at before the settings load: on embedded defaults that generates the data dir's secret.
    where = data_dir or Path(os.environ.get("TENANTQ_DATA_DIR") or ".tenantq")
    existed = where.expanduser().resolve().is_dir()
    settings = load_settings(data_dir)
    report = collect(settings, existed)
    typer.echo(json.dumps(report) if as_json else _text(report))


__all__ = ["collect", "status"]
