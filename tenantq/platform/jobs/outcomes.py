"""Write-behind of attempt outcomes: an outcome the worker saw survives a database outage.

The worker records an attempt's final outcome (succeeded with its result, failed with its error) in SQL
from its ``task_postrun`` signal. When that write fails (the database is down, stalled or failing
over), the outcome goes to the Redis stream ``tq:outcomes`` instead (:func:`record`; Redis keeps it
with its AOF) before the message is acknowledged, and the worker logs the job's end only then.

The settler (:func:`settle`, run by the leading dispatcher every second, see ``tenantq dispatcher``)
applies each entry to SQL with the same conditional transitions the worker uses, so an entry applied
twice, or one for an attempt the job has moved past, changes nothing. It then deletes the entry and
runs the finish hooks' after-commit part (webhook deliveries); the hooks that claim a message inside
its status transaction (a workflow's next step) run inside it, as on the worker. While the database
is still away the settler stops at the first failure and tries again on its next round.

An entry that fails for another reason (a bug, a row that cannot be written) stays in the stream and
is retried every round; ``tenantq_outcomes_pending`` on ``/metrics`` counts the entries, and the
``TenantqOutcomesUnsettled`` alert fires when they do not drain.

Redis key owned here: ``tq:outcomes`` (STREAM; fields ``task``, ``job``, ``args`` (JSON), ``status``,
``result`` (JSON), ``error``).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Literal, cast

import redis

from tenantq.core.db import is_database_outage
from tenantq.core.keys import OUTCOMES
from tenantq.core.redis import get_redis
from tenantq.platform.jobs import hooks, lifecycle
from tenantq.platform.jobs.messages import JobMessage

log = logging.getLogger("tenantq.jobs.outcomes")

# How long the worker keeps trying to write an outcome to Redis when SQL failed too, before giving up
# (and logging the outcome as lost). The attempt's pool process waits meanwhile.
RECORD_ATTEMPTS = 10
RECORD_PAUSE_S = 1.0


def record(
    message: JobMessage,
    status: Literal["succeeded", "failed"],
    *,
    result: Any = None,
    error: str | None = None,
    client: redis.Redis | None = None,
) -> str:
    """Append the outcome to the stream; returns the entry id. Raises on a Redis failure."""
    entry = {
        "task": message.task,
        "job": json.dumps(dict(message.job)),
        "args": json.dumps(dict(message.args)),
        "status": status,
        "result": json.dumps(result),
        "error": error or "",
    }
    return str((client or get_redis()).xadd(OUTCOMES, entry))  # type: ignore[arg-type]


def record_durably(
    message: JobMessage,
    status: Literal["succeeded", "failed"],
    *,
    result: Any = None,
    error: str | None = None,
) -> bool:
    """:func:`record`, retried for about ``RECORD_ATTEMPTS`` seconds over a Redis failure. False if
    the outcome could not be stored anywhere (SQL and Redis both down)."""
    for attempt in range(RECORD_ATTEMPTS):
        try:
            record(message, status, result=result, error=error)
            log.warning(
                "job %s attempt %s: outcome %s kept in Redis until the database is back",
                message.id,
                message.attempt,
                status,
                extra={"job_id": message.id, "event": "job.outcome_deferred"},
            )
            return True
        except redis.RedisError as exc:
            if attempt + 1 == RECORD_ATTEMPTS:
                log.error("job %s: outcome %s could not be stored: %s", message.id, status, exc)
                return False
            time.sleep(RECORD_PAUSE_S)
    return False


def pending(client: redis.Redis | None = None) -> int:
    """Outcomes waiting for the settler."""
    return int((client or get_redis()).xlen(OUTCOMES))


def _apply(fields: dict[str, str]) -> hooks.AttemptOutcome:
    message = JobMessage.from_job(fields["task"], json.loads(fields["job"]), json.loads(fields["args"]))
    if fields["status"] == "succeeded":
        return lifecycle.attempt_succeeded(message, json.loads(fields["result"]))
    return lifecycle.attempt_failed(message, fields.get("error") or "failed")


class Settler:
    """Applies ``tq:outcomes`` to SQL. One per dispatcher process; only the leader calls it."""

    def __init__(self, client: redis.Redis | None = None, batch: int = 200) -> None:
        self.client = client
        self.batch = batch
        self._outage_logged = False

    def __call__(self) -> int:
        return self.settle()

    def settle(self) -> int:
        """Apply up to ``batch`` entries, oldest first; returns how many were settled."""
        client = self.client or get_redis()
        entries = cast(list[tuple[str, dict[str, str]]], client.xrange(OUTCOMES, count=self.batch))
        settled = 0
        for entry_id, fields in entries:
            try:
                outcome = _apply(fields)
            except (KeyError, ValueError, TypeError) as exc:
                log.error("dropping malformed outcome entry %s: %s (%r)", entry_id, exc, fields)
                client.xdel(OUTCOMES, entry_id)
                continue
            except Exception as exc:
                if is_database_outage(exc):
                    if not self._outage_logged:
                        log.warning("database unavailable; outcomes wait in Redis: %s", exc)
                        self._outage_logged = True
                    break  # the next round tries again
                log.exception("could not settle outcome entry %s; retrying next round", entry_id)
                continue
            self._outage_logged = False
            client.xdel(OUTCOMES, entry_id)
            settled += 1
            hooks.run_after_commit(outcome)
            log.info(
                "job %s attempt %s settled as %s after a database outage",
                outcome.message.id,
                outcome.message.attempt,
                outcome.status,
                extra={"job_id": outcome.message.id, "event": "job.outcome_settled"},
            )
        return settled
