"""`tenantq jobs submit|get|wait|list`, the tenant CLI on the SDK, against the same real server."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import Server


def jobs_cli(server: Server, *args: str, key: str | None = "env") -> subprocess.CompletedProcess:
    env = dict(server.env)
    if key == "env":
        env["TENANTQ_API_KEY"] = server.key
    return subprocess.run(
        [sys.executable, "-m", "tenantq.cli", "jobs", *args, "--url", server.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_submit_get_wait_and_list_as_json(server: Server):
    out = jobs_cli(server, "submit", "demo.steps", "--args", '{"steps": 2, "seconds": 0.2}', "--json")
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    other = json.loads(jobs_cli(server, "submit", "demo.echo", "--args", '{"x": 1}', "--json").stdout)
    waited = jobs_cli(server, "wait", job["id"], other["id"], "--json")
    assert waited.returncode == 0, waited.stderr
    items = json.loads(waited.stdout)["items"]
    assert [(j["id"], j["status"]) for j in items] == [(job["id"], "succeeded"), (other["id"], "succeeded")]
    got = json.loads(jobs_cli(server, "get", job["id"], "--json").stdout)
    assert got["progress"]["message"] == "step 2 of 2"
    listed = json.loads(jobs_cli(server, "list", "--limit", "2", "--json").stdout)["items"]
    assert [j["id"] for j in listed] == [other["id"], job["id"]]  # newest first
    assert len(json.loads(jobs_cli(server, "list", "--limit", "1", "--json").stdout)["items"]) == 1


def test_text_output_and_exit_codes(server: Server):
    out = jobs_cli(server, "submit", "demo.fail", "--wait")
    assert out.returncode == 1, out.stdout + out.stderr
    assert " failed " in out.stdout
    job_id = out.stdout.split()[0]
    shown = jobs_cli(server, "get", job_id)
    assert shown.returncode == 0 and job_id in shown.stdout
    late = jobs_cli(server, "submit", "demo.echo", "--countdown", "3600", "--json")
    late_id = json.loads(late.stdout)["id"]
    timed_out = jobs_cli(server, "wait", late_id, "--timeout", "1")
    assert timed_out.returncode == 3 and "scheduled" in timed_out.stdout


def test_errors_are_one_line_or_one_json_error(server: Server):
    missing = jobs_cli(server, "get", "00000000-0000-0000-0000-000000000000", "--json")
    assert missing.returncode == 1
    assert json.loads(missing.stdout)["error"]["code"] == "not_found"
    unknown = jobs_cli(server, "submit", "no.such.task")
    assert unknown.returncode == 1 and unknown.stderr.startswith("error: ")
    no_key = jobs_cli(server, "list", key=None)
    assert no_key.returncode == 2 and "TENANTQ_API_KEY" in no_key.stderr
    bad_args = jobs_cli(server, "submit", "demo.echo", "--args", "[1]")
    assert bad_args.returncode == 2
