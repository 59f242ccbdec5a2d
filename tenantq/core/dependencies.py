"""Shared FastAPI dependency aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Query
from sqlalchemy.orm import Session

from tenantq.core.db import session_factory
from tenantq.core.periods import PERIOD_PATTERN
from tenantq.core.repository import CURSOR_PATTERN


def get_session() -> Iterator[Session]:
    """The request's session, which owns its transaction: committed when the route returns, rolled back
    when it raises. Routes and the services they call only ``flush()``; a service commits itself only
    where something outside the database must follow the commit (a job queued in Redis after the
    commit that created its row), and says so."""
    session = session_factory()()
    try:
        yield session
        session.commit()
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
