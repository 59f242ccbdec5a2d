"""`tenantq up` on embedded defaults: SQLite + embedded Redis, real HTTP, real signals (in the RabbitMQ
pass with TENANTQ_BROKER_URL set: the execution queues on RabbitMQ, the rest embedded).

Every way `up` ends must leave no process behind. Each test marks the environment of the `up` it starts
(every child inherits it), so "nothing left" is checked over every process on the machine, including
ones started after the test last looked.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.brokers import ON_RABBITMQ, private_broker
from tests.conftest import ROOT, free_port, wait_until

pytestmark = pytest.mark.e2e

MARK = "TENANTQ_TEST_UP_MARK"
# A first start on a loaded 2-core machine takes tens of seconds.
START_TIMEOUT = 240
STOP_TIMEOUT = 90


def up_env(mark: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTQ_")}
    if ON_RABBITMQ:
        # Embedded SQLite and Redis, the execution queues on RabbitMQ (a vhost of this `up`'s own).
        env.update(private_broker("up"))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(ROOT)
    env[MARK] = mark
    return env


def marked(mark: str) -> list[psutil.Process]:
    """Processes that inherited the mark, and the embedded Redis (its process title overwrites the memory
    /proc shows as its environment, but names the socket under the marked temp dir)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            if p.environ().get(MARK) == mark or mark in " ".join(p.cmdline()):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def assert_nothing_left(mark: str) -> None:
    # The supervisor has exited: its children are gone already, or being reaped by init this instant.
    try:
        wait_until(lambda: not marked(mark), timeout=30, interval=0.2, message="every process to exit")
    except AssertionError:
        left = [" ".join(p.cmdline()) for p in marked(mark)]
        for p in marked(mark):
            p.kill()
        raise AssertionError(f"processes left behind: {left}") from None


def cli(args: list[str], cwd: Path, env: dict[str, str]) -> dict:
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


