"""Dedicated worker pools: route one tenant's jobs to its own Celery execution queue.

``tenantq worker --tenant acme`` registers the route and consumes ``tq.exec.t.<tenant id>``; from then on
the dispatcher releases acme's jobs into that queue instead of the shared one (same fair share, rate and
concurrency rules). The tenant submits exactly as before. The route is operator configuration and
outlives the worker process (a dedicated pool that is down means acme waits, not that acme's jobs leak
onto the shared pool); ``DELETE /admin/v1/tenants/{id}/queue/pool``
removes it, after which waiting messages still drain from the dedicated queue when a pool runs again.

Redis: ``tq:route`` HASH tenant id -> Celery queue name.
"""

from __future__ import annotations

from typing import cast

import redis

from tenantq.core import keys

ROUTES = keys.ROUTES
DEDICATED_PREFIX = "tq.exec.t."


def dedicated_queue(tenant_id: str) -> str:
    return f"{DEDICATED_PREFIX}{tenant_id}"


def assign(client: redis.Redis, tenant_id: str) -> str:
    queue = dedicated_queue(tenant_id)
    client.hset(ROUTES, tenant_id, queue)
    return queue


def unassign(client: redis.Redis, tenant_id: str) -> bool:
    return bool(client.hdel(ROUTES, tenant_id))


def routes(client: redis.Redis) -> dict[str, str]:
    # The clients decode responses to str, which redis-py's bytes | str return types cannot express.
    return cast(dict[str, str], client.hgetall(ROUTES))
