"""Event metrics: what every process counts where it happens, for Prometheus.

Jobs submitted, started, succeeded, failed, retried; wait and run time; rejections; HTTP requests. They
are counted where they happen: the API process for submissions and rejections, the Celery pool child for
the life of an attempt. prometheus-client's multiprocess mode writes them to mmap files in
``PROMETHEUS_MULTIPROC_DIR``; ``GET /metrics`` (``tenantq.ops.metrics``) sums every process's files.
Several uvicorn workers and Celery pool children on one host share that directory. Without the variable,
tenantq uses ``<data dir>/prometheus`` (so ``tenantq up``, its API and its worker agree), chosen at the
first metric written, after settings are known. On several hosts each host (pod) has its own directory
and is scraped on its own: the API on ``/metrics``, a worker on ``TENANTQ_WORKER_METRICS_PORT``.

This module is in the core because the areas count their own events (the job service a submission, the
error handler a rejection, the worker an attempt); reading the cluster's state for a scrape is the
ops layer's part.

Tenant labels are bounded by ``TENANTQ_METRICS_TENANT_LABELS``: ``all`` (one series per tenant),
``none`` (every tenant is ``tenant="all"``), or ``top:N`` (the N tenants with the most submissions keep
their id, the rest are aggregated as ``tenant="other"``).

Redis keys written here and in ``tenantq.worker.metrics`` (all advisory, safe to delete):
- ``tq:metrics:volume``      ZSET tenant id -> jobs submitted (ranks tenants for ``top:N`` labels).
- ``tq:metrics:running``     HASH job id -> JSON ``{"tenant", "task", "since"}`` while an attempt runs.
- ``tq:workers``             ZSET worker hostname -> unix time of its last heartbeat.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server, values
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector

from tenantq.core import keys
from tenantq.core.redis import get_redis
from tenantq.core.settings import get_settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

VOLUME_KEY = keys.METRICS_VOLUME
RUNNING_KEY = keys.METRICS_RUNNING
WORKERS_KEY = keys.WORKERS

# How often a worker refreshes its heartbeat in ``tq:workers``.
WORKER_HEARTBEAT_INTERVAL_S = 10.0

# Wait time spans milliseconds (idle system) to hours (a backlog); run time the same.
TIME_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

OTHER_TENANT = "other"
ALL_TENANTS = "all"


# -- multiprocess directory ----------------------------------------------------------------------------

_setup_lock = threading.Lock()
_metrics: _Metrics | None = None


def multiproc_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def default_multiproc_dir() -> Path:
    return get_settings().resolved_data_dir / "prometheus"


def ensure_multiproc_dir(default: Path | None = None) -> Path:
    """Make sure this process (and the children it starts) write metrics to a shared directory.

    Keeps an existing ``PROMETHEUS_MULTIPROC_DIR``; otherwise sets it to ``default`` or
    ``<data dir>/prometheus``. Must run before the first metric is created in this process.
    """
    path = multiproc_dir()
    if path is None:
        path = default or default_multiproc_dir()
        os.environ[MULTIPROC_ENV] = str(path)
    path.mkdir(parents=True, exist_ok=True)
    # prometheus-client picks its value class (in-memory or mmap) when it is first imported; if it was
    # imported before the directory was known, pick again now, before any metric child exists.
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.get_value_class()
    return path


def reset_multiproc_dir(path: Path) -> None:
    """Empty a metrics directory that belongs to processes about to be (re)started (``tenantq up``)."""
    if path.is_dir():
        for f in path.glob("*.db"):
            f.unlink(missing_ok=True)
    path.mkdir(parents=True, exist_ok=True)


# -- tenant labels ----------------------------------------------------------------------------------------

_MODE_RE = re.compile(r"^(all|none|top:[1-9][0-9]*)$")


def parse_label_mode(value: str) -> tuple[str, int]:
    value = (value or "all").strip().lower()
    if not _MODE_RE.match(value):
        raise ValueError(f"TENANTQ_METRICS_TENANT_LABELS must be 'all', 'none' or 'top:N', not {value!r}")
    if value.startswith("top:"):
        return "top", int(value[4:])
    return value, 0


class TenantLabeler:
    """Maps a tenant id to its metric label under the configured cardinality bound.

    ``top:N`` ranks tenants by submissions in Redis (shared by every process, so all processes agree)
    and re-reads the ranking at most every ``refresh_s`` seconds: a tenant that grows into the top N
    starts its own series from then on; sums over ``tenant`` stay exact either way.
    """

    def __init__(self, mode: str | None = None, refresh_s: float = 30.0) -> None:
        self.mode, self.limit = parse_label_mode(
            mode if mode is not None else get_settings().metrics_tenant_labels
        )
        self.refresh_s = refresh_s
        self._top: frozenset[str] = frozenset()
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()

    def _top_tenants(self) -> frozenset[str]:
        now = time.monotonic()
        if now - self._loaded_at >= self.refresh_s:
            with self._lock:
                if now - self._loaded_at >= self.refresh_s:
                    try:
                        # The client decodes replies (core.redis); redis-py types members as bytes | str.
                        top = cast(list[str], get_redis().zrevrange(VOLUME_KEY, 0, self.limit - 1))
                        self._top = frozenset(top)
                    except Exception:
                        # Metrics never fail the caller: keep the old ranking until the next refresh.
                        logging.getLogger("tenantq.metrics").debug("tenant ranking not read", exc_info=True)
                    self._loaded_at = now
        return self._top

    def label(self, tenant_id: str | None) -> str:
        if self.mode == "none":
            return ALL_TENANTS
        if not tenant_id:
            return "unknown"
        if self.mode == "all":
            return tenant_id
        return tenant_id if tenant_id in self._top_tenants() else OTHER_TENANT

    def record_submission(self, client: Any, tenant_id: str, count: int = 1) -> None:
        if self.mode == "top":
            client.zincrby(VOLUME_KEY, count, tenant_id)


_labeler: TenantLabeler | None = None


def labeler() -> TenantLabeler:
    global _labeler
    if _labeler is None:
        _labeler = TenantLabeler()
    return _labeler


def reset_labeler() -> None:
    global _labeler
    _labeler = None


# -- event metrics ----------------------------------------------------------------------------------------


class _Metrics:
    def __init__(self) -> None:
        job = ["tenant", "task"]
        self.submitted = Counter("tenantq_jobs_submitted", "Jobs accepted by the API.", job)
        self.started = Counter("tenantq_jobs_started", "Attempts started by a worker.", job)
        self.succeeded = Counter("tenantq_jobs_succeeded", "Attempts that succeeded.", job)
        self.failed = Counter("tenantq_jobs_failed", "Attempts that failed for good (no retry left).", job)
        self.retried = Counter("tenantq_jobs_retried", "Attempts that failed and were scheduled again.", job)
        self.wait = Histogram(
            "tenantq_job_wait_seconds",
            "First attempt: start time minus the time the job became runnable.",
            job,
            buckets=TIME_BUCKETS,
        )
        self.run = Histogram(
            "tenantq_job_run_seconds", "Wall time of one attempt in the worker.", job, buckets=TIME_BUCKETS
        )
        self.rejections = Counter(
            "tenantq_rejections",
            "Requests refused by a rate limit (429), a quota (402) or load shedding (503), by error code.",
            ["tenant", "code", "status"],
        )
        self.http_requests = Counter(
            "tenantq_http_requests", "HTTP requests by route and status.", ["method", "route", "status"]
        )
        self.http_seconds = Histogram(
            "tenantq_http_request_seconds",
            "HTTP request duration by route.",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
        )


def get_metrics() -> _Metrics:
    """The process's metric objects, created on first use (after the multiprocess directory is set)."""
    global _metrics
    if _metrics is None:
        with _setup_lock:
            if _metrics is None:
                ensure_multiproc_dir()
                _metrics = _Metrics()
    return _metrics


