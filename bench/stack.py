"""A private tenantq deployment for the load and fault benchmarks (and tests/faults).

Its own redis-server (AOF, fsync always), a fresh database (PostgreSQL when ``database_url`` names a
server: a new database on it, dropped at the end; else a SQLite file), optionally a :class:`TcpProxy`
in front of PostgreSQL, and the roles run as separate processes like a real deployment: ``tenantq api``,
``tenantq dispatcher``, Celery workers, ``tenantq billing flush``. A role that exits is started again
after a second (:meth:`Stack.supervise`), as ``tenantq up`` and Kubernetes do; ``restarts`` counts it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.tcpproxy import TcpProxy
from tenantq.core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHEDDING_WAIT_S = Settings.model_fields["api_overload_wait_seconds"].default

# Limits that let the load decide: no submit rate limit, no queue bound, no quota in the way.
OPEN_OVERRIDES: dict[str, Any] = {
    "submit_rate": 1_000_000,
    "submit_burst": 10_000_000,
    "exec_rate": 1_000_000,
    "concurrency": 10_000,
    "max_queued": 10_000_000,
}


@dataclass
class Stack:
    database_url: str | None = None  # a PostgreSQL server URL, or None for SQLite
    redis_port: int | None = None
    db_proxy: bool = False  # put a TcpProxy between every role and PostgreSQL
    tenants: int = 20
    plan: str = "enterprise"
    extra_env: dict[str, str] = field(default_factory=dict)
    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tq-stack-")))
    keys: list[tuple[str, str]] = field(default_factory=list)  # (tenant id, api key)
    proxy: TcpProxy | None = None
    api_port: int = 0
    _drop: Any = None
    restarts: dict[str, int] = field(default_factory=dict)
    _roles: dict[str, list[str]] = field(default_factory=dict)
    _stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        from tests.conftest import ProcessGroup, RedisServer, free_port

        self.redis = RedisServer(self.work)
        if self.redis_port:
            self.redis.port = self.redis_port
        self.api_port = free_port()
        self.db_url = self._make_database()
        role_db_url = self.db_url
        if self.db_proxy:
            if not self.db_url.startswith("postgresql"):
                raise ValueError("the database proxy needs PostgreSQL")
            from sqlalchemy.engine import make_url

            url = make_url(self.db_url)
            self.proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432)).start()
            proxied = url.set(host="127.0.0.1", port=self.proxy.port)
            role_db_url = proxied.render_as_string(hide_password=False)
        self.env = {
            "TENANTQ_DATABASE_URL": role_db_url,
            "TENANTQ_REDIS_URL": self.redis.url,
            "TENANTQ_DATA_DIR": str(self.work),
            "TENANTQ_SECRET_KEY": "stack-" + uuid.uuid4().hex + uuid.uuid4().hex,
            "TENANTQ_LOG_JSON": "false",
            "TENANTQ_METRICS_PUBLIC": "1",
            "PROMETHEUS_MULTIPROC_DIR": str(self.work / "prometheus"),
            # The real load-shedding wait, also when run from the tests (whose environment raises it).
            "TENANTQ_API_OVERLOAD_WAIT_SECONDS": str(
                Settings.model_fields["api_overload_wait_seconds"].default
            ),
            **self.extra_env,
        }
        self.group = ProcessGroup(self.env, self.work)

    # -- setup ----------------------------------------------------------------------------------------
    def _make_database(self) -> str:
        base = self.database_url or ""
        if not base.startswith("postgresql"):
            self._drop = lambda: None
            return f"sqlite:///{self.work / 'tenantq.db'}"
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        name = f"tq_stack_{uuid.uuid4().hex[:8]}"
        admin = create_engine(make_url(base).set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))

        def drop() -> None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()

        self._drop = drop
        return make_url(base).set(database=name).render_as_string(hide_password=False)

    def prepare(self) -> None:
        """Redis up, schema migrated, plans seeded, tenants and their API keys created."""
        self.redis.start()
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update({**self.env, "TENANTQ_DATABASE_URL": self.db_url})
        try:
            from tenantq.core.db import dispose_engine, unscoped_session
            from tenantq.core.redis import reset_redis
            from tenantq.core.settings import reset_settings_cache
            from tenantq.ops.migrate import upgrade
            from tenantq.tenants.access.service import create_api_key
            from tenantq.tenants.accounts.models import Tenant
            from tenantq.tenants.accounts.service import seed_plans

            reset_settings_cache()
            dispose_engine()
            reset_redis()
            upgrade(self.db_url)
            with unscoped_session() as session:
                seed_plans(session)
                session.flush()
                for i in range(self.tenants):
                    tenant = Tenant(
                        name=f"load-{i}-{uuid.uuid4().hex[:4]}",
                        plan_name=self.plan,
                        status="active",
                        overrides=dict(OPEN_OVERRIDES),
                    )
                    session.add(tenant)
                    session.flush()
                    _row, secret = create_api_key(session, tenant=tenant, name="bench")
                    self.keys.append((tenant.id, secret))
            dispose_engine()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            # This process (a test session, say) goes back to its own settings, database and Redis.
            from tenantq.core.db import dispose_engine
            from tenantq.core.redis import reset_redis
            from tenantq.core.settings import reset_settings_cache

            reset_settings_cache()
            dispose_engine()
            reset_redis()

    # -- roles ----------------------------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def _start(self, name: str, argv: list[str]) -> None:
        self._roles[name] = argv
        self.group.start(name, argv)

    def start_api(self, workers: int = 1) -> None:
        py = sys.executable
        argv = [py, "-m", "tenantq.cli", "api", "--port", str(self.api_port), "--workers", str(workers)]
        self._start("api", argv)
        self.wait_ready()

    def start_dispatcher(self) -> None:
        self._start("dispatcher", [sys.executable, "-m", "tenantq.cli", "dispatcher"])

    def start_flusher(self) -> None:
        self._start("flusher", [sys.executable, "-m", "tenantq.cli", "billing", "flush"])

    def start_worker(self, concurrency: int = 2, name: str = "worker") -> None:
        argv = [
            sys.executable, "-m", "celery", "-A", "tenantq.worker", "worker", "--loglevel=INFO",
            f"--concurrency={concurrency}", f"--hostname={name}-{uuid.uuid4().hex[:6]}@%h",
            "--without-mingle", "--without-gossip", "--queues=tq.exec,tq.system",
        ]  # fmt: skip
        self._start(name, argv)

    def supervise(self) -> None:
        """Start every role again a second after it exits (a crash), until :meth:`close`."""

        def loop() -> None:
            while not self._stopping.wait(1.0):
                for name, argv in list(self._roles.items()):
                    proc = self.group.procs.get(name)
                    if proc is not None and proc.poll() is not None and not self._stopping.is_set():
                        self.restarts[name] = self.restarts.get(name, 0) + 1
                        self.group.start(name, argv)

        threading.Thread(target=loop, daemon=True, name="stack-supervisor").start()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api_url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        tail = self.group.log("api")[-3000:]
        raise RuntimeError(f"the API did not become ready within {timeout}s:\n{tail}")

    def sql(self) -> Any:
        """An engine on the real database (not through the proxy), for the benchmark's own checks."""
        from sqlalchemy import create_engine

        return create_engine(self.db_url)

    def close(self) -> None:
        self._stopping.set()
        self.group.stop_all()
        if self.proxy is not None:
            self.proxy.close()
        self.redis.stop()
        with contextlib.suppress(Exception):
            self._drop()
