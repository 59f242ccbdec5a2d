"""One Content-Type per request and text checks behind the guard,
tracebacks without server paths, worker logs without secrets or results, and private data files."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import stat
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tenantq.core.settings import SECRET_FILE_NAME, embedded_secret
from tenantq.platform.jobs.models import Job
from tenantq.platform.schedules.models import Schedule
from tenantq.platform.webhooks.models import WebhookEndpoint
from tests.conftest import ROOT, wait_until
from tests.factories import ApiKeyFactory, JobFactory, auth


def count(session, model, tenant_id: str) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(model).where(model.tenant_id == tenant_id))


def assert_error(resp, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    if code is not None:
        assert error["code"] == code, error
    return error


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------------------- input
class TestContentTypeAndStoredText:
    @pytest.mark.parametrize("second", ["text/plain", "application/json"])
    def test_a_second_content_type_is_400_and_nothing_is_written(self, api, db_session, second):
        key = ApiKeyFactory()
        body = json.dumps({"task": "demo.echo", "args": {"x": "a\x00b"}})
        resp = api.post(
            "/v1/jobs",
            content=body,
            headers=[
                ("authorization", auth(key)["Authorization"]),
                ("content-type", "application/json"),
                ("content-type", second),
            ],
        )
        assert_error(resp, 400, "bad_request")
        assert "Content-Type" in resp.json()["error"]["message"]
        assert count(db_session, Job, key.tenant_id) == 0

    @pytest.mark.parametrize(
        ("path", "raw", "model"),
        [
            ("/v1/jobs", '{"task": "demo.echo", "args": {"x": NaN}}', Job),
            ("/v1/jobs", '{"task": "demo.echo", "args": {"x": Infinity}}', Job),
            ("/v1/jobs", '{"task": "demo.echo", "args": {"x": "\\ud800"}}', Job),
            ("/v1/jobs", '{"task": "demo.echo", "args": {"a\\u0000": 1}}', Job),
            (
                "/v1/webhooks",
                '{"url": "https://93.184.215.14/h", "events": ["job.failed"], "description": "a\\u0000"}',
                WebhookEndpoint,
            ),
            ("/v1/schedules", '{"name": "n\\u0000", "task": "demo.echo", "interval_seconds": 60}', Schedule),
        ],
        ids=["nan", "infinity", "surrogate", "nul-key", "webhook-nul", "schedule-nul"],
    )
    def test_schemas_refuse_what_the_database_cannot_store_even_past_the_guard(
        self, api, db_session, monkeypatch, path, raw, model
    ):
        # The request guard is the first line; with it out of the way the schema must still answer 422
        # (before this, PostgreSQL raised DataError: a 500).
        monkeypatch.setattr("tenantq.core.request_guard.check_json_body", lambda body: None)
        key = ApiKeyFactory()
        resp = api.post(path, content=raw, headers={**auth(key), "content-type": "application/json"})
        assert_error(resp, 422)
        assert count(db_session, model, key.tenant_id) == 0

    def test_a_stored_record_with_odd_data_never_fails_the_list(self, api):
        key = ApiKeyFactory()
        # JSON columns keep a lone surrogate as an escape (both SQLite and PostgreSQL's json accept it),
        # so a job stored before the checks existed, or a task's result, can hold one.
        odd = JobFactory(tenant=key.tenant, args={"s": "a\ud800b"}, result={"r": ["\udc00", 1.5]})
        fine = JobFactory(tenant=key.tenant, args={"n": 1})
        listed = api.get("/v1/jobs", headers=auth(key))
        assert listed.status_code == 200, listed.text
        items = {item["id"]: item for item in listed.json()["items"]}
        assert set(items) == {odd.id, fine.id}
        assert items[odd.id]["args"] == {"s": "a?b"} and items[odd.id]["result"] == {"r": ["?", 1.5]}
        one = api.get(f"/v1/jobs/{odd.id}", headers=auth(key))
        assert one.status_code == 200 and one.json()["args"] == {"s": "a?b"}


# ---------------------------------------------------------------------- tracebacks
def _failing_task(host: str) -> None:
    raise RuntimeError(f"could not reach the queue on {host}")


class TestTenantTracebacks:
    def test_frames_are_module_relative_the_host_is_masked_and_the_log_has_everything(
        self, monkeypatch, caplog
    ):
        from tenantq.platform.jobs.lifecycle import describe_error

        host = "worker-node-7f3a9c"
        monkeypatch.setattr(socket, "gethostname", lambda: host)
        try:
            _failing_task(host)
        except RuntimeError as exc:
            with caplog.at_level(logging.WARNING, logger="tenantq.jobs.lifecycle"):
                shown = describe_error(exc)
        assert shown.startswith("RuntimeError: could not reach the queue on <worker-host>")
        assert 'File "tests/security/test_guard_logs_files.py"' in shown and "_failing_task" in shown
        assert str(ROOT) not in shown and host not in shown and sys.prefix not in shown
        logged = "\n".join(
            logging.Formatter().formatException(r.exc_info) for r in caplog.records if r.exc_info
        )
        assert str(ROOT / "tests" / "security" / "test_guard_logs_files.py") in logged and host in logged

    def test_chained_exceptions_are_relative_too(self):
        from tenantq.platform.jobs.lifecycle import describe_error

        try:
            try:
                _failing_task("db")
            except RuntimeError as inner:
                raise ValueError("wrapped") from inner
        except ValueError as exc:
            shown = describe_error(exc)
        assert "The above exception was the direct cause" in shown and "_failing_task" in shown
        assert str(ROOT) not in shown


# ------------------------------------------------------------------------ worker logs
SECRET = "s3cr3t-value-123"
URL = f"https://api.example.com/hook?page=2&api_token={SECRET}&Signature={SECRET}&access_token={SECRET}"


def format_both(record: logging.LogRecord) -> list[str]:
    from tenantq.core.logging import HumanFormatter, JsonFormatter

    return [JsonFormatter().format(record), HumanFormatter().format(record)]


class TestLogRedaction:
    def test_token_like_query_parameters_are_redacted_everywhere_in_a_line(self):
        try:
            raise RuntimeError(f"Client error '404 Not Found' for url '{URL}'")
        except RuntimeError:
            exc_info = sys.exc_info()
        record = logging.LogRecord(
            "httpx", logging.INFO, __file__, 1, 'HTTP Request: GET %s "HTTP/1.1 200 OK"', (URL,), exc_info
        )
        record.error = f"fetch of https://user:{SECRET}@example.com/x?password={SECRET} failed"
        for line in format_both(record):
            assert SECRET not in line, line
            assert "page=2" in line and "api_token=[redacted]" in line and "user:[redacted]@" in line

    def test_celery_success_line_carries_no_job_result(self):
        from celery.app.trace import LOG_SUCCESS

        args = {"name": "demo.echo", "id": "j-1", "runtime": 0.01, "return_value": {"card": SECRET}}
        record = logging.LogRecord("celery.app.trace", logging.INFO, __file__, 1, LOG_SUCCESS, (), None)
        record.args = args  # a dict, as Celery passes it (LogRecord would unwrap it otherwise)
        for line in format_both(record):
            assert SECRET not in line and "demo.echo[j-1] succeeded" in line, line

    @pytest.mark.e2e
    def test_a_real_worker_logs_the_success_without_the_result(self, api, platform_processes):
        key = ApiKeyFactory()
        job = api.post(
            "/v1/jobs", json={"task": "demo.echo", "args": {"card": SECRET}}, headers=auth(key)
        ).json()

        def success_line() -> str | None:
            lines = [ln for ln in platform_processes.log("worker").splitlines() if job["id"] in ln]
            done = [ln for ln in lines if "succeeded in" in ln]
            return "\n".join(lines) if done else None

        lines = wait_until(success_line, timeout=90, interval=0.3, message="Celery's success line")
        assert "[result not logged]" in lines and SECRET not in lines, lines
        assert api.get(f"/v1/jobs/{job['id']}", headers=auth(key)).json()["result"] == {"card": SECRET}


# -------------------------------------------------------------------------- file modes
class TestFileModes:
    def test_the_secret_and_its_dir_are_private_even_if_they_were_not(self, tmp_path):
        data_dir = tmp_path / "data"
        old = os.umask(0o022)
        try:
            embedded_secret(data_dir)
            assert mode(data_dir) == 0o700 and mode(data_dir / SECRET_FILE_NAME) == 0o600
            data_dir.chmod(0o755)
            (data_dir / SECRET_FILE_NAME).chmod(0o644)
            embedded_secret(data_dir)
        finally:
            os.umask(old)
        assert mode(data_dir) == 0o700 and mode(data_dir / SECRET_FILE_NAME) == 0o600

    @pytest.mark.e2e
    def test_up_keeps_the_data_dir_database_and_aof_private(self):
        from tests.e2e.test_up import Up, assert_nothing_left, cli, run_job

        # Short, like the e2e tests' workdir: the Redis socket lives inside it.
        workdir = Path(tempfile.mkdtemp(prefix=f"tq-up-{uuid.uuid4().hex[:12]}-"))
        data_dir = workdir / ".tenantq"
        data_dir.mkdir()
        data_dir.chmod(0o755)  # as an older release left it
        (data_dir / "stray.log").write_text("x")
        (data_dir / "stray.log").chmod(0o644)
        up = Up(workdir)
        try:
            up.wait_banner()
            cli(["tenant", "create", "acme", "--json"], workdir, up.env)
            key = cli(["key", "create", "acme", "--json"], workdir, up.env)
            run_job(up, key["key"])
            files = [p for p in data_dir.rglob("*") if p.is_file() and not p.is_symlink()]
            names = {p.name for p in files}
            assert "tenantq.db" in names and SECRET_FILE_NAME in names, names
            assert any(".aof" in n for n in names), names
            assert mode(data_dir) == 0o700
            loose = {str(p.relative_to(data_dir)): oct(mode(p)) for p in files if mode(p) & 0o077}
            assert not loose, loose
            assert up.finish() == 0
            assert_nothing_left(up.mark)
        finally:
            up.cleanup()
            shutil.rmtree(workdir, ignore_errors=True)
