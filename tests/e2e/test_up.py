"""`tenantq up` on embedded defaults: SQLite + embedded Redis, real HTTP, clean shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from tests.conftest import ROOT, free_port, wait_until

pytestmark = pytest.mark.e2e


def cli(args, cwd, env):
    out = subprocess.run(
        [sys.executable, "-m", "tenantq.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    return json.loads(out.stdout)


def test_up_runs_a_job_and_stops_cleanly(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTQ_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(ROOT)
    port = free_port()
    with open(tmp_path / "up.log", "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "tenantq.cli", "up", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"

        def ready():
            try:
                return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=90, interval=0.3, message="tenantq up to be ready")
        tenant = cli(["tenant", "create", "acme", "--json"], tmp_path, env)
        key = cli(["key", "create", "acme", "--json"], tmp_path, env)
        assert key["key"].startswith("tq_live_") and tenant["name"] == "acme"
        assert (tmp_path / ".tenantq" / "tenantq.db").exists()
        headers = {"Authorization": f"Bearer {key['key']}"}
        job = httpx.post(
            f"{base}/v1/jobs", json={"task": "demo.echo", "args": {"hi": 1}}, headers=headers
        ).json()

        def finished():
            body = httpx.get(f"{base}/v1/jobs/{job['id']}", headers=headers).json()
            return body if body["status"] == "succeeded" else None

        done = wait_until(finished, timeout=60, interval=0.2, message="job to succeed")
        assert done["result"] == {"hi": 1}
        descendants = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in descendants)
        assert "redis-server" in names and "worker" in names and "beat" in names and "dispatcher" in names
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    time.sleep(0.5)
    left = [p for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert left == [], f"processes left behind: {[p.cmdline() for p in left]}"
    assert proc.returncode == 0
    output = (tmp_path / "up.log").read_text()
    assert "all processes stopped" in output
