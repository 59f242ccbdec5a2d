"""Schedules: validation, plan limits, next-run computation, and firing (used by beat).

Firing a schedule creates a normal job through ``submit_job``, so admission checks (suspension, rate
limits, quotas), validation and billing apply exactly as for an API submission. A refused firing is
not retried: the schedule records why (``last_error``) and moves on to its next due time.

Exactly-once per due time, even with several beats: a beat first *claims* a due time with a
conditional UPDATE (``WHERE id = :id AND revision = :seen``) that moves ``next_run_at`` forward; only
the beat whose UPDATE matched a row submits the job. The job also carries the idempotency key
``schedule:{id}:{due_ms}``, so even a replayed firing cannot create a second job for one due time.
Missed due times (beat down) are coalesced into one firing, then the schedule resumes its rhythm.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.orm import Session

from tenantq.core.db import utcnow
from tenantq.core.errors import InvalidInput, NotFound, TenantqError, TooManyRequests
from tenantq.platform.jobs.schemas import JobCreate
from tenantq.platform.jobs.service import submit_job, validate_submission
from tenantq.platform.schedules.models import Schedule
from tenantq.platform.schedules.repository import ScheduleRepository
from tenantq.platform.schedules.schemas import ScheduleCreate, ScheduleUpdate
from tenantq.tenants.accounts.models import Plan, Tenant

log = logging.getLogger("tenantq.schedules")

CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
# How many upcoming firings of a cron expression are inspected to find its shortest period.
CRON_SAMPLE = 60
DEFAULT_LIMITS = {"min_schedule_interval_s": 300, "max_schedules": 5}


# --- timing ------------------------------------------------------------------------------------------


def parse_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidInput(
            f"Unknown time zone {name!r}; use an IANA name such as 'Europe/Paris' or 'UTC'.",
            code="invalid_timezone",
            details={"timezone": name},
        ) from None


def check_cron(expr: str) -> str:
    expr = " ".join(expr.split())
    fields = expr.split(" ")
    valid = (expr.lower() in CRON_MACROS) if expr.startswith("@") else len(fields) == 5
    if valid:
        valid = croniter.is_valid(expr)
    if not valid:
        raise InvalidInput(
            f"Invalid cron expression {expr!r}: expected 5 fields 'minute hour day-of-month month "
            "day-of-week' (e.g. '0 8 * * 1') or one of " + ", ".join(CRON_MACROS) + ".",
            code="invalid_cron",
            details={"cron": expr},
        )
    return expr


def next_cron(expr: str, tz: ZoneInfo, after: datetime) -> datetime:
    """The first firing strictly after ``after``, in UTC. Wall-clock times are read in ``tz``."""
    return croniter(expr, after.astimezone(tz)).get_next(datetime).astimezone(UTC)


def cron_min_period(expr: str, tz: ZoneInfo, start: datetime) -> float:
    it = croniter(expr, start.astimezone(tz))
    prev = it.get_next(datetime)
    shortest = math.inf
    for _ in range(CRON_SAMPLE):
        nxt = it.get_next(datetime)
        shortest = min(shortest, (nxt - prev).total_seconds())
        prev = nxt
    return shortest


def next_after(schedule: Schedule, due: datetime | None, now: datetime) -> datetime:
    """The next due time strictly after ``now``. Interval schedules keep their phase from ``due``."""
    if schedule.interval_seconds:
        step = schedule.interval_seconds
        if due is None:
            return now + timedelta(seconds=step)
        missed = max(1, math.floor((now - due).total_seconds() / step) + 1)
        return due + timedelta(seconds=step * missed)
    assert schedule.cron is not None
    return next_cron(schedule.cron, parse_timezone(schedule.timezone), now)


# --- plan limits ---------------------------------------------------------------------------------------


def plan_limit(session: Session, tenant: Tenant, name: str) -> int:
    """A tenant override (``tenant.overrides[name]``) wins over the plan's value."""
    override = (tenant.overrides or {}).get(name)
    if isinstance(override, int) and not isinstance(override, bool):
        return override
    plan = session.get(Plan, tenant.plan_name)
    value = getattr(plan, name, None) if plan is not None else None
    return int(value) if value is not None else DEFAULT_LIMITS[name]


