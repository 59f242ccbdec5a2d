"""Tenant and key operations shared by the CLI, the operator API and tests."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from tenantq.platform.errors import Conflict, InvalidInput, NotFound
from tenantq.platform.settings import get_settings
from tenantq.tenants.keys import ALL_SCOPES, generate_key, hash_key
from tenantq.tenants.models import ApiKey, Plan, Tenant

DEFAULT_PLANS: list[dict] = [
    dict(name="free", display_name="Free", submit_rate=5, submit_burst=20, exec_rate=5, concurrency=2,
         max_queued=1000, weight=1, priority_min=0, priority_max=5, max_time_limit_s=60, max_retries=3,
         included_jobs=1000, included_compute_seconds=600, hard_limits=True, base_fee="0",
         min_schedule_interval_s=300, max_schedules=5),
    dict(name="pro", display_name="Pro", submit_rate=50, submit_burst=200, exec_rate=50, concurrency=10,
         max_queued=50_000, weight=3, priority_min=0, priority_max=9, max_time_limit_s=900, max_retries=10,
         included_jobs=100_000, included_compute_seconds=36_000, hard_limits=False, base_fee="49.00",
         min_schedule_interval_s=60, max_schedules=100),
    dict(name="enterprise", display_name="Enterprise", submit_rate=500, submit_burst=2000, exec_rate=500,
         concurrency=100, max_queued=1_000_000, weight=5, priority_min=0, priority_max=9,
         max_time_limit_s=3600, max_retries=25, included_jobs=10_000_000, included_compute_seconds=1_000_000,
         hard_limits=False, base_fee="999.00",
         min_schedule_interval_s=1, max_schedules=10_000),
]


def get_tenant_by_ref(session: Session, ref: str) -> Tenant:
    tenant = session.scalars(select(Tenant).where(or_(Tenant.id == ref, Tenant.name == ref))).first()
    if tenant is None:
        raise NotFound(f"No tenant with id or name {ref!r}.")
    return tenant


def create_tenant(session: Session, *, name: str, plan: str = "free") -> Tenant:
    name = name.strip()
    if not name or len(name) > 128:
        raise InvalidInput("Tenant name must be 1-128 characters.")
    if session.get(Plan, plan) is None:
        raise InvalidInput(f"Unknown plan {plan!r}.", details={"plan": plan})
    if session.scalars(select(Tenant).where(Tenant.name == name)).first() is not None:
        raise Conflict(f"A tenant named {name!r} already exists.")
    tenant = Tenant(name=name, plan_name=plan)
    session.add(tenant)
    session.flush()
    return tenant


def create_api_key(
    session: Session,
    *,
    tenant: Tenant,
    scopes: list[str] | None = None,
    name: str = "",
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the full secret key (shown once, never stored)."""
    scopes = list(scopes) if scopes else list(ALL_SCOPES)
    unknown = sorted(set(scopes) - set(ALL_SCOPES))
    if unknown:
        raise InvalidInput(f"Unknown scopes: {', '.join(unknown)}.", details={"allowed": list(ALL_SCOPES)})
    settings = get_settings()
    full, kid, prefix = generate_key(settings.env)
    row = ApiKey(
        id=kid,
        tenant_id=tenant.id,
        prefix=prefix,
        secret_hash=hash_key(full, settings.secret_key),
        name=name,
        scopes=scopes,
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return row, full


def seed_plans(session: Session) -> None:
    from decimal import Decimal

    for spec in DEFAULT_PLANS:
        if session.get(Plan, spec["name"]) is None:
            data = dict(spec)
            data["base_fee"] = Decimal(data["base_fee"])
            session.add(Plan(**data))
    session.flush()
