"""The ``tenantq`` command line: run the platform and operate it. One module per command group.

Commands import the platform inside their bodies (ruff's PLC0415 is switched off for this package
only, in pyproject.toml): SQLAlchemy, Celery, pydantic-settings and the models take about a second to
load, which ``tenantq --help``, shell completion and every mistyped option would otherwise pay, and
each command loads only what it runs. Nothing else in tenantq imports inside functions.
"""

from __future__ import annotations

import typer

from tenantq.cli import billing, db, helpstyle, jobs, key, plan, run, status, tenant

helpstyle.install()

app = typer.Typer(
    help="tenantq: a multi-tenant background job platform on Celery.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(run.up)
app.command()(run.api)
app.command()(run.worker)
app.command()(run.beat)
app.command()(run.dispatcher)
app.command()(status.status)
app.add_typer(db.app, name="db")
app.add_typer(tenant.app, name="tenant")
app.add_typer(key.app, name="key")
app.add_typer(billing.app, name="billing")
app.add_typer(plan.app, name="plan")
app.add_typer(jobs.app, name="jobs")


def main() -> None:
    app()
