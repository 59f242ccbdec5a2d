"""Tenant and plan operations shared by the operator API, the CLI, the other areas and tests.

Functions take the session explicitly and flush; the caller commits. Suspension, the one operation
that also touches the queue in Redis, is in :mod:`tenantq.tenants.accounts.suspension`: this module
imports no Redis client, so the CLI's tenant and key commands do not load one.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

from pydantic import ValidationError
from sqlalchemy import event
from sqlalchemy.orm import Session

from tenantq.core import audit, keys
from tenantq.core.db import utcnow
from tenantq.core.errors import Conflict, InvalidInput, NotFound
from tenantq.tenants.accounts.models import Plan, Tenant, TenantPlanChange
from tenantq.tenants.accounts.repository import AccountRepository
from tenantq.tenants.accounts.schemas import LIMIT_FIELDS, LimitOverrides, PlanCreate, PlanUpdate

log = logging.getLogger("tenantq.tenants")

# The queue pause a suspension sets (see tenantq.tenants.accounts.suspension).
PAUSED_SET = keys.PAUSED
PAUSED_WHY = keys.PAUSED_WHY
SUSPENDED_REASON = "suspended"
OPERATOR_PAUSE_REASON = "operator_pause"

DEFAULT_PLANS: list[dict] = [
    {
        "name": "free",
        "display_name": "Free",
        "submit_rate": 5,
        "submit_burst": 20,
        "exec_rate": 5,
        "concurrency": 2,
        "max_queued": 1000,
        "weight": 1,
        "priority_min": 0,
        "priority_max": 5,
        "max_time_limit_s": 60,
        "max_retries": 3,
        "included_jobs": 1000,
        "included_compute_seconds": 600,
        "hard_limits": True,
        "base_fee": "0",
        "min_schedule_interval_s": 300,
        "max_schedules": 5,
    },
    {
        "name": "pro",
        "display_name": "Pro",
        "submit_rate": 50,
        "submit_burst": 200,
        "exec_rate": 50,
        "concurrency": 10,
        "max_queued": 50_000,
        "weight": 3,
        "priority_min": 0,
        "priority_max": 9,
        "max_time_limit_s": 900,
        "max_retries": 10,
        "included_jobs": 100_000,
        "included_compute_seconds": 36_000,
        "hard_limits": False,
        "base_fee": "49.00",
        "min_schedule_interval_s": 60,
        "max_schedules": 100,
    },
    {
        "name": "enterprise",
        "display_name": "Enterprise",
        "submit_rate": 500,
        "submit_burst": 2000,
        "exec_rate": 500,
        "concurrency": 100,
        "max_queued": 1_000_000,
        "weight": 5,
        "priority_min": 0,
        "priority_max": 9,
        "max_time_limit_s": 3600,
        "max_retries": 25,
        "included_jobs": 10_000_000,
        "included_compute_seconds": 1_000_000,
        "hard_limits": False,
        "base_fee": "999.00",
        "min_schedule_interval_s": 1,
        "max_schedules": 10_000,
    },
]


def get_tenant_by_ref(session: Session, ref: str) -> Tenant:
    tenant = AccountRepository(session).tenant_by_ref(ref)
    if tenant is None:
        raise NotFound(f"No tenant with id or name {ref!r}.")
    return tenant


def _check_name(name: str, what: str = "Tenant name") -> str:
    name = name.strip()
    if not name or len(name) > 128:
        raise InvalidInput(f"{what} must be 1-128 characters.")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidInput(f"{what} must not contain control characters.")
    return name


def _get_plan(session: Session, name: str) -> Plan:
    plan = AccountRepository(session).plan(name)
    if plan is None:
        raise InvalidInput(f"Unknown plan {name!r}.", code="unknown_plan", details={"plan": name})
    return plan


def create_tenant(
    session: Session, *, name: str, plan: str = "free", overrides: dict[str, Any] | None = None
) -> Tenant:
    name = _check_name(name)
    plan_row = _get_plan(session, plan)
    clean = validate_overrides(plan_row, overrides or {})
    accounts = AccountRepository(session)
    if accounts.name_taken(name):
        raise Conflict(f"A tenant named {name!r} already exists.", code="tenant_exists")
    tenant = Tenant(name=name, plan_name=plan, overrides=clean)
    accounts.add(tenant)
    return tenant


def get_tenant(session: Session, tenant_id: str) -> Tenant:
    tenant = AccountRepository(session).tenant(tenant_id)
    if tenant is None:
        raise NotFound("Tenant not found.", details={"id": tenant_id})
    return tenant


def list_tenants(session: Session, *, status: str | None = None) -> list[Tenant]:
    return AccountRepository(session).tenants(status=status)


_UNSET: Any = object()


BILLING_EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")


def clean_billing_email(value: str | None) -> str | None:
    """A plausible address (one @, a dot in the domain, no spaces, at most 254 characters), or None for
    an empty value (no billing email). 422 ``invalid_billing_email`` otherwise."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if len(value) > 254 or not BILLING_EMAIL_RE.match(value):
        raise InvalidInput(
            "billing_email is not an email address.", code="invalid_billing_email", details={"value": value}
        )
    return value


