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


def fail(as_json: bool, exc: Exception) -> NoReturn:
    from tenantq.core.errors import TenantqError

    if isinstance(exc, TenantqError):
        payload = {"error": {"code": exc.code, "message": exc.message, "details": exc.details}}
        msg = exc.message
    else:
        payload = {"error": {"code": "error", "message": str(exc), "details": None}}
        msg = str(exc)
    if as_json:
        typer.echo(json.dumps(payload))
    else:
        typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(1)


def ensure_db(settings: Settings) -> None:
    """Assemble the layers (every table, the quota check, ...), and migrate the embedded default first so
    commands work before `tenantq up` ran."""
    from tenantq.assembly import assemble
    from tenantq.ops.migrate import upgrade

    assemble()
    if settings.database_url is None:
        upgrade(settings.effective_database_url)


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
