"""Structured logs: JSON lines with job/tenant context from the worker and the API, text on a terminal."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pytest

from tenantq.core import logging as tq_logging
from tests.conftest import ROOT, wait_until
from tests.factories import ApiKeyFactory, auth


def record(msg="hello", **extra):
    rec = logging.LogRecord("tenantq.test", logging.INFO, __file__, 1, msg, (), None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


class TestFormatters:
    def test_json_line_carries_bound_context_and_extras(self):
        with tq_logging.bind_context(tenant_id="t1", job_id="j1", task_id="j1", attempt=2):
            line = tq_logging.JsonFormatter().format(record("job started", event="job.started"))
        body = json.loads(line)
        assert body["msg"] == "job started" and body["level"] == "info" and body["logger"] == "tenantq.test"
        assert (body["tenant_id"], body["job_id"], body["task_id"], body["attempt"]) == ("t1", "j1", "j1", 2)
        assert body["event"] == "job.started" and body["ts"].endswith("+00:00")
        # Context ends with the block.
        assert "tenant_id" not in json.loads(tq_logging.JsonFormatter().format(record()))

    def test_json_includes_traceback_and_never_breaks_on_odd_values(self):
        try:
            raise ValueError("boom")
        except ValueError:
            rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
        rec.tenant_id = object()  # not JSON serialisable
        body = json.loads(tq_logging.JsonFormatter().format(rec))
        assert "ValueError: boom" in body["exc"] and body["tenant_id"].startswith("<object")

    def test_human_format_has_context_as_key_values(self):
        with tq_logging.bind_context(tenant_id="t1", job_id="j1"):
            text = tq_logging.HumanFormatter().format(record("job started"))
        assert "INFO tenantq.test: job started" in text and "tenant_id=t1 job_id=j1" in text

    def test_json_unless_terminal_and_setting_wins(self, monkeypatch):
        from tenantq.core.settings import reset_settings_cache

        class Tty(io.StringIO):
            def isatty(self):
                return True

        monkeypatch.delenv("TENANTQ_LOG_JSON", raising=False)
        reset_settings_cache()
        assert isinstance(tq_logging.make_formatter(Tty()), tq_logging.HumanFormatter)
        assert isinstance(tq_logging.make_formatter(io.StringIO()), tq_logging.JsonFormatter)
        monkeypatch.setenv("TENANTQ_LOG_JSON", "true")
        reset_settings_cache()
        try:
            assert isinstance(tq_logging.make_formatter(Tty()), tq_logging.JsonFormatter)
        finally:
            monkeypatch.delenv("TENANTQ_LOG_JSON")
            reset_settings_cache()


class TestRequestLog:
    def test_one_line_per_request_with_tenant_and_route(self, api, caplog):
        key = ApiKeyFactory()
        with caplog.at_level(logging.INFO, logger="tenantq.http"):
            job = api.post("/v1/jobs", json={"task": "demo.echo", "args": {}}, headers=auth(key)).json()
            api.get(f"/v1/jobs/{job['id']}", headers=auth(key))
            api.get("/v1/jobs/nope", headers={"Authorization": "Bearer tq_live_bad"})
        lines = [r for r in caplog.records if r.name == "tenantq.http"]
        assert [(r.method, r.route, r.status) for r in lines] == [
            ("POST", "/v1/jobs", 202),
            ("GET", "/v1/jobs/{job_id}", 200),
            ("GET", "/v1/jobs/{job_id}", 401),
        ]
        assert [r.tenant_id for r in lines] == [key.tenant.id, key.tenant.id, None]
        assert all(r.duration_ms >= 0 for r in lines)
        body = json.loads(tq_logging.JsonFormatter().format(lines[0]))
        assert body["tenant_id"] == key.tenant.id and body["path"] == "/v1/jobs" and body["status"] == 202


@pytest.mark.e2e
class TestProcessLogs:
    def test_worker_writes_json_lines_for_job_start_and_finish(self, api, platform_processes):
        key = ApiKeyFactory()
        job = api.post(
            "/v1/jobs",
            json={"task": "demo.flaky", "args": {"failures": 1}, "max_retries": 1},
            headers=auth(key),
        ).json()

        def events():
            found = [
                json.loads(line)
                for line in platform_processes.log("worker").splitlines()
                if job["id"] in line and line.startswith("{")
            ]
            kinds = [e.get("event") for e in found]
            return found if "job.succeeded" in kinds else None

        found = wait_until(events, timeout=90, interval=0.3, message="the worker's job log lines")
        mine = [e for e in found if e.get("event", "").startswith("job.")]
        assert [(e["event"], e["attempt"]) for e in mine] == [
            ("job.started", 1),
            ("job.retried", 1),
            ("job.started", 2),
            ("job.succeeded", 2),
        ]
        # Each attempt is its own Celery task: task id "{job id}-{attempt}".
        assert all(
            e["tenant_id"] == key.tenant.id and e["task_id"] == f"{job['id']}-{e['attempt']}" for e in mine
        )
        assert "FlakyError" in mine[1]["error"] and mine[3]["duration_ms"] >= 0
        # Celery's own lines inside the attempt carry the job context too.
        assert any(e["logger"].startswith("celery") and e.get("job_id") == job["id"] for e in found)

    def test_cli_role_logs_json_when_not_a_terminal(self, platform_env, tmp_path):
        env = {**os.environ, **platform_env, "PYTHONPATH": str(ROOT)}
        env.pop("TENANTQ_LOG_JSON", None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "tenantq.cli", "dispatcher"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            first = proc.stdout.readline().decode()
        finally:
            proc.terminate()
            proc.wait(30)
        body = json.loads(first)
        assert body["logger"] == "tenantq.dispatcher" and body["msg"].startswith("dispatcher ")
        assert "started" in body["msg"]
