"""Every Redis key (and key prefix) tenantq uses, in one module.

The strings are stored data: a running system holds values under them, so changing one needs a data
migration. Keys are not hash-tagged: tenantq targets a single Redis (or Sentinel), not Redis Cluster.
Lua scripts take the names through ``lua()``. ``tests/core/test_keys.py`` fails when a ``tq:`` string
appears in any other module.
"""

from __future__ import annotations

from string import Template

# -- per-tenant queues and the dispatcher (platform.dispatch) ---------------------------------------------

QUEUE_PREFIX = "tq:q:"  # ZSET per tenant: pending job ids, scored by priority (9 first), then arrival
PAYLOAD = "tq:payload"  # HASH job id -> JSON message the dispatcher publishes
DELAYED = "tq:delayed"  # ZSET job id -> unix time it becomes runnable (countdown / eta)
DELAYED_TENANT = "tq:delayed:t"  # HASH job id -> tenant id of a delayed job
DELAYED_PRIORITY = "tq:delayed:p"  # HASH job id -> priority of a delayed job
ACTIVE = "tq:active"  # SET of tenants whose queue is non-empty: the dispatcher's work list
SEQ = "tq:seq"  # arrival counter: orders the jobs of one priority
PAUSED = "tq:paused"  # SET of tenants the dispatcher skips (suspended or paused by the operator)
PAUSED_WHY = "tq:paused:why"  # HASH tenant id -> why it is paused (operator_pause, suspended)
INFLIGHT = "tq:inflight"  # ZSET job id -> deadline: popped by the dispatcher, publish not yet acknowledged
INFLIGHT_META = "tq:inflight:m"  # HASH job id -> "{tenant}|{dispatch token}" of an in-flight job
DISPATCH_TOKEN = "tq:dtok"  # counter: a fresh token per release, so the start guard can tell duplicates
DISPATCHED_AT = "tq:disp:at"  # HASH job id -> unix time of its last publish, until its attempt starts
WAKE = "tq:wake"  # one-element LIST pushed on enqueue: wakes an idle dispatcher at once
BUCKET_PREFIX = "tq:rl:"  # HASH per tenant: execution-rate token bucket (tokens, ts)
LEASE_PREFIX = "tq:cc:"  # ZSET per tenant: concurrency leases "{job}:{token}" -> expiry (unix s)
WAIT_PREFIX = "tq:wait:"  # LIST per tenant: recent queue waits (ms) for the /v1/queue percentiles
STARTED_PREFIX = "tq:started:"  # STRING per job attempt: the dispatch token that started it (start guard)
HOLDER_PREFIX = "tq:holder:"  # STRING per job attempt: the pool process (host:pid) that started it
ALIVE_PREFIX = "tq:alive:"  # STRING per pool process (host:pid), expiring: it beat within ALIVE_TTL
ROUTES = "tq:route"  # HASH tenant id -> Celery queue of the tenant's dedicated worker pool
DISPATCHER_LEADER = "tq:dispatcher:leader"  # STRING with expiry: instance id of the leading dispatcher
DISPATCHER_HEARTBEAT = "tq:dispatcher:heartbeat"  # STRING: unix time of the leader's last pass


def queue_key(tenant_id: str) -> str:
    """A tenant's pending queue."""
    return f"{QUEUE_PREFIX}{tenant_id}"


def lease_key(tenant_id: str) -> str:
    """A tenant's concurrency leases."""
    return f"{LEASE_PREFIX}{tenant_id}"


def bucket_key(tenant_id: str) -> str:
    """A tenant's execution-rate token bucket."""
    return f"{BUCKET_PREFIX}{tenant_id}"


def wait_key(tenant_id: str) -> str:
    """A tenant's recent queue-wait samples."""
    return f"{WAIT_PREFIX}{tenant_id}"


def started_key(job_id: str, attempt: int) -> str:
    """Which dispatch of a job's attempt started (the start guard's record)."""
    return f"{STARTED_PREFIX}{job_id}:{attempt}"


# -- jobs (platform.jobs) ---------------------------------------------------------------------------------

CANCEL_PREFIX = "tq:cancel:"  # STRING per job: highest attempt forbidden to start (cancel marker)


def cancel_key(job_id: str) -> str:
    """A job's cancel marker."""
    return f"{CANCEL_PREFIX}{job_id}"


JOB_EVENTS = "tq:jobs:events"  # pub/sub CHANNEL: status changes and progress of every job (JSON messages)
PROGRESS_PREFIX = "tq:progress:"  # HASH per job: the latest progress a task reported (attempt, fraction...)


def progress_key(job_id: str) -> str:
    """A job's latest reported progress."""
    return f"{PROGRESS_PREFIX}{job_id}"


