"""Admission checks run before a job is accepted (submit, batch submit, workflow start, schedule firing).

A check raises a TenantqError (403 suspended, 429 rate or queue full, 402 over quota) or returns None.
Order matters: cheap, local checks first, and the quota last, because it counts the jobs it admits.

The quota belongs to billing, a layer above the platform, so the platform cannot import it: it is a
slot that every entry point fills through ``tenantq.assembly.assemble()`` (the API, the worker and beat,
the CLI, the tests). ``admit`` refuses to run while the slot is empty, so no process can accept jobs
that nobody counts.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

from tenantq.core.errors import Forbidden, TooManyRequests
from tenantq.core.redis import get_redis
from tenantq.platform.dispatch.limits import limits_for
from tenantq.platform.dispatch.repository import TenantQueues
from tenantq.tenants.access.limits import submission_rate_limit
from tenantq.tenants.accounts.models import Tenant

AdmissionCheck = Callable[[Session, Tenant, int], None]


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


def install_quota_check(check: AdmissionCheck) -> None:
    """Fill the quota slot; every entry point that accepts jobs calls this at assembly."""
    global _quota_check
    _quota_check = check


def admit(session: Session, tenant: Tenant, count: int = 1) -> None:
    """Raise if ``count`` new jobs for ``tenant`` may not be accepted now."""
    if _quota_check is None:
        raise RuntimeError("no quota check installed: the entry point must call install_quota_check()")
    for check in ADMISSION_CHECKS:
        check(session, tenant, count)
    _quota_check(session, tenant, count)
