"""``tenantq db``: database schema management."""

from __future__ import annotations

from typing import Annotated

import typer

from tenantq.cli.common import DataDir, fail, load_settings

app = typer.Typer(help="Database schema management.", no_args_is_help=True)


@app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    data_dir: DataDir = None,
) -> None:
    """Apply migrations up to REVISION (default: head) and seed the default plans."""
    from tenantq.ops.migrate import upgrade

    settings = load_settings(data_dir)
    try:
        upgrade(settings.effective_database_url, revision)
    except Exception as exc:  # noqa: BLE001
        fail(False, exc)
    typer.echo(f"database at {revision}")


@app.command("check")
def db_check(data_dir: DataDir = None) -> None:
    """Fail if the models and the migrations disagree (alembic check)."""
    from tenantq.ops.migrate import check

    settings = load_settings(data_dir)
    try:
        check(settings.effective_database_url)
    except Exception as exc:  # noqa: BLE001
        fail(False, exc)
    typer.echo("no drift between models and migrations")
