"""Commands that run the platform's processes: everything at once, or one role each."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tenantq.cli.common import DataDir, load_settings, setup_logging

if TYPE_CHECKING:
    from tenantq.core.settings import Settings

# Beat's scheduler class: reads per-tenant schedules from SQL at runtime.
TENANT_SCHEDULER = "tenantq.platform.schedules.beat:TenantScheduler"


def load_server_settings(data_dir: Path | None, *, embedded: bool | None = None) -> Settings:
    """Settings for a server role, refused (exit 1, before anything starts) when its secret or admin
    token could be guessed. On embedded defaults the secret is the data dir's generated one."""
    from tenantq.core.settings import InsecureSettings, check_server_settings

    settings = load_settings(data_dir)
    try:
        check_server_settings(settings, embedded=embedded)
    except InsecureSettings as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    return settings


def up(
    host: Annotated[str, typer.Option(help="API bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port.")] = 8000,
    concurrency: Annotated[int, typer.Option(help="Worker pool processes.")] = 2,
    migrate: Annotated[bool, typer.Option(help="Apply database migrations before starting.")] = True,
    data_dir: DataDir = None,
) -> None:
    """Run API, dispatcher, worker, beat and the usage flusher (and an embedded Redis unless
    TENANTQ_REDIS_URL is set) in the foreground. With TENANTQ_BROKER_URL=amqp://... the execution
    queues are on that RabbitMQ (installed and run separately); everything else stays as it is.

    Prints "tenantq is up" once the API answers /readyz and the worker consumes. A process that exits
    on its own is restarted (with backoff). Ctrl-C, SIGTERM, SIGHUP (the terminal closed) or a closed
    stdout stops every process. One `up` per data dir: a second one is refused."""
    from tenantq.ops.supervisor import Supervisor

    # Strict: the children get explicit database and Redis URLs (and this secret), so they apply the
    # non-embedded rules; a secret set by hand must be long enough even on embedded defaults.
    settings = load_server_settings(data_dir, embedded=False)
    raise typer.Exit(
        Supervisor(settings, host=host, port=port, concurrency=concurrency, migrate=migrate).run()
    )


def api(
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes.")] = 1,
    data_dir: DataDir = None,
) -> None:
    """Run only the HTTP API (uvicorn). X-Forwarded-For is honoured only from the proxies in
    TENANTQ_FORWARDED_ALLOW_IPS (addresses or CIDRs; default: none)."""
    import uvicorn

    from tenantq.core.logging import uvicorn_log_config

    settings = load_server_settings(data_dir)
    setup_logging()
    # Only the configured proxies may set the client address (X-Forwarded-For), which the failed-login
    # limiter counts by; uvicorn's own default would trust 127.0.0.1, so any local process could
    # rotate it. With none configured, proxy headers are ignored altogether.
    trusted_proxies = settings.forwarded_allow_ips.strip()
    # log_config is applied in every uvicorn worker process; tenantq's middleware writes the request log.
    uvicorn.run(
        "tenantq.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        access_log=False,
        log_config=uvicorn_log_config(),
        proxy_headers=bool(trusted_proxies),
        forwarded_allow_ips=trusted_proxies or None,
    )


def worker(
    concurrency: Annotated[int, typer.Option(help="Pool processes.")] = 2,
    queues: Annotated[
        str | None, typer.Option(help="Comma-separated Celery queues (default: execution + system).")
    ] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
    autoscale: Annotated[
        str | None,
        typer.Option(
            help="MAX,MIN: grow the pool up to MAX processes under load "
            "and shrink to MIN when idle (replaces --concurrency)."
        ),
    ] = None,
    hostname: Annotated[
        str | None,
        typer.Option(help="Celery node name, e.g. worker@$POD_NAME (default: tenantq-<pid>@<host>)."),
    ] = None,
    tenant: Annotated[
        str | None,
        typer.Option(
            help="Run a dedicated pool for this tenant (id or name): routes its jobs to tq.exec.t.<id> "
            "and consumes only that queue. The tenant submits exactly as before."
        ),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Run a Celery worker (same as `celery -A tenantq.worker worker`). Scale out by running more of them,
    on more machines; --autoscale sizes one worker's pool with the load."""
    settings = load_server_settings(data_dir)
    setup_logging(loglevel)
    # After load_settings: loading the worker reads the settings.
    from tenantq.core.celery import SYSTEM_QUEUE
    from tenantq.core.db import unscoped_session
    from tenantq.core.redis import get_redis
    from tenantq.platform.dispatch import routing
    from tenantq.tenants.accounts.service import get_tenant_by_ref
    from tenantq.worker import app as celery_app

    q = queues or f"{settings.exec_queue},{SYSTEM_QUEUE}"
    if tenant:
        with unscoped_session() as session:
            tenant_id = get_tenant_by_ref(session, tenant).id
        q = routing.assign(get_redis(), tenant_id)
    pool = [f"--autoscale={autoscale}"] if autoscale else [f"--concurrency={concurrency}"]
    celery_app.worker_main(
        [
            "worker",
            *pool,
            f"--queues={q}",
            f"--loglevel={loglevel}",
            # `tenantq up` finds its worker's heartbeat under this default name (worker_node_name).
            f"--hostname={hostname or f'tenantq-{os.getpid()}@%h'}",
        ]
    )


def beat(
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
    data_dir: DataDir = None,
) -> None:
    """Run Celery beat: the operator's periodic tasks and the tenants' schedules (read from SQL, so edits
    apply without a restart; with two beats running, each schedule's due time still fires once)."""
    settings = load_server_settings(data_dir)
    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(loglevel)
    # After load_settings: loading the worker reads the settings.
    from tenantq.worker import app as celery_app

    celery_app.start(
        [
            "beat",
            f"--loglevel={loglevel}",
            f"--scheduler={TENANT_SCHEDULER}",
            f"--schedule={settings.resolved_data_dir / 'celerybeat-schedule'}",
        ]
    )


def dispatcher(data_dir: DataDir = None) -> None:
    """Run the dispatcher that releases jobs from per-tenant queues to the workers.

    The leader also applies job outcomes the workers kept in Redis while the database was unavailable,
    and queues jobs committed but never enqueued (the outbox). Run several for high
    availability: one leads (a lock in Redis), the others take over if it dies.
    """
    load_server_settings(data_dir)
    setup_logging()
    # After load_settings: loading the worker reads the settings.
    import tenantq.worker  # noqa: F401  (the Celery app the dispatcher publishes with, and every table)
    from tenantq.platform.dispatch.dispatcher import main
    from tenantq.platform.jobs.tasks import dispatcher_chores, queued_before

    main(queued_in_sql=queued_before, chores=dispatcher_chores())
