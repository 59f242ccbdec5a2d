"""A job travels HTTP -> SQL -> per-tenant queue -> dispatcher -> Redis -> real Celery worker -> SQL."""

from __future__ import annotations

import pytest

from tests.conftest import wait_until
from tests.factories import ApiKeyFactory, auth

pytestmark = pytest.mark.e2e


def wait_status(api, key, job_id, statuses=("succeeded", "failed", "cancelled"), timeout=60):
    def done():
        body = api.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()
        return body if body["status"] in statuses else None

    return wait_until(done, timeout=timeout, message=f"job {job_id} to reach {statuses}")


class TestExecution:
    def test_echo_succeeds_with_result(self, api, platform_processes):
        key = ApiKeyFactory()
        job = api.post(
            "/v1/jobs", json={"task": "demo.echo", "args": {"hello": "world", "n": [1, 2]}}, headers=auth(key)
        ).json()
        done = wait_status(api, key, job["id"])
        assert done["status"] == "succeeded"
        assert done["result"] == {"hello": "world", "n": [1, 2]}
        assert done["attempts"] == 1
        assert done["started_at"] and done["finished_at"] and done["finished_at"] >= done["started_at"]

    def test_failure_records_error(self, api, platform_processes):
        key = ApiKeyFactory()
        job = api.post(
            "/v1/jobs", json={"task": "demo.fail", "args": {"message": "boom 123"}}, headers=auth(key)
        ).json()
        done = wait_status(api, key, job["id"])
        assert done["status"] == "failed"
        assert "boom 123" in done["error"] and "RuntimeError" in done["error"]

    def test_flaky_retries_then_succeeds(self, api, platform_processes):
        key = ApiKeyFactory()
        job = api.post(
            "/v1/jobs",
            json={"task": "demo.flaky", "args": {"failures": 2}, "max_retries": 3},
            headers=auth(key),
        ).json()
        done = wait_status(api, key, job["id"])
        assert done["status"] == "succeeded"
        assert done["attempts"] == 3 and done["result"] == {"attempt": 3}

    def test_flaky_without_retries_fails(self, api, platform_processes):
        key = ApiKeyFactory()
        job = api.post(
            "/v1/jobs", json={"task": "demo.flaky", "args": {"failures": 1}}, headers=auth(key)
        ).json()
        done = wait_status(api, key, job["id"])
        assert done["status"] == "failed" and done["attempts"] == 1

    def test_countdown_job_runs_after_delay(self, api, platform_processes):
        key = ApiKeyFactory()
        job = api.post(
            "/v1/jobs",
            json={"task": "demo.echo", "args": {"late": True}, "countdown": 1.5},
            headers=auth(key),
        ).json()
        assert job["status"] == "scheduled"
        done = wait_status(api, key, job["id"])
        assert done["status"] == "succeeded"
        from datetime import datetime

        started = datetime.fromisoformat(done["started_at"])
        created = datetime.fromisoformat(done["created_at"])
        assert (started - created).total_seconds() >= 1.4
