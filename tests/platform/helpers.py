"""Small helpers shared by the job/workflow API tests."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tests.conftest import wait_until
from tests.factories import auth

FINISHED = ("succeeded", "failed", "cancelled")


def submit(api, key, body: dict[str, Any], status: int = 202) -> dict[str, Any]:
    resp = api.post("/v1/jobs", json=body, headers=auth(key))
    assert resp.status_code == status, resp.text
    return resp.json()


def get_job(api, key, job_id: str) -> dict[str, Any]:
    resp = api.get(f"/v1/jobs/{job_id}", headers=auth(key))
    assert resp.status_code == 200, resp.text
    return resp.json()


def wait_job(api, key, job_id: str, statuses=FINISHED, timeout: float = 90) -> dict[str, Any]:
    def reached():
        body = get_job(api, key, job_id)
        return body if body["status"] in statuses else None

    return wait_until(reached, timeout=timeout, interval=0.1, message=f"job {job_id} to reach {statuses}")


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value)
