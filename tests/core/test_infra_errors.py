"""Infrastructure failures answer 503 in the one error shape, with Retry-After; /readyz never hangs.

The database and Redis are made unreachable for real: the process's engine (or Redis client) is pointed
at a port where nothing listens, or at a listener that accepts and never answers (a stalled server).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import sessionmaker

from tenantq.core import db as core_db
from tenantq.core import redis as core_redis
from tenantq.core.db import make_engine
from tenantq.core.http_errors import infrastructure_error
from tests.conftest import free_port
from tests.factories import ApiKeyFactory, auth


def assert_503(resp, code: str) -> dict:
    assert resp.status_code == 503, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert int(resp.headers["Retry-After"]) >= 1
    body = resp.json()
    assert body["error"]["code"] == code
    return body


class StalledServer:
    """Accepts TCP connections and never answers: a database or Redis that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)

    def close(self) -> None:
        self._stop = True
        for conn in self.conns:
            conn.close()
        self.sock.close()


@pytest.fixture
def database_at(monkeypatch) -> Iterator[callable]:
    """Point this process's engine at ``url`` for the test, then restore it."""
    engines = []

    def point(url: str) -> None:
        engine = make_engine(url)
        engines.append(engine)
        monkeypatch.setattr(core_db, "_engine", engine)
        monkeypatch.setattr(core_db, "_engine_pid", os.getpid())
        monkeypatch.setattr(core_db, "_sessionmaker", sessionmaker(engine, expire_on_commit=False))

    yield point
    for engine in engines:
        engine.dispose()


def dead_database_url() -> str:
    return f"postgresql+psycopg://nobody:nothing@127.0.0.1:{free_port()}/nothing"


class TestClassification:
    def test_database_failures(self):
        for exc in (
            sa_exc.OperationalError("SELECT 1", {}, Exception("connection refused")),
            sa_exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached"),
            sa_exc.DisconnectionError("gone"),
        ):
            mapped = infrastructure_error(exc)
            assert mapped is not None and mapped.code == "database_unavailable", exc
            assert mapped.status_code == 503 and mapped.headers["Retry-After"]

    def test_redis_failures_including_loading_and_timeouts(self):
        for exc in (
            redis.ConnectionError("refused"),
            redis.BusyLoadingError("Redis is loading the dataset in memory"),
            redis.TimeoutError("Timeout reading from socket"),
        ):
            mapped = infrastructure_error(exc)
            assert mapped is not None and mapped.code == "queue_unavailable", exc

    def test_wrapped_and_grouped_failures_are_found(self):
        try:
            try:
                raise redis.ConnectionError("refused")
            except redis.ConnectionError as inner:
                raise RuntimeError("middleware wrapped it") from inner
        except RuntimeError as outer:
            wrapped = outer
        grouped = ExceptionGroup("task group", [ValueError("x"), wrapped])
        mapped = infrastructure_error(grouped)
        assert mapped is not None and mapped.code == "queue_unavailable"

    def test_bugs_are_not_outages(self):
        assert infrastructure_error(ValueError("bug")) is None
        assert infrastructure_error(sa_exc.IntegrityError("INSERT", {}, Exception("dup"))) is None


class TestDatabaseDown:
    def test_authenticated_endpoints_answer_503_database_unavailable(self, api, database_at):
        key = ApiKeyFactory()
        database_at(dead_database_url())
        for method, path in (("GET", "/v1/jobs"), ("GET", "/v1/jobs/nope"), ("GET", "/v1/usage")):
            assert_503(api.request(method, path, headers=auth(key)), "database_unavailable")
        resp = api.post("/v1/jobs", json={"task": "demo.echo"}, headers=auth(key))
        assert_503(resp, "database_unavailable")

    def test_readyz_names_the_database_and_answers_503(self, api, database_at):
        database_at(dead_database_url())
        resp = api.get("/readyz")
        assert resp.status_code == 503
        assert resp.json()["checks"]["database"].startswith("error")
        assert resp.json()["checks"]["redis"] == "ok"

    def test_readyz_answers_within_2s_when_the_database_hangs(self, api, database_at):
        stalled = StalledServer()
        try:
            database_at(f"postgresql+psycopg://nobody:nothing@127.0.0.1:{stalled.port}/nothing")
            started = time.monotonic()
            resp = api.get("/readyz")
            took = time.monotonic() - started
            assert resp.status_code == 503
            assert resp.json()["checks"]["database"] == "error: timeout"
            assert took < 2.0, took
        finally:
            stalled.close()


class TestRedisDown:
    def test_submit_answers_503_queue_unavailable_and_creates_nothing(self, api, monkeypatch, db_session):
        from sqlalchemy import func, select

        from tenantq.platform.jobs.models import Job

        key = ApiKeyFactory()
        dead = redis.Redis(port=free_port(), socket_connect_timeout=1, decode_responses=True)
        monkeypatch.setattr(core_redis, "_client", dead)
        monkeypatch.setattr(core_redis, "_client_pid", os.getpid())
        resp = api.post("/v1/jobs", json={"task": "demo.echo"}, headers=auth(key))
        assert_503(resp, "queue_unavailable")
        db_session.expire_all()
        assert db_session.scalar(select(func.count()).where(Job.tenant_id == key.tenant_id)) == 0

    def test_readyz_answers_within_2s_when_redis_hangs(self, api, monkeypatch):
        stalled = StalledServer()
        try:
            hung = redis.Redis(port=stalled.port, socket_timeout=30, decode_responses=True)
            monkeypatch.setattr(core_redis, "_client", hung)
            monkeypatch.setattr(core_redis, "_client_pid", os.getpid())
            started = time.monotonic()
            resp = api.get("/readyz")
            assert time.monotonic() - started < 2.0
            assert resp.status_code == 503 and resp.json()["checks"]["redis"] == "error: timeout"
        finally:
            stalled.close()
