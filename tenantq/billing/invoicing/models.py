"""Prices, billing periods, invoices and Stripe bookkeeping.

Prices are data: ``plan_price`` holds, per plan and metric, the included units and the graduated
overage tiers (``price_tier``); the operator edits them without a deploy. ``billing_period`` records
each closed calendar month (UTC) once; ``invoice`` is unique per (tenant, period), so closing twice
cannot bill twice. Stripe ids are stored next to the rows they mirror (``stripe_customer``,
``invoice.stripe_invoice_id``, ``invoice_line.stripe_invoice_item_id``): sync looks them up before
creating anything. ``stripe_event`` dedupes webhook deliveries on Stripe's event id.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import JSON, ForeignKey, Integer, Numeric, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from tenantq.core.db import Base, UTCDateTime, new_id, utcnow

# Unit prices need sub-cent precision (0.0004 per compute second); amounts keep 4 places so
# three-decimal currencies fit; quantities keep 6 (compute seconds come from milliseconds).
UnitPrice = Numeric(18, 8)
Amount = Numeric(20, 4)
Quantity = Numeric(24, 6)


# The effective time of the seeded prices and of every price that existed before versions did.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class PlanPrice(Base):
    """One version of how one metric of one plan is charged: ``included_units`` free, then graduated
    tiers, from ``effective_from`` until the next version of the same (plan, metric). A ``retired``
    version stops charging the metric from its time. Usage is rated by the version in force when it
    occurred (``rating``); editing a price adds a version, it never rewrites one in force earlier."""

    __tablename__ = "plan_price"
    __table_args__ = (UniqueConstraint("plan_name", "metric", "effective_from"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    plan_name: Mapped[str] = mapped_column(ForeignKey("plan.name", ondelete="CASCADE"), index=True)
    metric: Mapped[str] = mapped_column(String(32))  # one of pricing.PRICED_METRICS
    # None: take the plan's quota (Plan.included_jobs / included_compute_seconds), so quota and
    # price cannot disagree unless the operator overrides it here on purpose.
    included_units: Mapped[Decimal | None] = mapped_column(Quantity, nullable=True)
    description: Mapped[str] = mapped_column(String(128), default="")
    effective_from: Mapped[datetime] = mapped_column(UTCDateTime(), default=lambda: EPOCH)
    retired: Mapped[bool] = mapped_column(default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    tiers: Mapped[list[PriceTier]] = relationship(
        back_populates="price", cascade="all, delete-orphan", order_by="PriceTier.position", lazy="selectin"
    )


class PriceTier(Base):
    """One graduated tier over the *billable* quantity (usage above the included units).

    ``up_to`` is the tier's upper bound in billable units (None: unbounded, always the last tier).
    """

    __tablename__ = "price_tier"
    __table_args__ = (UniqueConstraint("price_id", "position"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    price_id: Mapped[str] = mapped_column(ForeignKey("plan_price.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    up_to: Mapped[Decimal | None] = mapped_column(Quantity, nullable=True)
    unit_price: Mapped[Decimal] = mapped_column(UnitPrice)

    price: Mapped[PlanPrice] = relationship(back_populates="tiers")


class BillingPeriod(Base):
    """A closed calendar month. The row exists only once the period is closed; its unique ``period``
    is what makes two concurrent closers produce one set of invoices."""

    __tablename__ = "billing_period"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    period: Mapped[str] = mapped_column(String(7), unique=True)  # YYYY-MM
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime())  # exclusive
    status: Mapped[str] = mapped_column(String(16), default="closed")
    closed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    closed_by: Mapped[str] = mapped_column(String(64), default="system")
    forced: Mapped[bool] = mapped_column(default=False)
    invoice_count: Mapped[int] = mapped_column(Integer, default=0)
    event_count: Mapped[int] = mapped_column(Integer, default=0)
    # Events that occurred in an earlier period but arrived after it was closed.
    late_event_count: Mapped[int] = mapped_column(Integer, default=0)


class Invoice(Base):
    """One tenant's bill for one period. A correction voids it and reissues a new ``revision`` (the
    void one stays, ``replaced_by_id`` points at its successor); at most one revision is not void."""

    __tablename__ = "invoice"
    __table_args__ = (UniqueConstraint("tenant_id", "period", "revision"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    period: Mapped[str] = mapped_column(String(7), index=True)
    plan_name: Mapped[str] = mapped_column(String(64))
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | paid | void
    revision: Mapped[int] = mapped_column(Integer, default=1)
    total: Mapped[Decimal] = mapped_column(Amount)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime())
    period_end: Mapped[datetime] = mapped_column(UTCDateTime())
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    stripe_invoice_id: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    stripe_synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Stripe's status of the mirrored invoice after the last sync (draft, open, paid, void).
    stripe_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    voided_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    void_reason: Mapped[str | None] = mapped_column(String(255), nullable=True)
    replaced_by_id: Mapped[str | None] = mapped_column(String(36), nullable=True)

    lines: Mapped[list[InvoiceLine]] = relationship(
        back_populates="invoice",
        cascade="all, delete-orphan",
        order_by="InvoiceLine.position",
        lazy="selectin",
    )


class InvoiceLine(Base):
    __tablename__ = "invoice_line"
    __table_args__ = (UniqueConstraint("invoice_id", "position"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    invoice_id: Mapped[str] = mapped_column(ForeignKey("invoice.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    metric: Mapped[str] = mapped_column(String(32))
    tier: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: base fee or included units
    description: Mapped[str] = mapped_column(String(255))
    quantity: Mapped[Decimal] = mapped_column(Quantity)
    unit_price: Mapped[Decimal] = mapped_column(UnitPrice)
    amount: Mapped[Decimal] = mapped_column(Amount)
    stripe_invoice_item_id: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)

    invoice: Mapped[Invoice] = relationship(back_populates="lines")


class CreditNote(Base):
    """An amount credited against an issued invoice (the invoice itself never changes)."""

    __tablename__ = "credit_note"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    invoice_id: Mapped[str] = mapped_column(ForeignKey("invoice.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    currency: Mapped[str] = mapped_column(String(3))
    amount: Mapped[Decimal] = mapped_column(Amount)
    reason: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    stripe_credit_note_id: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)


class StripeCustomer(Base):
    """The Stripe customer that mirrors a tenant, stored so sync never creates a second one."""

    __tablename__ = "stripe_customer"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class StripeEvent(Base):
    """A verified webhook event, stored once per Stripe event id before it is processed."""

    __tablename__ = "stripe_event"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # Stripe's evt_... id
    type: Mapped[str] = mapped_column(String(128))
    payload: Mapped[dict] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    outcome: Mapped[str | None] = mapped_column(Text, nullable=True)


class StripeMeterCursor(Base):
    """How far meter-event streaming got, per usage metric: the last (recorded_at, id) sent."""

    __tablename__ = "stripe_meter_cursor"

    metric: Mapped[str] = mapped_column(String(32), primary_key=True)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())
    event_id: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
