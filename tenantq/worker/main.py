"""What ``celery -A tenantq.worker worker`` loads: the Celery app, the task types, the Celery tasks of
every area, the assembly (quota check, workflow callbacks, finish hooks) and the attempt pipeline.

The order of the attempt's steps is written in ``tenantq.worker.pipeline``, and the order of the finish
hooks in ``tenantq.assembly``: neither depends on the order of these imports.
"""

import logging
import sys
from typing import Any

from celery import signals

from tenantq.assembly import assemble
from tenantq.billing.invoicing import tasks as invoicing_tasks
from tenantq.billing.usage import tasks as usage_tasks
from tenantq.core.celery import CONSUMER_TIMEOUT_MS, app
from tenantq.core.settings import InsecureSettings, check_server_settings, get_settings
from tenantq.platform.jobs import tasks as jobs_tasks
from tenantq.platform.webhooks import tasks as webhooks_tasks
from tenantq.worker import builtin, demo, pipeline

# Workflow steps, beat's schedule firings and the finish hooks run in this process.
assemble()

# Task types (built-in and demo) and the Celery tasks and beat entries of each area: registered on
# ``app`` when their modules load.
TASK_TYPE_MODULES = (builtin, demo)
TASK_MODULES = (invoicing_tasks, usage_tasks, jobs_tasks, webhooks_tasks)


@signals.worker_init.connect
@signals.beat_init.connect
def refuse_insecure_settings(**_: Any) -> None:
    """``celery -A tenantq.worker worker|beat`` started directly (not through ``tenantq worker``)
    refuses a forgeable secret or a short admin token too. Celery logs and swallows a receiver's
    exception, so the refusal exits: SystemExit is not an ``Exception``."""
    try:
        check_server_settings(get_settings())
    except InsecureSettings as exc:
        sys.stderr.write(f"tenantq: {exc}\n")
        raise SystemExit(1) from None


# RabbitMQ honours the per-queue consumer timeout tenantq declares (x-consumer-timeout) from 3.12.
PER_QUEUE_CONSUMER_TIMEOUT_SINCE = (3, 12)


def rabbitmq_version(server_properties: dict[str, Any]) -> tuple[int, ...] | None:
    raw = server_properties.get("version")
    if isinstance(raw, bytes):
        raw = raw.decode()
    try:
        return tuple(int(part) for part in str(raw).split(".")[:2])
    except ValueError:
        return None


@signals.worker_ready.connect
def warn_about_server_consumer_timeout(**_: Any) -> None:
    """On RabbitMQ before 3.12 the consumer timeout is the server's alone (30 min by default): an
    attempt running longer has its channel closed and its message handed out again. Say so once."""
    if not get_settings().broker_is_amqp:
        return
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1)
            version = rabbitmq_version(conn.connection.server_properties)
    except Exception as exc:  # noqa: BLE001 - a warning must never stop a worker
        logging.getLogger("tenantq.worker").warning("could not read the RabbitMQ version: %s", exc)
        return
    if version is not None and version < PER_QUEUE_CONSUMER_TIMEOUT_SINCE:
        logging.getLogger("tenantq.worker").warning(
            "RabbitMQ %s ignores per-queue consumer timeouts: make sure consumer_timeout in rabbitmq.conf "
            "is at least %d (ms), above the longest time limit, or attempts running longer than it are "
            "delivered again while they run (docs/operations.md)",
            ".".join(map(str, version)),
            CONSUMER_TIMEOUT_MS,
        )


celery = app

__all__ = ["TASK_MODULES", "TASK_TYPE_MODULES", "app", "celery", "pipeline"]