class Up:
    """One `tenantq up` subprocess in a temp dir, on a free port, its output in files."""

    def __init__(self, cwd: Path, stdout: int | None = None, extra: tuple[str, ...] = ()) -> None:
        self.cwd = cwd
        self.mark = cwd.name
        self.env = up_env(self.mark)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = cwd / "up.log"
        self.err_path = cwd / "up.err"
        with open(self.log_path, "wb") as log, open(self.err_path, "wb") as err:  # the child keeps its own
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tenantq.cli", "up", "--port", str(self.port), *extra],
                cwd=cwd,
                env=self.env,
                stdout=stdout if stdout is not None else log,
                stderr=err,
            )

    @property
    def output(self) -> str:
        return self.log_path.read_text()

    @property
    def errors(self) -> str:
        return self.err_path.read_text()

    def wait_banner(self) -> None:
        wait_until(
            lambda: "tenantq is up" in self.output or self.proc.poll() is not None,
            timeout=START_TIMEOUT,
            interval=0.2,
            message="the 'tenantq is up' banner",
        )
        assert self.proc.poll() is None, self.output + self.errors

    def child_pid(self, role: str) -> int:
        for p in psutil.Process(self.proc.pid).children():
            cmd = p.cmdline()
            if "tenantq.cli" in cmd and role in cmd:
                return p.pid
        raise AssertionError(f"no {role} child")

    def finish(self, sig: signal.Signals = signal.SIGINT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for p in marked(self.mark):
            p.kill()


@pytest.fixture
def workdir() -> Iterator[Path]:
    """The directory `up` runs in; its name is the mark of every process that `up` starts. Short, so the
    Redis socket stays inside it (and in Redis's command line)."""
    path = Path(tempfile.mkdtemp(prefix=f"tq-up-{uuid.uuid4().hex[:12]}-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def readyz(base: str) -> int:
    try:
        return httpx.get(f"{base}/readyz", timeout=5).status_code
    except httpx.HTTPError:
        return 0


def run_job(up: Up, key: str) -> dict:
    headers = {"Authorization": f"Bearer {key}"}
    job = httpx.post(
        f"{up.base}/v1/jobs", json={"task": "demo.echo", "args": {"hi": 1}}, headers=headers, timeout=10
    ).json()

    def finished():
        body = httpx.get(f"{up.base}/v1/jobs/{job['id']}", headers=headers, timeout=10).json()
        return body if body["status"] == "succeeded" else None

    return wait_until(finished, timeout=90, interval=0.2, message="job to succeed")


def test_up_runs_a_job_right_after_the_banner_and_stops_cleanly(workdir):
    up = Up(workdir)
    try:
        up.wait_banner()
        # The banner means ready: the Quickstart's first request works at once, no retry.
        assert readyz(up.base) == 200
        tenant = cli(["tenant", "create", "acme", "--json"], workdir, up.env)
        key = cli(["key", "create", "acme", "--json"], workdir, up.env)
        assert key["key"].startswith("tq_live_") and tenant["name"] == "acme"
        assert (workdir / ".tenantq" / "tenantq.db").exists()
        assert run_job(up, key["key"])["result"] == {"hi": 1}
        names = " ".join(" ".join(p.cmdline()) for p in marked(up.mark))
        assert "redis-server" in names and "worker" in names and "beat" in names and "dispatcher" in names
        assert up.finish(signal.SIGINT) == 0
        assert_nothing_left(up.mark)
        assert "all processes stopped (SIGINT)" in up.output
    finally:
        up.cleanup()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_stops_every_process(workdir, sig):
    """SIGHUP is what a closing terminal sends: it used to orphan every child."""
    up = Up(workdir)
    try:
        up.wait_banner()
        assert len(marked(up.mark)) >= 8  # up, anchor, redis, api, dispatcher, worker (+ pool), beat, flusher
        assert up.finish(sig) == 0
        assert_nothing_left(up.mark)
        assert f"all processes stopped ({sig.name})" in up.output
        assert not (workdir / ".tenantq" / "redis.sock").exists()
    finally:
        up.cleanup()


def test_a_closed_stdout_stops_every_process(workdir):
    """`tenantq up | head -1`: the reader goes away while `up` is starting."""
    up = Up(workdir, stdout=subprocess.PIPE)
    try:
        assert up.proc.stdout is not None
        assert up.proc.stdout.readline().strip()
        up.proc.stdout.close()
        assert up.proc.wait(STOP_TIMEOUT) == 1
        assert_nothing_left(up.mark)
        assert "stdout was closed" in up.errors
        assert "Traceback" not in up.errors
    finally:
        up.cleanup()


def test_a_second_up_is_refused_a_stopped_worker_restarts_and_sigkill_leaves_nothing(workdir):
    up = Up(workdir)
    try:
        up.wait_banner()
        sock = workdir / ".tenantq" / "redis.sock"
        assert sock.exists()

        second = subprocess.run(
            [sys.executable, "-m", "tenantq.cli", "up", "--port", str(free_port())],
            cwd=workdir,
            env=up_env(up.mark),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert second.returncode == 1
        assert f"already running on {workdir / '.tenantq'} (pid {up.proc.pid})" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr
        assert "started" not in second.stdout
        # The first one's Redis socket is untouched and the platform still answers.
        assert sock.exists() and readyz(up.base) == 200

        # A worker that stops (here SIGTERM; `celery control shutdown` alike) is restarted; the rest stays up.
        worker = up.child_pid("worker")
        os.kill(worker, signal.SIGTERM)
        wait_until(
            lambda: "restarted worker (pid" in up.output, timeout=120, interval=0.2, message="worker restart"
        )
        assert f"worker (pid {worker}) exited with code 0; restarting it in 1s" in up.output
        assert up.proc.poll() is None and readyz(up.base) == 200
        assert up.child_pid("worker") != worker
        cli(["tenant", "create", "acme", "--json"], workdir, up.env)
        key = cli(["key", "create", "acme", "--json"], workdir, up.env)["key"]
        assert run_job(up, key)["result"] == {"hi": 1}

        # Even SIGKILL, which the supervisor cannot handle, leaves nothing: the group's anchor stops it.
        up.proc.kill()
        up.proc.wait(STOP_TIMEOUT)
        wait_until(lambda: not marked(up.mark), timeout=60, interval=0.2, message="the anchor's sweep")
    finally:
        up.cleanup()


def test_a_busy_port_is_one_clear_line_and_starts_nothing(workdir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        mark = workdir.name
        out = subprocess.run(
            [sys.executable, "-m", "tenantq.cli", "up", "--port", str(port)],
            cwd=workdir,
            env=up_env(mark),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert out.returncode == 1
    expected = (
        f"tenantq up: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(another program uses that port? choose one with --port)"
    )
    assert out.stderr.strip().splitlines() == [expected]
    assert "tenantq is up" not in out.stdout and "started" not in out.stdout
    assert_nothing_left(mark)


def test_an_error_while_starting_stops_what_was_started(workdir):
    """Migrations fail (PostgreSQL unreachable) after the embedded Redis started: Redis stops too."""
    mark = workdir.name
    env = up_env(mark)
    env["TENANTQ_DATABASE_URL"] = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
    # Outside embedded defaults a server secret is required before anything starts.
    env["TENANTQ_SECRET_KEY"] = "e2e-" + "0123456789abcdef" * 2
    try:
        out = subprocess.run(
            [sys.executable, "-m", "tenantq.cli", "up", "--port", str(free_port())],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert out.returncode == 1
        assert "started redis" in out.stdout and "all processes stopped" in out.stdout
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tenantq up: OperationalError"), out.stderr
        assert_nothing_left(mark)
    finally:
        for p in marked(mark):
            p.kill()
