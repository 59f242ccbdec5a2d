"""Suspending and reactivating a tenant: its status in SQL and its queue pause in Redis.

Suspension puts the tenant id into SET ``tq:paused`` with the reason ``"suspended"`` in HASH
``tq:paused:why`` (the dispatcher skips paused tenants, their jobs stay queued); reactivation removes
it only if the reason is still ``"suspended"``, so an operator's queue pause (reason
``"operator_pause"``) survives a suspend/reactivate cycle. Like the rest of
:mod:`tenantq.tenants.accounts.service`, the functions take the session and flush; the caller commits.
Apart from the service so that the commands that never touch Redis do not load its client.
"""

from __future__ import annotations

import redis
from sqlalchemy.orm import Session

from tenantq.core.errors import ServiceUnavailable
from tenantq.tenants.accounts.models import Tenant
from tenantq.tenants.accounts.service import (
    OPERATOR_PAUSE_REASON,
    PAUSED_SET,
    PAUSED_WHY,
    SUSPENDED_REASON,
)

# Atomic so that an operator pause set concurrently is never removed by a reactivation.
_UNPAUSE_IF_SUSPENDED = """
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
  redis.call('SREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 1
end
return 0
"""
_PAUSE_UNLESS_OPERATOR = """
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[3] then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
return 1
"""


def suspend_tenant(session: Session, tenant: Tenant, client: redis.Redis) -> Tenant:
    """Refuse new submissions (admission answers 403 ``tenant_suspended``) and pause the tenant's queue:
    queued jobs stay queued, nothing is dropped. Idempotent: suspending again re-asserts the pause.
    Redis is written before the commit so a Redis failure leaves the tenant active (503), never
    suspended-but-running."""
    tenant.status = "suspended"
    session.flush()
    try:
        client.eval(
            _PAUSE_UNLESS_OPERATOR,
            2,
            PAUSED_SET,
            PAUSED_WHY,
            tenant.id,
            SUSPENDED_REASON,
            OPERATOR_PAUSE_REASON,
        )
    except redis.RedisError as exc:
        session.rollback()
        raise ServiceUnavailable(
            "Redis is unavailable; the tenant was not suspended.",
            code="queue_unavailable",
            headers={"Retry-After": "1"},
        ) from exc
    return tenant


def reactivate_tenant(session: Session, tenant: Tenant, client: redis.Redis) -> Tenant:
    """Accept submissions again and resume the queue (unless the operator paused it separately)."""
    tenant.status = "active"
    session.flush()
    try:
        client.eval(_UNPAUSE_IF_SUSPENDED, 2, PAUSED_SET, PAUSED_WHY, tenant.id, SUSPENDED_REASON)
    except redis.RedisError as exc:
        session.rollback()
        raise ServiceUnavailable(
            "Redis is unavailable; the tenant was not reactivated.",
            code="queue_unavailable",
            headers={"Retry-After": "1"},
        ) from exc
    return tenant