# Event names exported (sample names add _total / _bucket / _sum / _count).
EVENT_METRICS = (
    "tenantq_jobs_submitted",
    "tenantq_jobs_started",
    "tenantq_jobs_succeeded",
    "tenantq_jobs_failed",
    "tenantq_jobs_retried",
    "tenantq_job_wait_seconds",
    "tenantq_job_run_seconds",
    "tenantq_rejections",
    "tenantq_http_requests",
    "tenantq_http_request_seconds",
)


def _safely(fn: Callable[..., object], *args: Any) -> None:
    # A metrics failure (full disk, Redis blip) must never fail a submission or an attempt.
    try:
        fn(*args)
    except Exception:
        logging.getLogger("tenantq.metrics").debug("metrics update failed", exc_info=True)


def job_submitted(tenant_id: str, task: str, *, client: Any = None, count: int = 1) -> None:
    def _do() -> None:
        lab = labeler()
        if client is not None:
            lab.record_submission(client, tenant_id, count)
        get_metrics().submitted.labels(lab.label(tenant_id), task).inc(count)

    _safely(_do)


def rejection(tenant_id: str | None, code: str, status: int) -> None:
    _safely(
        lambda: (
            get_metrics()
            .rejections.labels(labeler().label(tenant_id) if tenant_id else "unknown", code, str(status))
            .inc()
        )
    )


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    def _do() -> None:
        m = get_metrics()
        m.http_requests.labels(method, route, str(status)).inc()
        m.http_seconds.labels(method, route).observe(seconds)

    _safely(_do)