# -- surviving a database outage (platform.jobs.outcomes, platform.jobs.outbox) --------------------------

OUTCOMES = "tq:outcomes"  # STREAM of attempt outcomes the worker could not write to SQL (the settler applies)
OUTBOX = "tq:outbox"  # ZSET job id -> unix time: submitted, committed maybe, not yet known to be enqueued
OUTBOX_TENANT = "tq:outbox:t"  # HASH job id -> tenant id of an outbox entry
IDEMPOTENCY_CLAIM_PREFIX = "tq:idem:"  # STRING per tenant and key, expiring: a submit with it is in flight


def idempotency_claim_key(tenant_id: str, idempotency_key: str) -> str:
    """Held by the one request submitting a job with this idempotency key; concurrent replays wait."""
    return f"{IDEMPOTENCY_CLAIM_PREFIX}{tenant_id}:{idempotency_key}"


# -- submission and login limits (tenants.access) ---------------------------------------------------------

SUBMIT_BUCKET_PREFIX = "tq:rl:submit:"  # HASH per tenant: submission-rate token bucket
AUTH_BUCKET_PREFIX = "tq:rl:auth:"  # HASH per client address: failed-login token bucket


REVOKED_SESSION_PREFIX = "tq:sess:revoked:"  # STRING per logged-out session JWT (jti), expiring at its exp


def revoked_session_key(token_id: str) -> str:
    """Marks a session token as ended by logout (the denylist checked on every session use)."""
    return f"{REVOKED_SESSION_PREFIX}{token_id}"


def submit_bucket_key(tenant_id: str) -> str:
    return f"{SUBMIT_BUCKET_PREFIX}{tenant_id}"


def auth_bucket_key(address: str) -> str:
    return f"{AUTH_BUCKET_PREFIX}{address}"


# -- metering and quotas (billing.usage) ------------------------------------------------------------------

USAGE_STREAM = "tq:usage"  # STREAM of closed attempts (field "events": JSON list of usage events)
USAGE_OPEN = "tq:usage:open"  # HASH "{job}:{attempt}" -> JSON record of an attempt started, not closed
USAGE_ATTEMPT_PREFIX = "tq:usage:att:"  # HASH per job: highest attempt allocated ("n") and its start ("t")
USAGE_FLUSHERS = "tq:usage:flushers"  # consumer group of the usage stream (the flushers)
USAGE_DEAD = "tq:usage:dead"  # STREAM of malformed usage entries moved aside by the flusher
QUOTA_PREFIX = "tq:quota:"  # STRING counters per tenant and period, and the per-period tenant SET


def usage_attempt_key(job_id: str) -> str:
    """A job's attempt allocator."""
    return f"{USAGE_ATTEMPT_PREFIX}{job_id}"


def quota_jobs_key(tenant_id: str, period: str) -> str:
    """Jobs accepted for a tenant in a period (YYYY-MM)."""
    return f"{QUOTA_PREFIX}{tenant_id}:{period}:jobs"


def quota_compute_key(tenant_id: str, period: str) -> str:
    """CPU milliseconds flushed for a tenant in a period (YYYY-MM)."""
    return f"{QUOTA_PREFIX}{tenant_id}:{period}:compute_ms"


def quota_tenants_key(period: str) -> str:
    """SET of tenants with quota counters in a period, so the periodic sync needs no keyspace scan."""
    return f"{QUOTA_PREFIX}tenants:{period}"


# -- operations (ops.metrics, worker metrics) -------------------------------------------------------------

METRICS_VOLUME = "tq:metrics:volume"  # ZSET tenant id -> jobs submitted: the busiest get their own label
METRICS_RUNNING = "tq:metrics:running"  # HASH job id -> JSON of the attempt running now (for gauges)
WORKERS = "tq:workers"  # ZSET worker hostname -> last heartbeat (unix s)
# Free execution slots (dispatch.slots): what the dispatcher keeps each execution queue filled to.
SLOTS = "tq:slots"  # HASH worker hostname -> JSON {"size": pool processes, "queues": [...], "at": unix s}
SLOTS_BUSY = "tq:slots:busy"  # HASH worker hostname -> attempts running in its pool now


# -- Lua ---------------------------------------------------------------------------------------------------

_LUA_NAMES = {
    name: value
    for name, value in globals().items()
    if name.isupper() and not name.startswith("_") and isinstance(value, str)
}


def lua(script: str) -> str:
    """``script`` with each ``${NAME}`` replaced by this module's constant ``NAME``.

    Scripts quote the placeholder themselves (``'${PAUSED}'``, ``'${QUEUE_PREFIX}' .. tenant``). An
    unknown name raises ``KeyError`` at import time rather than reaching Redis as a wrong key.
    """
    return Template(script).substitute(_LUA_NAMES)
