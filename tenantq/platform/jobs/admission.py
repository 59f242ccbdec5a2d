"""Admission checks run before a job is accepted (submit, batch submit, workflow start, schedule firing).

A check raises a TenantqError (403 suspended, 429 rate or queue full, 402 over quota) or returns None.
Order matters: cheap, local checks first, and the quota last, because it counts the jobs it admits.

The quota belongs to billing, a layer above the platform, so the platform cannot import it: it is a
slot that every entry point fills through ``tenantq.assembly.assemble()`` (the API, the worker and beat,
the CLI, the tests). ``admit`` refuses to run while the slot is empty, so no process can accept jobs
that nobody counts. The same slot takes the quota's *release*: jobs counted at admission that will
never run (cancelled before they started, refused after admission, the steps a stopped workflow never
created) are given back at once, after the commit that dropped them (``release_after_commit``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from tenantq.core.errors import Forbidden, TooManyRequests
from tenantq.core.redis import get_redis
from tenantq.platform.dispatch.limits import limits_for
from tenantq.platform.dispatch.repository import TenantQueues
from tenantq.tenants.access.limits import submission_rate_limit
from tenantq.tenants.accounts.models import Tenant

AdmissionCheck = Callable[[Session, Tenant, int], None]
# (tenant id, jobs, when they were counted): give back jobs the quota counted that will never run.
QuotaRelease = Callable[[str, int, datetime], None]


def tenant_is_active(session: Session, tenant: Tenant, count: int) -> None:
    if tenant.status != "active":
        raise Forbidden(
            f"Tenant is {tenant.status}: new jobs are not accepted.",
            code="tenant_suspended",
            details={"status": tenant.status},
        )


def queue_not_full(session: Session, tenant: Tenant, count: int) -> None:
    """The plan bounds how many jobs may wait in the tenant's queue."""
    limit = limits_for(session, tenant).max_queued
    if limit <= 0:
        return
    depth = TenantQueues(get_redis()).depth(tenant.id)
    if depth + count > limit:
        raise TooManyRequests(
            f"The queue holds {depth} of at most {limit} waiting jobs; {count} more do not fit.",
            code="queue_full",
            details={"depth": depth, "limit": limit, "requested": count},
            headers={"Retry-After": "1"},
        )


ADMISSION_CHECKS: list[AdmissionCheck] = [
    tenant_is_active,
    queue_not_full,  # before the rate limit, so a refused batch spends no tokens
    submission_rate_limit,  # cluster-wide token bucket in Redis (429 + Retry-After/RateLimit-*)
]

# Runs after ADMISSION_CHECKS: billing.usage.quotas.check_quota (Redis, atomic check-and-increment).
_quota_check: AdmissionCheck | None = None
_quota_release: QuotaRelease | None = None


def install_quota_check(check: AdmissionCheck, release: QuotaRelease | None = None) -> None:
    """Fill the quota slot; every entry point that accepts jobs calls this at assembly."""
    global _quota_check, _quota_release
    _quota_check = check
    _quota_release = release


def admit(session: Session, tenant: Tenant, count: int = 1, *, quota_jobs: int | None = None) -> None:
    """Raise if ``count`` new jobs for ``tenant`` may not be accepted now. ``quota_jobs`` is how many
    of them the jobs quota counts (default: all); a re-run of a job that already ran counts none,
    but is still refused once the compute quota is used up."""
    if _quota_check is None:
        raise RuntimeError("no quota check installed: the entry point must call install_quota_check()")
    for check in ADMISSION_CHECKS:
        check(session, tenant, count)
    _quota_check(session, tenant, count if quota_jobs is None else quota_jobs)


def release_quota(tenant_id: str, count: int, counted_at: datetime) -> None:
    """Give back ``count`` jobs counted against the quota of ``counted_at``'s period, now."""
    if count > 0 and _quota_release is not None:
        _quota_release(tenant_id, count, counted_at)


_PENDING = "tenantq.quota_releases"


def _run_pending(session: Session) -> None:
    for args in session.info.pop(_PENDING, []):
        release_quota(*args)


def _drop_pending(session: Session, _previous: Any = None) -> None:
    session.info.pop(_PENDING, None)


def release_after_commit(session: Session, tenant_id: str, count: int, counted_at: datetime) -> None:
    """Give back ``count`` jobs once the session's transaction commits (nothing if it rolls back), so
    the counter never runs ahead of SQL, which the periodic sync copies."""
    if count <= 0:
        return
    if _PENDING not in session.info:
        session.info[_PENDING] = []
        if not event.contains(session, "after_commit", _run_pending):
            event.listen(session, "after_commit", _run_pending)
            event.listen(session, "after_soft_rollback", _drop_pending)
    session.info[_PENDING].append((tenant_id, count, counted_at))
