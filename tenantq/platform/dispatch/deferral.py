"""Deferring an attempt that may not start now (its start could not be recorded: the database is down).

The start guard already took the attempt's concurrency lease and recorded its dispatch token as the one
that started. :func:`defer_attempt` undoes both and puts the same attempt back on the tenant's delayed
queue, due after ``delay`` seconds, in one atomic script: the dispatcher releases it again then (with a
new dispatch token), and the Celery message is acknowledged as not started. Nothing ran, nothing is
billed, and SQL still says ``queued``, which is true.
"""

from __future__ import annotations

import json
import time
from typing import Any

from tenantq.core import keys
from tenantq.core.redis import get_redis
from tenantq.platform.dispatch.limits import AttemptMessage, same_attempt

_DEFER = keys.lua("""
local started = '${STARTED_PREFIX}' .. ARGV[1] .. ':' .. ARGV[2]
if ARGV[3] ~= '' then
  if redis.call('GET', started) == ARGV[3] then redis.call('DEL', started) end
  redis.call('ZREM', '${LEASE_PREFIX}' .. ARGV[4], ARGV[1] .. ':' .. ARGV[3])
end
redis.call('HSET', '${PAYLOAD}', ARGV[1], ARGV[5])
redis.call('HSET', '${DELAYED_TENANT}', ARGV[1], ARGV[4])
redis.call('HSET', '${DELAYED_PRIORITY}', ARGV[1], ARGV[7])
redis.call('ZADD', '${DELAYED}', ARGV[6], ARGV[1])
return 1
""")


def defer_attempt(message: AttemptMessage, task_id: str, timelimit: Any, delay: float) -> None:
    """Give the attempt's slot and start record back and run it again ``delay`` seconds from now:
    the same attempt, Celery task id and per-job time limits."""
    payload = {**same_attempt(message, task_id, timelimit), "enqueued_at": time.time()}
    client = get_redis()
    client.eval(
        _DEFER,
        0,
        message.id,
        message.attempt,
        message.dispatch or "",
        message.tenant_id,
        json.dumps(payload),
        time.time() + delay,
        message.priority,
    )
