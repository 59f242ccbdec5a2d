"""Shared FastAPI dependency aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import anyio.to_thread
from anyio import CancelScope, CapacityLimiter
from fastapi import Depends, Query
from sqlalchemy.orm import Session

from tenantq.core.db import session_factory
from tenantq.core.periods import PERIOD_PATTERN
from tenantq.core.repository import CURSOR_PATTERN


async def get_session() -> AsyncIterator[Session]:
    """The request's session, which owns its transaction: committed when the route returns, rolled back
    when it raises. Routes and the services they call only ``flush()``; a service commits itself only
    where something outside the database must follow the commit (a job queued in Redis after the
    commit that created its row), and says so.

    Async, so that opening the session (no I/O) and closing one that holds nothing cost no thread
    hop: a sync generator dependency is entered and left on the request thread pool, two of the four
    thread calls of ``GET /v1/jobs/{id}`` (whose auth and read end their own transactions). Each hop
    is a wake-up of a worker thread and a GIL hand-over, and under load every one waits its turn."""
    session = session_factory()()
    try:
        yield session
    except BaseException:
        await _finish(session, commit=False)
        raise
    await _finish(session, commit=True)


async def _finish(session: Session, *, commit: bool) -> None:
    if session.in_transaction() or session.new or session.dirty or session.deleted:
        # A connection is held or changes are pending: the commit (or rollback) and the close talk to
        # the database, so they run on a thread like the route did. As FastAPI does for a sync
        # generator's exit: shielded (a client that goes away must not leak the connection) and outside
        # the thread pool's capacity (a request holding a connection never waits for a pool thread).
        with CancelScope(shield=True):
            await anyio.to_thread.run_sync(_end, session, commit, limiter=CapacityLimiter(1))
    else:
        session.close()


def _end(session: Session, commit: bool) -> None:
    try:
        if commit:
            session.commit()
        else:
            session.rollback()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# scope="function": the commit runs when the route returns, before the response is sent, so a failed
# commit answers 500 instead of a success the database never stored.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]

# The page cursor of every list: what ``encode_cursor`` writes (unpadded URL-safe base64).
CursorQuery = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=512,
        pattern=CURSOR_PATTERN,
        description="`next_cursor` of the previous page (opaque).",
        examples=["MjAyNi0xMS0zMFQxMjowMDowMCswMDowMHxqXzE"],
    ),
]

# A billing period in a query. The pattern is published; the check is Period.parse's, which accepts
# exactly what it matches and answers 422 ``invalid_period`` otherwise.
PeriodQuery = Annotated[
    str | None,
    Query(
        max_length=7,
        description="Calendar month, UTC: YYYY-MM (1970-01 to 9998-12). Default: the current month.",
        examples=["2026-11"],
        json_schema_extra={"pattern": PERIOD_PATTERN},
    ),
]
