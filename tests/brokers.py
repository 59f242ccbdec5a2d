"""The Celery broker the tests run on: Redis (default), or RabbitMQ when TENANTQ_BROKER_URL is amqp://.

    TENANTQ_BROKER_URL=amqp://guest:guest@127.0.0.1:5672// python -m pytest tests/e2e

On Redis every test platform already has a broker of its own: its private redis-server (or database).
On RabbitMQ the named server is shared, so the session and every test that starts its own processes
(``private_broker``) get a fresh vhost, created with ``rabbitmqctl`` (directly, else through
``sudo -n``) and deleted at the end of the session: concurrent runs on one RabbitMQ never see each
other's queues, workers (ping, events) or messages.
"""

from __future__ import annotations

import os
import subprocess
import uuid
import warnings
from urllib.parse import quote, urlsplit

BASE_BROKER_URL = os.environ.get("TENANTQ_BROKER_URL", "")
ON_RABBITMQ = BASE_BROKER_URL.split("://", 1)[0].lower() in {"amqp", "amqps", "pyamqp"}


def rabbitmqctl(*args: str) -> str:
    """Run ``rabbitmqctl`` (needs the node's Erlang cookie: root or the rabbitmq user, else sudo)."""
    errors: list[str] = []
    for prefix in ([], ["sudo", "-n"]):
        try:
            done = subprocess.run(
                [*prefix, "rabbitmqctl", "-q", *args],
                check=False,
                capture_output=True,
                text=True,
                timeout=120,
            )
        except FileNotFoundError as exc:
            errors.append(str(exc))
            continue
        if done.returncode == 0:
            return done.stdout
        command = " ".join([*prefix, "rabbitmqctl", *args])
        errors.append(f"{command}: {done.stderr.strip() or done.stdout}")
    raise RuntimeError(
        "the RabbitMQ tests make a vhost per test platform with rabbitmqctl, which failed: "
        + "; ".join(errors)
    )


class RabbitVhosts:
    """Private vhosts on the RabbitMQ of ``base_url``, all deleted by ``delete_all``."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.scheme = parts.scheme
        self.netloc = parts.netloc
        self.user = parts.username or "guest"
        self.created: list[str] = []

    def create(self, label: str) -> str:
        name = f"tq-{label}-{uuid.uuid4().hex[:10]}"
        rabbitmqctl("add_vhost", name)
        self.created.append(name)
        rabbitmqctl("set_permissions", "-p", name, self.user, ".*", ".*", ".*")
        return f"{self.scheme}://{self.netloc}/{quote(name, safe='')}"

    def delete_all(self) -> None:
        failed: list[str] = []
        while self.created:
            name = self.created.pop()
            try:
                rabbitmqctl("delete_vhost", name)
            except RuntimeError as exc:
                failed.append(f"{name}: {exc}")
        if failed:
            warnings.warn("RabbitMQ vhosts left behind: " + "; ".join(failed), stacklevel=2)


VHOSTS = RabbitVhosts(BASE_BROKER_URL) if ON_RABBITMQ else None


def private_broker(label: str) -> dict[str, str]:
    """Environment giving a test platform a broker of its own. On Redis the broker follows the
    platform's TENANTQ_REDIS_URL (nothing to add, but the variable is cleared in case the session set
    one); on RabbitMQ a new vhost."""
    if VHOSTS is None:
        return {"TENANTQ_BROKER_URL": ""}
    return {"TENANTQ_BROKER_URL": VHOSTS.create(label)}


def broker_url(env: dict[str, str]) -> str:
    """The Celery broker URL processes started with ``env`` use (for a probe client)."""
    return env.get("TENANTQ_BROKER_URL") or env["TENANTQ_REDIS_URL"]
