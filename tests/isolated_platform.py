"""A second, isolated worker + dispatcher for tests that need operator settings the session worker lacks.

The session-wide worker (``platform_processes``) runs with default settings: no SMTP relay, private
addresses refused. Tests of ``email.send``, of ``http.request`` against a local server and of webhooks
to a local receiver need a worker configured like an operator would (SMTP host, private addresses
allowed, fast webhook retries). This one uses its own Redis database on the same test redis-server
(``/7``) as queue store and broker (on RabbitMQ a vhost of its own), so the session worker never sees
its jobs and vice versa; both share the test database. Jobs are submitted through the jobs service with
a Redis client on that database (the same code path as the API, minus HTTP).

Also here: a real SMTP server (aiosmtpd) that records what it receives and can refuse recipients
(``reject*@`` -> 550, ``busy*@`` -> 451 on the first try), and a tiny threaded HTTP server helper.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import pytest
import redis as redis_lib

from tests.brokers import broker_url, private_broker
from tests.conftest import ProcessGroup, free_port, start_worker

ISOLATED_REDIS_DB = 7


class RecordingSmtpHandler:
    """aiosmtpd handler: records messages; refuses ``reject*`` recipients for good and ``busy*`` once."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.busy_seen: dict[str, int] = defaultdict(int)
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        if local.startswith("reject"):
            return "550 5.1.1 No such user here"
        if local.startswith("busy"):
            with self.lock:
                self.busy_seen[address] += 1
                first = self.busy_seen[address] == 1
            if first:
                return "451 4.3.0 Mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        parsed: Message = message_from_bytes(envelope.content)
        with self.lock:
            self.messages.append(
                {"mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos), "message": parsed}
            )
        return "250 Message accepted for delivery"

    def for_recipient(self, address: str) -> list[dict[str, Any]]:
        with self.lock:
            return [m for m in self.messages if address in m["rcpt_tos"]]


@dataclass
class IsolatedPlatform:
    group: ProcessGroup
    redis: redis_lib.Redis
    smtp: RecordingSmtpHandler
    smtp_port: int

    def submit(self, session, tenant, task: str, args: dict[str, Any], **fields: Any):
        from tenantq.platform.jobs.schemas import JobCreate
        from tenantq.platform.jobs.service import submit_job

        return submit_job(session, tenant, JobCreate(task=task, args=args, **fields), client=self.redis).job


def _ping(url: str, timeout: float = 60.0) -> None:
    from celery import Celery

    from tenantq.core.celery import app

    probe = Celery("probe", broker=url)
    # Same transport options as the workers (key separator, priorities), or the reply cannot be routed.
    probe.conf.broker_transport_options = dict(app.conf.broker_transport_options)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if probe.control.ping(timeout=0.5):
                return
        raise RuntimeError("the isolated worker did not answer ping")
    finally:
        probe.close()


@pytest.fixture(scope="session")
def isolated_platform(platform_env, redis_server, tmp_path_factory) -> Iterator[IsolatedPlatform]:
    from aiosmtpd.controller import Controller

    handler = RecordingSmtpHandler()
    smtp_port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    url = f"redis://127.0.0.1:{redis_server.port}/{ISOLATED_REDIS_DB}"
    env = {
        **platform_env,
        "TENANTQ_REDIS_URL": url,
        **private_broker("isolated"),
        "TENANTQ_SMTP_HOST": "127.0.0.1",
        "TENANTQ_SMTP_PORT": str(smtp_port),
        "TENANTQ_SMTP_STARTTLS": "0",
        "TENANTQ_SMTP_DEFAULT_FROM": "Platform <no-reply@platform.test>",
        "TENANTQ_HTTP_ALLOW_PRIVATE": "1",
        "TENANTQ_WEBHOOK_BACKOFF_BASE_SECONDS": "0.5",
        "TENANTQ_WEBHOOK_MAX_ATTEMPTS": "4",
    }
    group = ProcessGroup(env, tmp_path_factory.mktemp("isolated-logs"))
    client = redis_lib.Redis.from_url(url, decode_responses=True)
    try:
        start_worker(group, name="iso-worker")
        group.start("iso-dispatcher", [sys.executable, "-m", "tenantq.cli", "dispatcher"])
        _ping(broker_url(env))
        yield IsolatedPlatform(group=group, redis=client, smtp=handler, smtp_port=smtp_port)
    finally:
        group.stop_all()
        controller.stop()
        client.close()


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class LocalHttpServer:
    """A real HTTP server on 127.0.0.1 in a thread. ``route(request) -> Reply`` decides each answer;
    every request is recorded (method, path, headers, body)."""

    def __init__(self, route: Callable[[dict[str, Any]], Reply]) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _handle(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                req = {
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers.items()),
                    "body": body,
                    "at": time.time(),
                }
                with outer.lock:
                    outer.requests.append(req)
                    index = len(outer.requests)
                req["index"] = index
                reply = route(req)
                self.send_response(reply.status)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(reply.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(reply.body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def matching(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"].split("?")[0] == path]


def json_reply(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(
        status, json.dumps(payload).encode(), {"content-type": "application/json", **(headers or {})}
    )