def _check_timing(
    session: Session, tenant: Tenant, cron: str | None, timezone: str, interval: int | None
) -> tuple[str | None, str]:
    if (cron is None) == (interval is None):
        raise InvalidInput(
            "Give exactly one of 'cron' or 'interval_seconds'.", code="invalid_schedule_timing"
        )
    tz = parse_timezone(timezone)
    minimum = plan_limit(session, tenant, "min_schedule_interval_s")
    if cron is not None:
        cron = check_cron(cron)
        period = cron_min_period(cron, tz, utcnow())
    else:
        assert interval is not None  # exactly one of the two is given (checked above)
        period = float(interval)
    if period < minimum:
        raise InvalidInput(
            f"This schedule would fire every {period:g}s; the plan's minimum interval is {minimum}s.",
            code="schedule_interval_too_short",
            details={
                "limit": "min_schedule_interval_s",
                "minimum_seconds": minimum,
                "interval_seconds": period,
            },
        )
    return cron, tz.key


def _validate_job_template(
    session: Session, tenant: Tenant, task: str, args: dict[str, Any], priority: int, max_retries: int | None
) -> None:
    # Same checks as a job submission (registry, argument schema, plan priority range and max retries).
    validate_submission(
        session, tenant, JobCreate(task=task, args=args, priority=priority, max_retries=max_retries)
    )


# --- CRUD ----------------------------------------------------------------------------------------------


def create_schedule(session: Session, tenant: Tenant, data: ScheduleCreate) -> Schedule:
    repo = ScheduleRepository(session, tenant.id)
    _validate_job_template(session, tenant, data.task, data.args, data.priority, data.max_retries)
    cron, tz = _check_timing(session, tenant, data.cron, data.timezone, data.interval_seconds)
    limit = plan_limit(session, tenant, "max_schedules")
    # Serialise concurrent creates of one tenant with a row lock on PostgreSQL, so two requests cannot
    # both see room for the last schedule. (SQLite has no FOR UPDATE: there a race may overshoot by one.)
    session.execute(select(Tenant.id).where(Tenant.id == tenant.id).with_for_update())
    used = repo.count()
    if used >= limit:
        raise TooManyRequests(
            f"The plan allows {limit} schedules and this tenant has {used}; delete one or upgrade the plan.",
            code="schedule_limit_reached",
            details={"limit": "max_schedules", "max": limit, "used": used},
        )
    now = utcnow()
    schedule = Schedule(
        name=data.name,
        task=data.task,
        args=data.args,
        priority=data.priority,
        max_retries=data.max_retries,
        cron=cron,
        timezone=tz,
        interval_seconds=data.interval_seconds,
        enabled=data.enabled,
        created_at=now,
        updated_at=now,
        runs=0,
        revision=0,
    )
    schedule.next_run_at = next_after(schedule, None, now) if data.enabled else None
    repo.add(schedule)
    session.flush()
    return schedule


def update_schedule(session: Session, tenant: Tenant, schedule_id: str, data: ScheduleUpdate) -> Schedule:
    schedule = ScheduleRepository(session, tenant.id).get(schedule_id)
    given = data.model_fields_set
    if "enabled" in given and data.enabled is None:
        raise InvalidInput("'enabled' may not be null.", code="invalid_input")
    task = data.task if data.task is not None else schedule.task
    args = data.args if data.args is not None else schedule.args
    priority = data.priority if data.priority is not None else schedule.priority
    max_retries = data.max_retries if "max_retries" in given else schedule.max_retries
    if given & {"task", "args", "priority", "max_retries"}:
        _validate_job_template(session, tenant, task, args, priority, max_retries)
    cron, interval = schedule.cron, schedule.interval_seconds
    if data.cron is not None:
        cron, interval = data.cron, None
    if data.interval_seconds is not None:
        cron, interval = None, data.interval_seconds
    if data.cron is not None and data.interval_seconds is not None:
        raise InvalidInput(
            "Give exactly one of 'cron' or 'interval_seconds'.", code="invalid_schedule_timing"
        )
    timezone = data.timezone if data.timezone is not None else schedule.timezone
    timing_changed = bool(given & {"cron", "interval_seconds", "timezone"})
    if timing_changed:
        cron, timezone = _check_timing(session, tenant, cron, timezone, interval)
    enabled = data.enabled if data.enabled is not None else schedule.enabled
    re_enabled = enabled and not schedule.enabled

    schedule.task, schedule.args, schedule.priority, schedule.max_retries = task, args, priority, max_retries
    if data.name is not None:
        schedule.name = data.name
    schedule.cron, schedule.interval_seconds, schedule.timezone = cron, interval, timezone
    schedule.enabled = enabled
    now = utcnow()
    if not enabled:
        schedule.next_run_at = None
    elif timing_changed or re_enabled or schedule.next_run_at is None:
        schedule.next_run_at = next_after(schedule, None, now)
    schedule.updated_at = now
    # A SQL expression, not a Python increment: a beat claiming concurrently must see its claim fail.
    schedule.revision = Schedule.revision + 1
    session.flush()
    session.refresh(schedule)
    return schedule


