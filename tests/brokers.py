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
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from urllib.parse import quote, urlsplit

BASE_BROKER_URL = os.environ.get("TENANTQ_BROKER_URL", "")
ON_RABBITMQ = BASE_BROKER_URL.split("://", 1)[0].lower() in {"amqp", "amqps", "pyamqp"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


class PrivateRabbit:
    """A RabbitMQ node of the test's own (its own name, ports and data directory, on this machine's
    rabbitmq-server), for settings a shared server must not change: e.g. a consumer timeout of
    seconds, checked every second. Needs what ``rabbitmq-server`` needs (root or the rabbitmq user)."""

    def __init__(self, config: str, advanced: str = "[].") -> None:
        # Not under pytest's tmp dirs: the server runs as the rabbitmq user, who cannot enter them.
        self.dir = Path(tempfile.mkdtemp(prefix="tq-rabbit-"))
        self.port = free_port()
        self.node = f"tq{uuid.uuid4().hex[:8]}@localhost"
        self.config = config
        self.advanced = advanced

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self) -> None:
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n{self.config}\n"
        )
        (self.dir / "advanced.config").write_text(self.advanced + "\n")
        (self.dir / "enabled_plugins").write_text("[].\n")
        shutil.chown(self.dir, "rabbitmq", "rabbitmq")  # the server drops to the rabbitmq user
        for child in self.dir.iterdir():
            shutil.chown(child, "rabbitmq", "rabbitmq")
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.dir / "pid"),
        }
        subprocess.run(["rabbitmq-server", "-detached"], env=env, check=True, timeout=60)
        # `-detached` returns before the node has registered with epmd, and await_startup gives up at
        # once on a node epmd does not know ("not running at all"): ask again until it answers.
        deadline = time.monotonic() + 120
        while True:
            try:
                rabbitmqctl("-n", self.node, "await_startup", "--timeout", "30")
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def stop(self) -> None:
        try:
            rabbitmqctl("-n", self.node, "stop")
        except RuntimeError as exc:
            warnings.warn(f"private RabbitMQ node {self.node} did not stop: {exc}", stacklevel=2)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted((self.dir / "log").glob("*.log")))
