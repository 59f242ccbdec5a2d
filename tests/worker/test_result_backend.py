"""Tenant task types write nothing to Celery's result backend (their status and result live in SQL);
system tasks keep it, and task events (Flower, ``celery inspect``) stay on for both."""

from __future__ import annotations

import pytest

from tenantq.core.celery import app
from tenantq.platform.jobs.registry import all_task_types
from tests.factories import ApiKeyFactory
from tests.platform.helpers import submit, wait_job


def test_task_types_skip_the_result_backend_and_system_tasks_keep_it():
    for spec in all_task_types():
        task = spec.celery_task
        assert task.ignore_result is True and task.track_started is False, spec.name
    system = app.tasks["jobs.purge_expired_results"]
    assert system.ignore_result is False and system.track_started is True
    assert app.conf.worker_send_task_events is True and app.conf.task_send_sent_event is True


@pytest.mark.e2e
def test_a_finished_attempt_leaves_no_result_backend_key(api, redis_client, platform_processes):
    key = ApiKeyFactory()
    job = submit(api, key, {"task": "demo.echo", "args": {"x": 1}})
    done = wait_job(api, key, job["id"])
    assert done["status"] == "succeeded" and done["result"] == {"x": 1}
    # Celery's Redis backend stores celery-task-meta-<task id> (STARTED, then SUCCESS): none here.
    assert redis_client.keys("celery-task-meta-*" + job["id"] + "*") == []
    # A system task still stores its result.
    assert app.send_task("jobs.purge_expired_results", queue="tq.system").get(timeout=60) >= 0
