"""Plans and tenants: who is a customer and what their plan allows."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import JSON, ForeignKey, Integer, Numeric, String
from sqlalchemy.orm import Mapped, mapped_column

from tenantq.core.db import Base, UTCDateTime, new_id, utcnow


class Plan(Base):
    """A plan is data: the operator edits limits and prices without a deploy."""

    __tablename__ = "plan"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(128), default="")
    submit_rate: Mapped[float] = mapped_column(default=10.0)  # jobs/s accepted at the API
    submit_burst: Mapped[int] = mapped_column(Integer, default=50)
    exec_rate: Mapped[float] = mapped_column(default=10.0)  # jobs/s released to workers
    concurrency: Mapped[int] = mapped_column(Integer, default=2)
    max_queued: Mapped[int] = mapped_column(Integer, default=1000)
    weight: Mapped[int] = mapped_column(Integer, default=1)
    priority_min: Mapped[int] = mapped_column(Integer, default=0)
    priority_max: Mapped[int] = mapped_column(Integer, default=9)
    max_time_limit_s: Mapped[int] = mapped_column(Integer, default=300)
    max_retries: Mapped[int] = mapped_column(Integer, default=3)
    result_ttl_s: Mapped[int] = mapped_column(Integer, default=7 * 24 * 3600)  # how long job results are kept
    included_jobs: Mapped[int] = mapped_column(Integer, default=1000)
    included_compute_seconds: Mapped[int] = mapped_column(Integer, default=3600)
    hard_limits: Mapped[bool] = mapped_column(default=True)
    currency: Mapped[str] = mapped_column(String(3), default="usd")
    base_fee: Mapped[Decimal] = mapped_column(Numeric(18, 6), default=Decimal(0))
    # Schedules: shortest allowed period between two firings, and how many a tenant may own.
    min_schedule_interval_s: Mapped[int] = mapped_column(Integer, default=300)
    max_schedules: Mapped[int] = mapped_column(Integer, default=5)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Tenant(Base):
    __tablename__ = "tenant"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    plan_name: Mapped[str] = mapped_column(ForeignKey("plan.name"), default="free")
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | suspended
    overrides: Mapped[dict] = mapped_column(JSON, default=dict)
    # Where invoices go: copied to the Stripe customer, which Stripe emails finalized invoices to.
    billing_email: Mapped[str | None] = mapped_column(String(254), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class TenantPlanChange(Base):
    """A tenant moved from one plan to another at ``effective_from``: billing rates each part of a
    month under the plan in force then (usage by time, base fees prorated by time)."""

    __tablename__ = "tenant_plan_change"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    from_plan: Mapped[str] = mapped_column(String(64))
    to_plan: Mapped[str] = mapped_column(String(64))
    effective_from: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    actor: Mapped[str] = mapped_column(String(128), default="system")