def delete_schedule(session: Session, tenant: Tenant, schedule_id: str) -> None:
    schedule = ScheduleRepository(session, tenant.id).get(schedule_id)
    session.delete(schedule)
    session.flush()


# --- firing (beat) -------------------------------------------------------------------------------------


@dataclass
class Firing:
    schedule_id: str
    tenant_id: str
    due: datetime
    job_id: str | None
    error: str | None


def idempotency_key(schedule_id: str, due: datetime) -> str:
    return f"schedule:{schedule_id}:{int(due.timestamp() * 1000)}"


def due_schedules(session: Session, now: datetime, limit: int = 500) -> list[Schedule]:
    return list(
        session.scalars(
            select(Schedule)
            .where(Schedule.enabled.is_(True), Schedule.next_run_at.is_not(None), Schedule.next_run_at <= now)
            .order_by(Schedule.next_run_at)
            .limit(limit)
        )
    )


def next_due_at(session: Session) -> datetime | None:
    return session.scalar(select(func.min(Schedule.next_run_at)).where(Schedule.enabled.is_(True)))


def claim(session: Session, schedule: Schedule, now: datetime) -> datetime | None:
    """Claim the schedule's current due time for this process. Returns the due time, or None if another
    beat (or an edit) got there first."""
    due = schedule.next_run_at
    if due is None:
        return None
    following = next_after(schedule, due, now)
    # An UPDATE's result is a CursorResult (with rowcount); Session.execute is typed as returning Result.
    result = cast(
        CursorResult[Any],
        session.execute(
            update(Schedule)
            .where(
                Schedule.id == schedule.id, Schedule.revision == schedule.revision, Schedule.enabled.is_(True)
            )
            .values(
                next_run_at=following, last_run_at=now, revision=Schedule.revision + 1, runs=Schedule.runs + 1
            )
            .execution_options(synchronize_session=False)
        ),
    )
    session.commit()
    return due if result.rowcount == 1 else None


def fire(session: Session, schedule: Schedule, now: datetime | None = None) -> Firing | None:
    """Claim and fire one due schedule. None if the claim was lost (someone else fires it)."""
    now = now or utcnow()
    # Copy what is needed before the claim commits and expires the ORM object.
    sid, tenant_id = schedule.id, schedule.tenant_id
    template = JobCreate(
        task=schedule.task, args=schedule.args, priority=schedule.priority, max_retries=schedule.max_retries
    )
    due = claim(session, schedule, now)
    if due is None:
        return None
    job_id: str | None = None
    error: str | None = None
    tenant = session.get(Tenant, tenant_id)
    try:
        if tenant is None:
            raise NotFound("tenant is gone")
        template.idempotency_key = idempotency_key(sid, due)
        job_id = submit_job(session, tenant, template).job.id
    except TenantqError as exc:
        session.rollback()
        error = f"{exc.code}: {exc.message}"
    except Exception as exc:  # a broken firing must not stop beat; it is recorded
        session.rollback()
        log.exception("schedule %s: firing for %s failed", sid, due.isoformat())
        error = f"error: {type(exc).__name__}: {exc}"
    session.execute(
        update(Schedule)
        .where(Schedule.id == sid)
        .values(last_job_id=job_id, last_error=error)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return Firing(schedule_id=sid, tenant_id=tenant_id, due=due, job_id=job_id, error=error)


def fire_due(session: Session, now: datetime | None = None, limit: int = 500) -> list[Firing]:
    now = now or utcnow()
    firings = []
    for schedule in due_schedules(session, now, limit):
        firing = fire(session, schedule, now)
        if firing is not None:
            firings.append(firing)
    return firings
