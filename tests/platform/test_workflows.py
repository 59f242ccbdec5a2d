"""Workflows: chains and groups run as ordinary jobs through the dispatcher, data flowing from step to
step; a failed step stops the chain and says why; cancelling; validation; tenant isolation."""

from __future__ import annotations

from itertools import pairwise

import pytest

from tests.conftest import wait_until
from tests.factories import ApiKeyFactory, auth
from tests.platform.helpers import get_job, ts

WF_FINISHED = ("succeeded", "failed", "cancelled")


def create(api, key, steps, status=202):
    resp = api.post("/v1/workflows", json={"steps": steps}, headers=auth(key))
    assert resp.status_code == status, resp.text
    return resp.json()


def get_wf(api, key, wf_id):
    resp = api.get(f"/v1/workflows/{wf_id}", headers=auth(key))
    assert resp.status_code == 200, resp.text
    return resp.json()


def wait_wf(api, key, wf_id, statuses=WF_FINISHED, timeout=90):
    def reached():
        body = get_wf(api, key, wf_id)
        return body if body["status"] in statuses else None

    return wait_until(reached, timeout=timeout, interval=0.1, message=f"workflow {wf_id} to reach {statuses}")


class TestValidation:
    def err(self, api, key, steps):
        resp = api.post("/v1/workflows", json={"steps": steps}, headers=auth(key))
        assert resp.status_code == 422, resp.text
        return resp.json()["error"]

    def test_unknown_task_and_bad_args_name_the_step(self, api):
        key = ApiKeyFactory()
        err = self.err(
            api, key, [{"task": "demo.echo"}, {"group": [{"task": "demo.echo"}, {"task": "nope"}]}]
        )
        assert err["code"] == "unknown_task" and err["message"].startswith("steps[1].group[1]:")
        err = self.err(api, key, [{"task": "demo.sleep", "args": {"seconds": -1}}])
        assert err["code"] == "invalid_args" and err["message"].startswith("steps[0]:")

    def test_input_is_reserved_after_the_first_step(self, api):
        key = ApiKeyFactory()
        err = self.err(api, key, [{"task": "demo.echo"}, {"task": "demo.echo", "args": {"input": 1}}])
        assert err["code"] == "invalid_workflow" and "reserved" in err["message"]

    def test_empty_and_oversized(self, api):
        key = ApiKeyFactory()
        assert self.err(api, key, [])["code"] == "invalid_input"
        assert self.err(api, key, [{"task": "demo.echo"}] * 51)["code"] == "invalid_input"
        assert self.err(api, key, [{"group": []}])["code"] == "invalid_input"

    def test_time_limit_bounded_by_plan(self, api):
        key = ApiKeyFactory(tenant__plan_name="free")
        assert (
            self.err(api, key, [{"task": "demo.echo", "time_limit": 61}])["code"] == "time_limit_not_allowed"
        )


class TestIsolation:
    def test_another_tenants_workflow_is_404(self, api):
        owner, other = ApiKeyFactory(), ApiKeyFactory()
        wf = create(api, owner, [{"task": "demo.echo", "args": {"secret": 1}}])
        for method, path in (
            ("get", f"/v1/workflows/{wf['id']}"),
            ("post", f"/v1/workflows/{wf['id']}/cancel"),
        ):
            resp = getattr(api, method)(path, headers=auth(other))
            assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
        assert api.get("/v1/workflows/nope", headers=auth(owner)).status_code == 404

    def test_step_jobs_belong_to_the_tenant(self, api):
        owner, other = ApiKeyFactory(), ApiKeyFactory()
        wf = create(api, owner, [{"task": "demo.echo"}])
        job_id = wf["steps"][0]["jobs"][0]["id"]
        assert get_job(api, owner, job_id)["workflow_id"] == wf["id"]
        assert api.get(f"/v1/jobs/{job_id}", headers=auth(other)).status_code == 404


class TestStepInput:
    def test_oversized_input_fails_the_next_step_clearly(self, api, db_session, redis_client):
        from tenantq.platform.jobs.models import Job
        from tenantq.platform.workflows import service

        key = ApiKeyFactory()
        redis_client.sadd("tq:paused", key.tenant_id)  # keep the session dispatcher away from it
        try:
            wf = create(api, key, [{"task": "demo.echo"}, {"task": "demo.echo"}])
            first = db_session.get(Job, wf["steps"][0]["jobs"][0]["id"])
            # Play the worker: step 0 succeeded with a result too big to pass on.
            first.status, first.result = "succeeded", {"blob": "x" * 1_100_000}
            db_session.flush()
            assert service.step_job_succeeded(db_session, wf["id"], 0) == []
            db_session.commit()
        finally:
            redis_client.srem("tq:paused", key.tenant_id)
        body = get_wf(api, key, wf["id"])
        assert body["status"] == "failed" and body["failed_step"] == 1
        assert "InputTooLarge: the previous step's result makes arguments of" in body["error"]
        assert body["steps"][1]["jobs"][0]["status"] == "failed"