def _tenant_snapshot(tenant: Tenant) -> dict[str, Any]:
    return {
        "name": tenant.name,
        "plan": tenant.plan_name,
        "overrides": dict(tenant.overrides or {}),
        "billing_email": tenant.billing_email,
    }


def update_tenant(
    session: Session,
    tenant: Tenant,
    *,
    name: str | None = None,
    plan: str | None = None,
    overrides: dict[str, Any] | None = _UNSET,
    billing_email: str | None = _UNSET,
    actor: str = "system",
) -> Tenant:
    """Change name, plan, overrides and/or billing email (``overrides`` replaces the whole dict; ``{}``
    clears it; ``billing_email`` None or "" clears it). The overrides are re-validated against the
    (new) plan so the merged limits are always coherent. Plan, override and billing email changes are
    audited (``core.audit``) with ``actor``."""
    before = _tenant_snapshot(tenant)
    if name is not None and name.strip() != tenant.name:
        name = _check_name(name)
        if AccountRepository(session).name_taken(name, except_id=tenant.id):
            raise Conflict(f"A tenant named {name!r} already exists.", code="tenant_exists")
        tenant.name = name
    plan_row = _get_plan(session, plan if plan is not None else tenant.plan_name)
    new_overrides = (tenant.overrides or {}) if overrides is _UNSET else (overrides or {})
    tenant.overrides = validate_overrides(plan_row, new_overrides)
    if plan_row.name != tenant.plan_name:
        # Billing rates each part of the month under the plan in force then (see docs/billing.md).
        session.add(
            TenantPlanChange(
                tenant_id=tenant.id,
                from_plan=tenant.plan_name,
                to_plan=plan_row.name,
                effective_from=utcnow(),
                actor=actor,
            )
        )
    tenant.plan_name = plan_row.name
    if billing_email is not _UNSET:
        tenant.billing_email = clean_billing_email(billing_email)
    session.flush()
    after = _tenant_snapshot(tenant)
    audited = ("plan", "overrides", "billing_email")
    if any(before[k] != after[k] for k in audited):
        audit.record(
            session,
            actor=actor,
            action="tenant.update",
            entity_type="tenant",
            entity_id=tenant.id,
            tenant_id=tenant.id,
            before={k: before[k] for k in audited if before[k] != after[k]},
            after={k: after[k] for k in audited if before[k] != after[k]},
        )
        session.flush()
    return tenant


# ------------------------------------------------------------------------------- limits + overrides
@dataclass(frozen=True)
class EffectiveLimits:
    """A tenant's plan limits with its overrides applied. Dispatcher, quotas and admission read this,
    never ``Plan`` directly, so an override is honoured everywhere."""

    plan: str
    submit_rate: float
    submit_burst: int
    exec_rate: float
    concurrency: int
    max_queued: int
    weight: int
    priority_min: int
    priority_max: int
    max_time_limit_s: int
    max_retries: int
    included_jobs: int
    included_compute_seconds: int
    hard_limits: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _plan_limits(plan: Plan) -> dict[str, Any]:
    return {f: getattr(plan, f) for f in LIMIT_FIELDS}


def _validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]


def validate_overrides(plan: Plan, overrides: dict[str, Any]) -> dict[str, Any]:
    """Only known limit fields, each within bounds, and coherent once merged with ``plan``.
    Returns the cleaned dict to store (``None`` values dropped: they mean "use the plan")."""
    if not isinstance(overrides, dict):
        raise InvalidInput("Overrides must be an object.", code="invalid_overrides")
    try:
        parsed = LimitOverrides.model_validate(overrides)
    except ValidationError as exc:
        raise InvalidInput(
            "Invalid tenant overrides.",
            code="invalid_overrides",
            details={"errors": _validation_details(exc), "allowed": list(LIMIT_FIELDS)},
        ) from None
    clean = parsed.model_dump(exclude_none=True)
    merged = {**_plan_limits(plan), **clean}
    if merged["priority_min"] > merged["priority_max"]:
        raise InvalidInput(
            "priority_min must not exceed priority_max (after applying the plan).",
            code="invalid_overrides",
            details={"priority_min": merged["priority_min"], "priority_max": merged["priority_max"]},
        )
    return clean


# A request reads its tenant's limits several times (job policy, queue bound, submission rate, quota,
# release): each read cost a plan SELECT (the session holds loaded rows weakly, so the plan was gone
# again) and a validation of every override, about a fifth of a submission's time. They are kept in
# the session until it flushes, commits or rolls back, after which any of them may have changed.
_MEMO = "tenantq.effective_limits"


@event.listens_for(Session, "after_flush")
@event.listens_for(Session, "after_commit")
@event.listens_for(Session, "after_soft_rollback")
def _forget_limits(session: Session, *_args: Any) -> None:
    session.info.pop(_MEMO, None)


