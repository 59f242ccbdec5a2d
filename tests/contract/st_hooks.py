"""Schemathesis hooks for the contract runs (named by ``SCHEMATHESIS_HOOKS``).

``GET /v1/jobs/{id}?wait=SECONDS`` holds its answer up to ``wait`` seconds (at most 60) while the job is
unfinished, and the contract server runs no worker, so every generated job stays queued. A generated
``wait=59`` therefore answers after 59 s, as documented, and would fail the response-time check by
design. Generated waits are capped at one second where schemathesis applies query hooks (fuzzing); a
long-poll that answers within its own ``wait`` (plus the usual limit) is not a failure. The long-poll
itself is tested in tests/platform/test_job_events.py.
"""

from __future__ import annotations

from typing import Any

import schemathesis

WAIT_CAP_SECONDS = 1
SLACK_SECONDS = 10.0  # the check's own limit, on top of the wait the request asked for


def _wait_of(query: dict[str, Any] | None) -> float | None:
    wait = (query or {}).get("wait")
    if isinstance(wait, bool):
        return None
    if isinstance(wait, int | float):
        return float(wait)
    if isinstance(wait, str):
        try:
            return float(wait)
        except ValueError:
            return None
    return None


@schemathesis.hook
def map_query(context: Any, query: dict[str, Any] | None) -> dict[str, Any] | None:
    wait = _wait_of(query)
    if query and wait is not None and wait > WAIT_CAP_SECONDS:
        query["wait"] = WAIT_CAP_SECONDS
    return query


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """Keep every failure but a long-poll's response time within the wait it asked for."""
    if getattr(failure, "code", None) != "ST112":
        return True
    wait = _wait_of(getattr(case, "query", None))
    return wait is None or float(failure.elapsed) > wait + SLACK_SECONDS
