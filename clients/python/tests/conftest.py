"""The SDK's tests run against a real ``tenantq up`` (API, dispatcher, worker, beat; SQLite and an
embedded Redis in a temp dir), started once for the session on a free port, with a tenant on the pro
plan and an API key made by the operator CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from tenantq_client import Client

ROOT = Path(__file__).resolve().parents[3]  # the repository: the tenantq code the server runs
START_TIMEOUT = 240  # a first start on a loaded 2-core machine takes tens of seconds


@dataclass
class Server:
    url: str
    key: str
    env: dict[str, str]
    cwd: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(args: list[str], cwd: Path, env: dict[str, str]) -> dict:
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


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    cwd = Path(tempfile.mkdtemp(prefix="tq-sdk-"))
    # Nothing of the repository's own test environment: this server makes its own data dir.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTQ_")}
    env.update({"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)})
    # The webhook test receives deliveries on 127.0.0.1, which the outbound policy refuses by default.
    env["TENANTQ_HTTP_ALLOW_PRIVATE"] = "1"
    port = _free_port()
    log = open(cwd / "up.log", "wb")  # noqa: SIM115 - the child keeps writing to it
    proc = subprocess.Popen(
        [sys.executable, "-m", "tenantq.cli", "up", "--port", str(port)],
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "tenantq is up" not in (cwd / "up.log").read_text(errors="replace"):
            assert proc.poll() is None, (cwd / "up.log").read_text(errors="replace")
            assert time.monotonic() < deadline, "tenantq up did not start"
            time.sleep(0.2)
        _cli(["tenant", "create", "sdk", "--plan", "pro", "--json"], cwd, env)
        key = _cli(["key", "create", "sdk", "--json"], cwd, env)["key"]
        yield Server(url=f"http://127.0.0.1:{port}", key=key, env=env, cwd=cwd)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        shutil.rmtree(cwd, ignore_errors=True)


@pytest.fixture
def client(server: Server):
    with Client(api_key=server.key, base_url=server.url) as c:
        yield c


def raw(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}, timeout=30)
