"""Tenant-scoped data access: the one place where a query of a tenant-owned model gets its tenant filter.

A repository is bound to one tenant when it is made (``JobRepository(session, tenant_id)``). Every
query it runs starts from ``select()``, which already carries ``WHERE model.tenant_id = :tenant``, so no
method can reach another tenant's row. Another tenant's row is indistinguishable from a missing one:
``find`` answers None and ``get`` raises NotFound (404, never 403).

System work that must see every tenant (beat, the usage flusher, period close, the dispatcher) does
not use these classes: it opens ``unscoped_session()`` and says so.
"""

from __future__ import annotations

import base64
import builtins
from datetime import datetime
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast

from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from tenantq.core.db import Base
from tenantq.core.errors import InvalidInput, NotFound


class TenantOwned(Protocol):
    """A mapped model with a string primary key ``id`` and an owning ``tenant_id``."""

    id: str
    tenant_id: str


# Bound to the declarative base rather than to TenantOwned: mypy checks a protocol bound before it has
# resolved the models' Mapped[...] columns when models and this module share an import cycle.
ModelT = TypeVar("ModelT", bound=Base)


# What encode_cursor writes: URL-safe base64 without padding.
CURSOR_PATTERN = r"^[A-Za-z0-9_-]+$"


def encode_cursor(key: datetime | str, row_id: str) -> str:
    """An opaque keyset cursor: the sort key and id of the last row of a page."""
    value = key.isoformat() if isinstance(key, datetime) else key
    return base64.urlsafe_b64encode(f"{value}|{row_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    """(sort key as text, id) of a cursor from ``encode_cursor``; 422 ``invalid_cursor`` otherwise."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key, row_id = base64.urlsafe_b64decode(padded.encode()).decode().split("|", 1)
        return key, row_id
    except Exception as exc:  # any decoding problem is the caller's bad input
        raise InvalidInput("Invalid cursor.", code="invalid_cursor") from exc


class TenantRepository(Generic[ModelT]):
    """Base of every tenant-bound repository. Subclasses set ``model`` and ``not_found``, add their own
    queries on top of ``select()``, and page with ``page()``."""

    model: ClassVar[type[Any]]
    not_found: ClassVar[str] = "Not found."
    # Pages are newest first on (page_key, id); page_key must be unique together with id.
    page_key: ClassVar[str] = "created_at"

    def __init__(self, session: Session, tenant_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def _tenant_filter(self) -> ColumnElement[bool]:
        column: InstrumentedAttribute[str] = self.model.tenant_id
        return column == self.tenant_id

    def select(self) -> Select[ModelT]:
        """Every query of this repository starts here: the tenant filter is already applied."""
        return select(self.model).where(self._tenant_filter())

    def find(self, row_id: str) -> ModelT | None:
        """The row with this id if it belongs to the tenant, else None."""
        return self.session.scalars(self.select().where(self.model.id == row_id)).first()

    def get(self, row_id: str) -> ModelT:
        """The row with this id; NotFound if it does not exist or belongs to another tenant."""
        row = self.find(row_id)
        if row is None:
            raise NotFound(self.not_found, details={"id": row_id})
        return row

    def count(self, *criteria: ColumnElement[bool]) -> int:
        """How many of the tenant's rows match every one of ``criteria``."""
        query = select(func.count()).select_from(self.model).where(self._tenant_filter(), *criteria)
        return int(self.session.scalar(query) or 0)

    def add(self, row: ModelT) -> ModelT:
        """Add a new row, owned by this repository's tenant whatever the caller set."""
        cast(TenantOwned, row).tenant_id = self.tenant_id
        self.session.add(row)
        return row

    def page(
        self, query: Select[ModelT], *, limit: int, cursor: str | None
    ) -> tuple[builtins.list[ModelT], str | None]:
        """One page of ``query`` (built on ``select()``), newest first, and the next page's cursor."""
        key: InstrumentedAttribute[Any] = getattr(self.model, self.page_key)
        row_id: InstrumentedAttribute[str] = self.model.id
        if cursor:
            raw_key, last_id = decode_cursor(cursor)
            last_key = self._parse_page_key(raw_key)
            query = query.where(or_(key < last_key, and_(key == last_key, row_id < last_id)))
        rows = builtins.list(self.session.scalars(query.order_by(key.desc(), row_id.desc()).limit(limit + 1)))
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = encode_cursor(getattr(last, self.page_key), cast(TenantOwned, last).id)
        return rows[:limit], next_cursor

    @staticmethod
    def _parse_page_key(raw: str) -> datetime | str:
        try:
            return datetime.fromisoformat(raw)
        except ValueError as exc:
            raise InvalidInput("Invalid cursor.", code="invalid_cursor") from exc
