"""The usage buffer: a Redis stream drained into SQL in batches by the flusher.

Workers append closed attempts to ``tq:usage`` (see ``tenantq.billing.usage.metering``). The flusher reads
them through the consumer group ``tq:usage:flushers``, inserts the events idempotently (the event id is
the primary key: ``ON CONFLICT DO NOTHING`` on PostgreSQL, ``INSERT OR IGNORE`` on SQLite) and only then
acknowledges and deletes the entries. So:
- the database down or slow: entries stay in the stream (pending for this consumer) and are retried;
  tasks never wait for SQL;
- a flusher that crashes after reading: its pending entries are re-claimed by another flusher with
  ``XAUTOCLAIM`` once idle for ``claim_idle_ms``;
- a crash between insert and ack: the entries are read again and the insert adds nothing.
Entries that cannot be parsed are moved to ``tq:usage:dead`` rather than blocking the stream.

After an insert the flusher adds the *newly inserted* CPU time to the Redis quota counters
(``tenantq.billing.usage.quotas``), so compute quotas follow usage within a flush interval. Every
``reconcile_every`` seconds the loop also runs the metering reconciler (attempts whose worker died).

Runs as ``tenantq billing flush`` (a child of ``tenantq up``); several flushers may run at once.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, cast

import redis
from redis.typing import EncodableT, FieldT
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from tenantq.billing.usage.metering import STREAM, Meter
from tenantq.billing.usage.models import USAGE_METRICS, UsageEvent
from tenantq.billing.usage.quotas import sync_counters_from_sql
from tenantq.core import keys
from tenantq.core.db import unscoped_session, utcnow
from tenantq.core.redis import get_redis

log = logging.getLogger("tenantq.flusher")

GROUP = keys.USAGE_FLUSHERS
DEAD = keys.USAGE_DEAD


def ensure_group(client: redis.Redis) -> None:
    try:
        client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


# Column widths of usage_event: an entry that does not fit is refused here, not by the database, so one
# bad entry can never block the batch it arrived in.
_MAX_LEN = {"id": 128, "tenant_id": 36, "job_id": 36, "task": 128, "state": 16, "worker": 255}
_MAX_QUANTITY = 2**63 - 1


def parse_entry(fields: dict[str, str]) -> list[dict[str, Any]]:
    """One stream entry -> usage event rows ready to insert. Raises ValueError when malformed."""
    try:
        events = json.loads(fields["events"])
        rows = []
        for e in events:
            if e["metric"] not in USAGE_METRICS:
                raise ValueError(f"unknown metric {e['metric']!r}")
            row = {
                "id": str(e["id"]),
                "tenant_id": str(e["tenant_id"]),
                "job_id": str(e["job_id"]),
                "attempt": int(e["attempt"]),
                "task": str(e["task"]),
                "metric": e["metric"],
                "quantity": int(e["quantity"]),
                "state": str(e["state"]),
                "worker": None if e.get("worker") is None else str(e["worker"]),
                "occurred_at": datetime.fromtimestamp(float(e["occurred_at"]), UTC),
            }
            for name, limit in _MAX_LEN.items():
                if row[name] is not None and len(row[name]) > limit:
                    raise ValueError(f"{name} longer than {limit} characters")
            if not 0 <= row["quantity"] <= _MAX_QUANTITY or not 0 < row["attempt"] < 2**31:
                raise ValueError("quantity or attempt out of range")
            rows.append(row)
        return rows
    except (KeyError, TypeError, AttributeError, OverflowError, json.JSONDecodeError) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from None


def insert_events(session: Session, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Insert, ignoring ids already present. Returns the rows that were new."""
    if not rows:
        return []
    # One statement per batch; duplicates inside the batch are collapsed first (same id, same event).
    unique = list({r["id"]: r for r in rows}.values())
    now = utcnow()
    for r in unique:
        r.setdefault("recorded_at", now)
    dialect = session.get_bind().dialect.name
    stmt: postgresql.Insert | sqlite.Insert
    if dialect == "postgresql":
        stmt = postgresql.insert(UsageEvent).on_conflict_do_nothing(index_elements=["id"])
    elif dialect == "sqlite":
        stmt = sqlite.insert(UsageEvent).on_conflict_do_nothing(index_elements=["id"])
    else:  # pragma: no cover - tenantq supports PostgreSQL and SQLite
        raise RuntimeError(f"unsupported database dialect {dialect!r}")
    # executemany (SQLAlchemy batches it into multi-row INSERT .. RETURNING): one cached statement, a
    # sixth of the CPU of a freshly compiled VALUES list per batch.
    inserted = set(session.scalars(stmt.returning(UsageEvent.id), unique).all())
    return [r for r in unique if r["id"] in inserted]


# One stream's entries as the client decodes them: (entry id, fields).
StreamEntries = list[tuple[str, dict[str, str]]]


def _entries_of(reply: Any) -> StreamEntries:
    """The entries of an XREADGROUP reply on one stream (RESP2: ``[[stream, entries]]``, or nothing)."""
    return cast(StreamEntries, reply[0][1]) if reply else []