def effective_limits(session: Session, tenant: Tenant) -> EffectiveLimits:
    """Plan + overrides. Overrides were validated when written; an unknown or out-of-bounds value
    found here anyway (a hand-edited row) is ignored and logged, so one bad row cannot break the
    dispatcher for everyone."""
    memo: dict[tuple[str, str, str], EffectiveLimits] = session.info.setdefault(_MEMO, {})
    key = (tenant.id, tenant.plan_name, json.dumps(tenant.overrides or {}, sort_keys=True, default=str))
    known = memo.get(key)
    if known is None:
        known = memo[key] = _effective_limits(session, tenant)
    return known


def _effective_limits(session: Session, tenant: Tenant) -> EffectiveLimits:
    plan = AccountRepository(session).plan(tenant.plan_name)
    if plan is None:
        raise NotFound(f"Plan {tenant.plan_name!r} of tenant {tenant.id} does not exist.")
    merged = _plan_limits(plan)
    known: dict[str, Any] = {}
    for field_name, value in (tenant.overrides or {}).items():
        if field_name not in LIMIT_FIELDS or value is None:
            log.warning("ignoring unknown override %r of tenant %s", field_name, tenant.id)
        else:
            known[field_name] = value
    try:
        LimitOverrides.model_validate(known)  # all at once: the usual case, valid as written
        merged.update(known)
    except ValidationError:
        for field_name, value in known.items():  # one by one, to keep the valid ones
            try:
                LimitOverrides.model_validate({field_name: value})
            except ValidationError:
                log.warning("ignoring invalid override %s=%r of tenant %s", field_name, value, tenant.id)
                continue
            merged[field_name] = value
    if merged["priority_min"] > merged["priority_max"]:
        merged["priority_min"], merged["priority_max"] = plan.priority_min, plan.priority_max
    return EffectiveLimits(plan=plan.name, **merged)


# ---------------------------------------------------------------------------------------- plans
def list_plans(session: Session) -> list[Plan]:
    return AccountRepository(session).plans()


def get_plan(session: Session, name: str) -> Plan:
    plan = AccountRepository(session).plan(name)
    if plan is None:
        raise NotFound("Plan not found.", details={"name": name})
    return plan


def _check_plan_coherent(values: dict[str, Any]) -> None:
    if values["priority_min"] > values["priority_max"]:
        raise InvalidInput(
            "priority_min must not exceed priority_max.",
            code="invalid_plan",
            details={"priority_min": values["priority_min"], "priority_max": values["priority_max"]},
        )


def create_plan(session: Session, data: PlanCreate) -> Plan:
    accounts = AccountRepository(session)
    if accounts.plan(data.name) is not None:
        raise Conflict(f"A plan named {data.name!r} already exists.", code="plan_exists")
    given = data.model_dump(exclude_none=True)
    plan = Plan(**given)
    # Column defaults only apply at INSERT; resolve them now so the coherence check sees real values.
    for column in Plan.__table__.columns:
        if (
            getattr(plan, column.name) is None
            and column.default is not None
            and not callable(column.default.arg)
        ):
            setattr(plan, column.name, column.default.arg)
    plan.display_name = plan.display_name or data.name
    _check_plan_coherent({f: getattr(plan, f) for f in LIMIT_FIELDS})
    accounts.add(plan)
    return plan


def update_plan(session: Session, plan: Plan, data: PlanUpdate, *, actor: str = "system") -> Plan:
    """Apply the given fields. Refused (409) if a tenant on this plan has overrides that would no
    longer be coherent, so no tenant silently ends up with limits nobody chose. Audited."""
    changes = data.model_dump(exclude_unset=True, exclude_none=True)
    before = {k: getattr(plan, k) for k in changes}
    merged = {**_plan_limits(plan), **{k: v for k, v in changes.items() if k in LIMIT_FIELDS}}
    _check_plan_coherent(merged)
    conflicts = []
    for tenant in AccountRepository(session).tenants_on_plan(plan.name):
        values = {**merged, **{k: v for k, v in (tenant.overrides or {}).items() if k in LIMIT_FIELDS}}
        if values["priority_min"] > values["priority_max"]:
            conflicts.append(tenant.id)
    if conflicts:
        raise Conflict(
            "The change conflicts with tenant overrides on this plan.",
            code="override_conflict",
            details={"tenants": conflicts[:50]},
        )
    for field_name, value in changes.items():
        setattr(plan, field_name, value)
    session.flush()
    if any(before[k] != getattr(plan, k) for k in changes):
        audit.record(
            session,
            actor=actor,
            action="plan.update",
            entity_type="plan",
            entity_id=plan.name,
            before=before,
            after={k: getattr(plan, k) for k in changes},
        )
        session.flush()
    return plan


def seed_plans(session: Session) -> None:
    accounts = AccountRepository(session)
    for spec in DEFAULT_PLANS:
        if accounts.plan(spec["name"]) is None:
            data = dict(spec)
            data["base_fee"] = Decimal(data["base_fee"])
            accounts.add(Plan(**data))
