"""What the commands share: option types, settings, output in text or JSON, the embedded database and
an operator's session."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from tenantq.core.settings import Settings

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Data directory for the embedded SQLite/Redis (default ./.tenantq, or $TENANTQ_DATA_DIR).",
        show_default=False,
    ),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]

# Money stays text all the way to Decimal: 19.90 must never pass through a float.
_TEXT_FIELDS = {"base_fee", "currency", "display_name"}


def load_settings(data_dir: Path | None = None) -> Settings:
    from tenantq.core.settings import get_settings, reset_settings_cache

    if data_dir is not None:
        os.environ["TENANTQ_DATA_DIR"] = str(data_dir)
    reset_settings_cache()
    return get_settings()


def setup_logging(level: str = "INFO") -> None:
    """Structured logs (JSON unless a terminal; TENANTQ_LOG_JSON decides) and the shared metrics directory
    for a long-running role (api, worker, beat, dispatcher)."""
    from tenantq.core import logging as tq_logging
    from tenantq.core.metrics import ensure_multiproc_dir

    tq_logging.configure(level.upper())
    ensure_multiproc_dir()


def emit(as_json: bool, payload: dict[str, Any], text: str) -> None:
    typer.echo(json.dumps(payload) if as_json else text)


def note(text: str) -> None:
    """A remark for the person at the terminal: on stderr, so --json output stays one JSON object."""
    typer.echo(f"tenantq: {text}", err=True)


def safe_url(url: str) -> str:
    """A database or Redis URL without its password, for messages."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.rsplit("@", maxsplit=1)[-1] if "@" in url else url


def describe_store(settings: Settings) -> str:
    """Which data dir and database a command uses: a command run in the wrong folder is spotted here."""
    if settings.database_url is None:
        return f"data dir {settings.resolved_data_dir}, database {settings.resolved_data_dir / 'tenantq.db'}"
    return f"database {safe_url(settings.database_url)}"


def _error_of(exc: Exception) -> tuple[str, str, Any]:
    """(code, one-line message, details) for any failure: a traceback is for bugs, not for a database
    that is down."""
    import redis
    from sqlalchemy.exc import DBAPIError, OperationalError

    from tenantq.core.errors import TenantqError
    from tenantq.core.settings import get_settings

    if isinstance(exc, TenantqError):
        return exc.code, exc.message, exc.details
    if isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated):
        lines = str(exc.orig or exc).strip().splitlines()
        reason = lines[0] if lines else type(exc).__name__
        url = safe_url(get_settings().effective_database_url)
        return "database_unavailable", f"cannot reach the database {url}: {reason}", None
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        url = safe_url(get_settings().effective_redis_url)
        hint = " (the embedded Redis runs only while `tenantq up` does)" if url.startswith("unix:") else ""
        return "redis_unavailable", f"cannot reach Redis {url}{hint}: {exc}", None
    lines = str(exc).strip().splitlines()
    return "error", (lines[0] if lines else type(exc).__name__), None


def fail(as_json: bool, exc: Exception) -> NoReturn:
    code, msg, details = _error_of(exc)
    payload = {"error": {"code": code, "message": msg, "details": details}}
    if as_json:
        typer.echo(json.dumps(payload))
    else:
        typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(1)


def ensure_db(settings: Settings) -> None:
    """Register every table, and migrate the embedded default first so commands work before `tenantq up`
    ran. A new embedded database is announced: in the wrong folder, it is the sign that this is not the
    database the running server uses.

    Operator commands never submit, cancel or run jobs, so they do not assemble the layers
    (:mod:`tenantq.assembly` loads Celery, httpx and every service: half a second of start-up).
    Alembic (another ~0.2 s) runs only when the database is not at the shipped head; the seed plans and
    prices are topped up either way, as :func:`tenantq.ops.migrate.upgrade` does."""
    import tenantq.models  # noqa: F401  (every table: foreign keys resolve by table name)

    if settings.database_url is None:
        db_path = settings.resolved_data_dir / "tenantq.db"
        created = not db_path.exists()
        if created or not _at_head(db_path):
            from tenantq.ops.migrate import upgrade

            upgrade(settings.effective_database_url)
        else:
            _seed()
        if created:
            note(
                f"created a new, empty database ({describe_store(settings)}); a `tenantq up` started in "
                "another folder uses its own"
            )


def _seed() -> None:
    from tenantq.billing.invoicing.pricing import seed_prices
    from tenantq.core.db import unscoped_session
    from tenantq.tenants.accounts.service import seed_plans

    with unscoped_session() as session:
        seed_plans(session)
        seed_prices(session)


def shipped_heads() -> set[str] | None:
    """The head revisions of the migrations shipped in the package, read from the revision files' text
    (importing them means importing Alembic). None when a file is not in the plain form Alembic
    generates, and the caller then lets Alembic decide."""
    import ast

    versions = Path(__file__).resolve().parent.parent / "migrations" / "versions"
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in versions.glob("*.py"):
        found: dict[str, Any] = {}
        for node in ast.parse(path.read_text()).body:
            target: ast.expr
            value: ast.expr | None
            if isinstance(node, ast.AnnAssign):
                target, value = node.target, node.value
            elif isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            else:
                continue
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                try:
                    found[target.id] = ast.literal_eval(value) if value is not None else None
                except ValueError:
                    return None
        rev, down = found.get("revision"), found.get("down_revision")
        if not isinstance(rev, str) or "down_revision" not in found:
            return None
        revisions.add(rev)
        if isinstance(down, str):
            parents.add(down)
        elif isinstance(down, tuple | list):
            parents.update(str(d) for d in down)
        elif down is not None:
            return None
    heads = revisions - parents
    return heads or None


def _at_head(db_path: Path) -> bool:
    """Whether the embedded database's Alembic version is the shipped head (read with sqlite3, without
    SQLAlchemy's engine or Alembic's runtime)."""
    import sqlite3

    heads = shipped_heads()
    if heads is None:
        return False
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
        try:
            stored = {row[0] for row in conn.execute("SELECT version_num FROM alembic_version")}
        finally:
            conn.close()
    except sqlite3.Error:
        return False  # no version table yet, or unreadable: Alembic decides and reports
    return stored == heads


def note_if_empty(rows: list[Any], what: str) -> None:
    if not rows:
        from tenantq.core.settings import get_settings

        note(f"no {what} in {describe_store(get_settings())}")


@contextmanager
def cli_session(data_dir: Path | None, as_json: bool) -> Iterator[Session]:
    """What every operator command needs: settings, an up-to-date embedded database and a system
    session (committed on success). Any failure is reported once, in the command's output format."""
    from tenantq.core.db import unscoped_session

    settings = load_settings(data_dir)
    try:
        ensure_db(settings)
        with unscoped_session() as session:
            yield session
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001
        fail(as_json, exc)


def parse_assignments(items: list[str] | None) -> dict[str, Any]:
    """``field=value`` pairs; the value is read as JSON when it parses (numbers, true/false, null),
    except for text and money fields, which are kept verbatim."""
    out: dict[str, Any] = {}
    for item in items or []:
        field, sep, raw = item.partition("=")
        field = field.strip()
        if not sep or not field:
            raise typer.BadParameter(f"expected FIELD=VALUE, got {item!r}")
        if field in _TEXT_FIELDS:
            out[field] = raw
            continue
        try:
            out[field] = json.loads(raw)
        except ValueError:
            out[field] = raw
    return out