class Flusher:
    def __init__(
        self,
        client: redis.Redis | None = None,
        *,
        consumer: str | None = None,
        batch: int = 500,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        reconcile_every: float = 10.0,
        quota_sync_every: float = 300.0,
        linger: float = 1.0,
    ) -> None:
        self.r = client or get_redis()
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.reconcile_every = reconcile_every
        self.quota_sync_every = quota_sync_every
        # After a partial batch, wait this long before reading again: one database transaction per
        # ``linger`` seconds instead of one per event keeps the flusher off the workers' write path.
        self.linger = linger
        self.last_read = 0
        self.stop_event = threading.Event()
        self._group_ready = False
        self._last_reconcile = 0.0
        self._last_quota_sync = 0.0

    def _ensure_group(self) -> None:
        if not self._group_ready:
            ensure_group(self.r)
            self._group_ready = True

    def _write(self, entries: StreamEntries) -> int:
        """Insert one batch of entries and acknowledge them. Returns events newly inserted.

        Raises SQLAlchemyError if the database is unavailable: nothing is acknowledged then.
        """
        rows: list[dict[str, Any]] = []
        good: list[str] = []
        for entry_id, fields in entries:
            if not fields:  # deleted while pending: nothing left to insert
                good.append(entry_id)
                continue
            try:
                rows.extend(parse_entry(fields))
                good.append(entry_id)
            except ValueError as exc:
                log.error("usage entry %s is malformed (%s): moved to %s", entry_id, exc, DEAD)
                pipe = self.r.pipeline(transaction=True)
                dead: dict[FieldT, EncodableT] = dict(fields.items())
                dead["error"] = str(exc)[:500]
                dead["source_id"] = entry_id
                pipe.xadd(DEAD, dead)
                pipe.xack(STREAM, GROUP, entry_id)
                pipe.xdel(STREAM, entry_id)
                pipe.execute()
        with unscoped_session() as session:
            new_rows = insert_events(session, rows)
        if good:
            pipe = self.r.pipeline(transaction=True)
            pipe.xack(STREAM, GROUP, *good)
            pipe.xdel(STREAM, *good)
            pipe.execute()
        # The period's compute counters were already advanced by the workers as each attempt ended
        # (``metering.Meter.close``), so the dispatcher can hold a tenant without waiting for us.
        return len(new_rows)

    def _read(self) -> StreamEntries:
        # Our own pending entries first (read earlier, not yet written: e.g. the database was down) ...
        entries = _entries_of(self.r.xreadgroup(GROUP, self.consumer, {STREAM: "0"}, count=self.batch))
        if entries:
            return entries
        # ... then entries a crashed flusher left pending ...
        _next, claimed, *_ = self.r.xautoclaim(
            STREAM, GROUP, self.consumer, min_idle_time=self.claim_idle_ms, start_id="0-0", count=self.batch
        )
        if claimed:
            return cast(StreamEntries, claimed)
        # ... then new ones.
        block = self.block_ms if self.block_ms > 0 else None
        return _entries_of(
            self.r.xreadgroup(GROUP, self.consumer, {STREAM: ">"}, count=self.batch, block=block)
        )

    def flush_once(self) -> int:
        """Read and write one batch. Returns events newly inserted (0 when idle or all duplicates)."""
        self._ensure_group()
        entries = self._read()
        self.last_read = len(entries)
        if not entries:
            return 0
        return self._write(entries)

    def drain(self, max_batches: int = 1000) -> int:
        """Flush until the stream has nothing for us (tests, CLI ``--once``). Returns events inserted."""
        saved, self.block_ms = self.block_ms, 0
        total = 0
        try:
            for _ in range(max_batches):
                self._ensure_group()
                entries = self._read()
                if not entries:
                    break
                total += self._write(entries)
        finally:
            self.block_ms = saved
        return total

    def periodic(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now - self._last_reconcile >= self.reconcile_every:
            self._last_reconcile = now
            Meter(self.r).reconcile()
        if now - self._last_quota_sync >= self.quota_sync_every:
            self._last_quota_sync = now
            sync_counters_from_sql(self.r)

    def run_forever(self) -> None:
        log.info("usage flusher %s started (stream %s, group %s)", self.consumer, STREAM, GROUP)
        backoff = 1.0
        while not self.stop_event.is_set():
            try:
                self.flush_once()
                self.periodic()
                backoff = 1.0
                if 0 < self.last_read < self.batch:
                    self.stop_event.wait(self.linger)
            except redis.ConnectionError as exc:
                log.warning("redis unavailable, retrying in %.0fs: %s", backoff, exc)
                self._group_ready = False
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            except SQLAlchemyError as exc:
                # Entries stay pending in the stream: they are written once the database is back.
                log.warning(
                    "database unavailable, usage stays buffered; retrying in %.0fs: %s",
                    backoff,
                    exc.__class__.__name__,
                )
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 30.0)
        log.info("usage flusher stopped")


def stream_backlog(client: redis.Redis) -> dict[str, int]:
    """Entries waiting in the stream and entries read but not yet written (for ops and tests)."""
    length = int(client.xlen(STREAM)) if client.exists(STREAM) else 0
    pending = 0
    try:
        info = client.xpending(STREAM, GROUP)
        pending = int(info["pending"]) if info else 0
    except redis.ResponseError:
        pass
    return {"length": length, "pending": pending}


def replay(client: redis.Redis, entries: Iterable[dict[str, str]]) -> int:
    """Append entries again (operator tool after restoring a backup; idempotent by event id)."""
    n = 0
    for fields in entries:
        entry: dict[FieldT, EncodableT] = dict(fields.items())
        client.xadd(STREAM, entry)
        n += 1
    return n


def main(once: bool = False) -> int:
    flusher = Flusher()
    if once:
        return flusher.drain()

    def _stop(_signum, _frame):
        flusher.stop_event.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    flusher.run_forever()
    return 0
