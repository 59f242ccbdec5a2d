"""Infrastructure faults on PostgreSQL: nothing stranded, nothing lost, every failure a 503 JSON.

One private stack for the module (``bench.stack``: its own Redis with AOF, a fresh PostgreSQL database
behind a TCP proxy started here on 127.0.0.1, and ``tenantq api``, ``dispatcher``, a worker and the
usage flusher as separate processes). The scenario drivers are ``bench.faults``'s, shorter. They run
only with ``--faults`` on PostgreSQL (``.ci/run``'s PostgreSQL step): see ``tests/conftest.py``.
"""

from __future__ import annotations

import os

import pytest

from bench import faults
from bench.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.faults]


@pytest.fixture(scope="module")
def stack() -> Stack:
    stack = faults.start_stack(os.environ["TENANTQ_DATABASE_URL"], tenants=3, concurrency=4)
    yield stack
    stack.close()


def logs(stack: Stack) -> str:
    return "\n".join(f"--- {name}\n{stack.group.log(name)[-4000:]}" for name in stack.group.procs)


def test_a_job_committed_but_never_enqueued_runs_within_10_s(stack):
    result = faults.commit_without_enqueue(stack)
    assert result["statuses"] == {"succeeded": 1}, logs(stack)
    assert result["seconds_to_terminal"] <= 10.0, result


def test_database_unreachable_under_load_strands_nothing_and_answers_503_json(stack):
    result = faults.database_fault(stack, mode="cut", seconds=8, rate=3, job_seconds=0.5, lead=4)
    assert result["accepted"] > 0
    assert result["bad_answers"] == [], result
    assert result["not_terminal_60s_after_recovery"] == 0, (result, logs(stack))
    assert result["gave_up"] == 0, result
    assert result["outcomes_left_in_redis"] == 0, result
    # The outage was seen by clients, as 503 database_unavailable with Retry-After only.
    assert set(result["error_codes"]) <= {"503 database_unavailable", "503 overloaded"}, result
    assert result["error_codes"], result
    assert result["readyz_slowest_s"] <= 2.0, result


def test_database_stalled_readyz_answers_within_2_s_and_recovery_is_prompt(stack):
    result = faults.database_fault(stack, mode="blackhole", seconds=6, rate=2, job_seconds=0.5, lead=3)
    assert result["bad_answers"] == [], result
    assert result["not_terminal_60s_after_recovery"] == 0, (result, logs(stack))
    assert result["readyz_slowest_s"] <= 2.0, result
    assert result["recovery_s"] is not None and result["recovery_s"] <= 5.0, result


def test_redis_restart_on_submit_answers_503_queue_unavailable_and_loses_nothing(stack):
    result = faults.redis_restart(stack, down=3, rate=3, job_seconds=0.2)
    assert result["accepted"] > 0
    assert result["bad_answers"] == [], result
    assert result["lost"] == 0, (result, logs(stack))
    assert result["gave_up"] == 0, result
    assert "503 queue_unavailable" in result["error_codes"], result


def test_the_worker_process_rides_through_repeated_redis_restarts(stack):
    """The same worker process (never restarted by the stack's supervisor) through four Redis
    restarts, each with attempts running, and every accepted job ends. kombu's transport could stop
    the worker here (``Unrecoverable error: AttributeError ... 'hostname'``, on the restarts where the
    loss was first seen on another socket than the BRPOP's: see tenantq.core.redis_transport, whose
    trigger tests/core/test_redis_transport.py replays deterministically)."""
    result = faults.redis_restarts(stack, times=4, down=1.5, rate=4, job_seconds=0.5)
    assert result["worker_same_process"], (result, logs(stack))
    assert result["role_restarts"].get("worker", 0) == 0, result
    assert all(result["running_at_each_stop"]), result  # each restart hit attempts in flight
    assert result["accepted"] > 0
    assert result["not_terminal"] == 0, (result, logs(stack))
    assert result["bad_answers"] == [], result
    assert result["gave_up"] == 0, result
    assert "Unrecoverable error" not in stack.group.log("worker"), logs(stack)
