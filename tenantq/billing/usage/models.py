"""Usage events: what each attempt consumed, recorded once.

The id is deterministic (``{job_id}:{attempt}:{metric}``) so duplicate signals, redeliveries and
replays of the usage buffer insert nothing new (idempotent insert on the primary key).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from tenantq.core.db import Base, UTCDateTime, utcnow

USAGE_METRICS = ("jobs", "attempts", "compute_ms", "wall_ms")


class UsageEvent(Base):
    __tablename__ = "usage_event"
    __table_args__ = (Index("ix_usage_event_tenant_occurred", "tenant_id", "occurred_at"),)

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(36))
    job_id: Mapped[str] = mapped_column(String(36), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    task: Mapped[str] = mapped_column(String(128))
    metric: Mapped[str] = mapped_column(String(32))  # one of USAGE_METRICS
    quantity: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))  # final state of the attempt
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())  # attempt end: decides the billing period
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Set by period close (billing.invoices) to the YYYY-MM invoice that billed this event; NULL until
    # then. An event still NULL when its own month closed is billed by the next close (late event).
    billed_period: Mapped[str | None] = mapped_column(String(7), nullable=True, index=True)