# -- exposition ---------------------------------------------------------------------------------------------


@contextmanager
def _dir_lock(path: Path, *, exclusive: bool) -> Iterator[None]:
    """Scrapes read the directory under a shared lock; compaction rewrites it under an exclusive one."""
    with open(path / ".lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def compact_dead_files(path: Path | None = None) -> int:
    """Fold the files of exited processes into one archive file per metric type; returns files folded.

    Every process writes its own ``<type>_<pid>.db``. Celery recycles pool processes
    (``worker_max_tasks_per_child``), so without this the directory, and the work of every scrape,
    would grow for as long as a worker runs. Counters and histograms of a dead process are final, so
    adding them into ``<type>_archive.db`` keeps every sum the same. (tenantq exports no multiprocess
    gauges; their files are left alone.)
    """
    path = path or ensure_multiproc_dir()
    folded = 0
    with _dir_lock(path, exclusive=True):
        for f in sorted(path.glob("*.db")):
            typ, _, rest = f.name[:-3].partition("_")
            if typ not in ("counter", "histogram", "summary") or not rest.isdigit() or _pid_alive(int(rest)):
                continue
            archive = MmapedDict(str(path / f"{typ}_archive.db"))
            try:
                for key, value, _ts, _pos in MmapedDict.read_all_values_from_file(str(f)):
                    current, _ = archive.read_value(key)
                    archive.write_value(key, current + value, 0.0)
            finally:
                archive.close()
            f.unlink()
            folded += 1
    return folded


class LockedMultiProcessCollector:
    """prometheus-client's MultiProcessCollector, reading under the directory's shared lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._inner = MultiProcessCollector(None, path=str(path))

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        with _dir_lock(self.path, exclusive=False):
            return list(self._inner.collect())


def start_worker_metrics_server(port: int, addr: str = "0.0.0.0") -> None:
    """Serve this host's event metrics (no cluster state) on ``port``: how a worker machine is scraped.
    Every interface by default, because the scraper is outside the pod."""
    registry = CollectorRegistry()
    registry.register(LockedMultiProcessCollector(ensure_multiproc_dir()))
    start_http_server(port, addr=addr, registry=registry)
