"""Engine, sessions and the declarative base shared by every area."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from sqlalchemy import DateTime, MetaData, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.types import TypeDecorator

from tenantq.core.settings import get_settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops tzinfo otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


_engine: Engine | None = None
_engine_pid: int | None = None
_sessionmaker: sessionmaker[Session] | None = None


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _pragma(
        dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry
    ) -> None:  # pragma: no cover - trivial
        cur = dbapi_conn.cursor()
        # WAL lets the API read while a worker writes; busy_timeout waits instead of failing at once.
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()


def make_engine(url: str, *, statement_timeout: bool = True) -> Engine:
    """The process's engine for ``url``. On PostgreSQL every timeout comes from the settings
    (``db_*``): connect, statement (unless ``statement_timeout`` is False: migrations) and pool
    checkout, so a stalled database fails a request within seconds instead of hanging it."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _configure_sqlite(engine)
        return engine
    settings = get_settings()
    connect_args: dict[str, object] = {}
    if url.startswith("postgresql"):
        connect_args["connect_timeout"] = settings.db_connect_timeout_seconds
        if statement_timeout and settings.db_statement_timeout_ms:
            connect_args["options"] = f"-c statement_timeout={settings.db_statement_timeout_ms}"
    engine = create_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        connect_args=connect_args,
    )
    _ping_idle_connections(engine)
    return engine


# A pooled connection is pinged before reuse only if it sat idle this long. SQLAlchemy's
# pool_pre_ping pings on every check-out: a full round trip before each transaction, i.e. before
# every worker status update (two per attempt). A connection that a transaction returned to the pool
# a moment ago is alive unless the server dropped it within that moment, which no ping can rule out
# either (it may drop right after the ping); a server restart takes longer than this.
PING_IF_IDLE_SECONDS = 1.0


def _ping_idle_connections(engine: Engine) -> None:
    """pool_pre_ping, skipped for connections used within ``PING_IF_IDLE_SECONDS``. A failed ping
    raises DisconnectionError, on which the pool discards the connection and checks out a fresh one,
    as pool_pre_ping does."""

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_conn: DBAPIConnection | None, record: ConnectionPoolEntry) -> None:
        if record is not None:
            record.info["tq_returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(
        dbapi_conn: DBAPIConnection, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
    ) -> None:
        returned = record.info.get("tq_returned_at")
        if returned is not None and time.monotonic() - returned < PING_IF_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # any failure: treat the connection as dead
            raise DisconnectionError(f"connection failed its ping: {exc}") from exc


def is_database_outage(exc: BaseException) -> bool:
    """Is ``exc`` the database being unreachable, stalled or failing over (rather than a bug)?
    OperationalError: refused, reset, connect or statement timeout (PostgreSQL's query_canceled is an
    OperationalError in psycopg). TimeoutError: no pooled connection came free in time. A DBAPIError
    flagged connection_invalidated: the driver saw the connection drop, whatever class it raised."""
    if isinstance(exc, sa_exc.OperationalError | sa_exc.TimeoutError | sa_exc.DisconnectionError):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and bool(exc.connection_invalidated)


def get_engine() -> Engine:
    """One engine per process; a forked child gets its own (never share pooled sockets across fork)."""
    global _engine, _engine_pid, _sessionmaker
    if _engine is None or _engine_pid != os.getpid():
        _engine = make_engine(get_settings().effective_database_url)
        _engine_pid = os.getpid()
        _sessionmaker = sessionmaker(_engine, expire_on_commit=False)
    return _engine


def dispose_engine() -> None:
    global _engine, _engine_pid, _sessionmaker
    if _engine is not None and _engine_pid == os.getpid():
        _engine.dispose()
    _engine = None
    _engine_pid = None
    _sessionmaker = None


def session_factory() -> sessionmaker[Session]:
    get_engine()
    assert _sessionmaker is not None
    return _sessionmaker


@contextmanager
def unscoped_session() -> Iterator[Session]:
    """A session that sees every tenant, for system work (workers, dispatcher, beat, the usage flusher,
    period close, CLI). Nothing filters its queries by tenant: tenant requests go through the
    tenant-bound repositories of ``tenantq.core.repository`` instead. Commits on success."""
    session = session_factory()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
