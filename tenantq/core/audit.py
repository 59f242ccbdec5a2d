"""The audit log: who changed what money-relevant data, when, from what, to what.

One ``audit_log`` row per change to a plan, a price, a tenant's plan or overrides or billing email, or
an invoice (void, reissue, credit note). ``before`` and ``after`` are JSON snapshots of the changed
fields (None when the thing was created or removed). Rows are written in the same transaction as the
change they describe, so a rolled-back change leaves no entry and a committed one always has one.

``actor`` says who: ``operator:<subject>`` for the admin API, ``cli`` for the command line,
``tenant:<id>`` for a tenant's own key or dashboard session, ``system`` for scheduled tasks.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from tenantq.core.db import Base, UTCDateTime, new_id, utcnow


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64), index=True)  # e.g. price.set, invoice.void
    entity_type: Mapped[str] = mapped_column(String(32))  # plan | price | tenant | invoice | credit_note
    entity_id: Mapped[str] = mapped_column(String(128), index=True)
    tenant_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


def jsonable(value: Any) -> Any:
    """Decimals as exact strings, datetimes as ISO 8601, containers recursively."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    entity_type: str,
    entity_id: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    tenant_id: str | None = None,
    at: datetime | None = None,
) -> AuditEntry:
    """Add one entry to the session (the caller's transaction commits it with the change)."""
    entry = AuditEntry(
        actor=actor,
        action=action,
        entity_type=entity_type,
        entity_id=entity_id,
        tenant_id=tenant_id,
        before=jsonable(before) if before is not None else None,
        after=jsonable(after) if after is not None else None,
        at=at or utcnow(),
    )
    session.add(entry)
    return entry


def entries(
    session: Session,
    *,
    entity_type: str | None = None,
    entity_id: str | None = None,
    tenant_id: str | None = None,
    action: str | None = None,
    limit: int = 100,
    before_id: tuple[datetime, str] | None = None,
) -> list[AuditEntry]:
    """Newest first; ``before_id`` (at, id) continues a previous page."""
    query = select(AuditEntry)
    if entity_type:
        query = query.where(AuditEntry.entity_type == entity_type)
    if entity_id:
        query = query.where(AuditEntry.entity_id == entity_id)
    if tenant_id:
        query = query.where(AuditEntry.tenant_id == tenant_id)
    if action:
        query = query.where(AuditEntry.action == action)
    if before_id is not None:
        at, last_id = before_id
        query = query.where((AuditEntry.at < at) | ((AuditEntry.at == at) & (AuditEntry.id < last_id)))
    return list(session.scalars(query.order_by(AuditEntry.at.desc(), AuditEntry.id.desc()).limit(limit)))