@pytest.mark.e2e
class TestWorkflowsEndToEnd:
    def test_chain_passes_each_result_to_the_next_step(self, api, platform_processes):
        key = ApiKeyFactory()
        wf = create(
            api,
            key,
            [
                {"task": "demo.echo", "args": {"n": 1}},
                {"task": "demo.echo", "args": {"n": 2}},
                {"task": "demo.echo", "args": {"n": 3}},
            ],
        )
        assert (
            wf["status"] in ("queued", "running")
            and [s["status"] for s in wf["steps"][1:]] == ["pending"] * 2
        )
        done = wait_wf(api, key, wf["id"])
        assert done["status"] == "succeeded" and done["error"] is None
        assert done["result"] == {"n": 3, "input": {"n": 2, "input": {"n": 1}}}
        assert [s["status"] for s in done["steps"]] == ["succeeded"] * 3
        jobs = [get_job(api, key, s["jobs"][0]["id"]) for s in done["steps"]]
        assert [(j["workflow_id"], j["step_index"]) for j in jobs] == [(wf["id"], i) for i in range(3)]
        # Each step only started after the previous one finished.
        for before, after in pairwise(jobs):
            assert ts(after["created_at"]) >= ts(before["finished_at"])

    def test_group_fans_in_a_list_of_results_in_group_order(self, api, platform_processes):
        key = ApiKeyFactory()
        wf = create(
            api,
            key,
            [
                {"group": [{"task": "demo.echo", "args": {"part": i}} for i in range(4)]},
                {"task": "demo.echo", "args": {"merge": True}},
            ],
        )
        done = wait_wf(api, key, wf["id"])
        assert done["status"] == "succeeded"
        assert done["result"] == {"merge": True, "input": [{"part": i} for i in range(4)]}
        assert done["steps"][0]["kind"] == "group" and len(done["steps"][0]["jobs"]) == 4
        assert len(done["steps"][1]["jobs"]) == 1  # fan-in happened exactly once

    def test_failed_step_stops_the_chain_and_says_why(self, api, platform_processes):
        key = ApiKeyFactory()
        # demo.fail's arguments are closed: it runs after step 0 without receiving its result.
        wf = create(
            api,
            key,
            [
                {"task": "demo.echo", "args": {"a": 1}},
                {"group": [{"task": "demo.echo"}, {"task": "demo.fail", "args": {"message": "disk full"}}]},
                {"task": "demo.echo"},
            ],
        )
        done = wait_wf(api, key, wf["id"])
        assert done["status"] == "failed" and done["failed_step"] == 1
        failed_job = next(j for j in done["steps"][1]["jobs"] if j["task"] == "demo.fail")
        assert done["error"] == f"step 1 (demo.fail) job {failed_job['id']} failed: RuntimeError: disk full"
        assert [s["status"] for s in done["steps"]] == ["succeeded", "failed", "skipped"]
        assert done["steps"][2]["jobs"] == [] and done["result"] is None
        assert get_job(api, key, failed_job["id"])["args"] == {"message": "disk full"}

    def test_retried_step_then_chain_continues(self, api, platform_processes):
        key = ApiKeyFactory()
        wf = create(
            api,
            key,
            [
                {"task": "demo.flaky", "args": {"failures": 1}, "max_retries": 2},
                {"task": "demo.echo", "args": {"after": "flaky"}},
            ],
        )
        done = wait_wf(api, key, wf["id"])
        assert done["status"] == "succeeded"
        assert done["result"] == {"after": "flaky", "input": {"attempt": 2}}

    def test_cancel_stops_unfinished_steps(self, api, redis_client, platform_processes):
        key = ApiKeyFactory()
        wf = create(
            api,
            key,
            [
                {"task": "demo.sleep_uninterruptible", "args": {"seconds": 0.1}},
                {"group": [{"task": "demo.sleep", "args": {"seconds": 60}}] * 2},
                {"task": "demo.echo"},
            ],
        )
        # Wait until the group is running, then cancel the workflow.
        wait_until(
            lambda: get_wf(api, key, wf["id"])["steps"][1]["status"] == "running",
            timeout=60,
            message="the group step to run",
        )
        resp = api.post(f"/v1/workflows/{wf['id']}/cancel", headers=auth(key))
        assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
        done = get_wf(api, key, wf["id"])
        assert [s["status"] for s in done["steps"]] == ["succeeded", "cancelled", "skipped"]
        assert {j["status"] for j in done["steps"][1]["jobs"]} == {"cancelled"}
        # Cancelling again changes nothing.
        assert api.post(f"/v1/workflows/{wf['id']}/cancel", headers=auth(key)).json()["status"] == "cancelled"

    def test_cancelling_a_step_job_stops_the_workflow(self, api, redis_client, platform_processes):
        key = ApiKeyFactory()
        redis_client.sadd("tq:paused", key.tenant_id)
        try:
            wf = create(api, key, [{"task": "demo.echo"}, {"task": "demo.echo"}])
            job_id = wf["steps"][0]["jobs"][0]["id"]
            assert (
                api.post(f"/v1/jobs/{job_id}/cancel", headers=auth(key)).json()["cancellation"] == "dequeued"
            )
        finally:
            redis_client.srem("tq:paused", key.tenant_id)
        body = get_wf(api, key, wf["id"])
        assert body["status"] == "cancelled" and body["failed_step"] == 0
        assert body["error"].startswith(f"step 0 (demo.echo) job {job_id} was cancelled")
        # Re-running the cancelled step job resumes the workflow.
        assert api.post(f"/v1/jobs/{job_id}/retry", headers=auth(key)).status_code == 202
        assert wait_wf(api, key, wf["id"])["status"] == "succeeded"
