"""Prometheus metrics: job counters and histograms from every process, cluster state from Redis.

Two kinds of figures, two sources:

- **Events** (jobs submitted, started, succeeded, failed, retried; wait and run time; rejections; HTTP
  requests) are counted where they happen: the API process for submissions and rejections, the Celery
  pool child for the life of an attempt. prometheus-client's multiprocess mode writes them to mmap files
  in ``PROMETHEUS_MULTIPROC_DIR``; ``GET /metrics`` sums every process's files. Several uvicorn workers
  and Celery pool children on one host share that directory. Without the variable, tenantq uses
  ``<data dir>/prometheus`` (so ``tenantq up``, its API and its worker agree), chosen at the first
  metric written, after settings are known. On several hosts each host (pod) has its own directory
  and is scraped on its own: the API on ``/metrics``, a worker on ``TENANTQ_WORKER_METRICS_PORT``.
- **State** (queue depth, running jobs, dispatcher heartbeat, live workers, usage backlog) is read
  from Redis at scrape time by ``ClusterStateCollector``, so it is right whichever process answers and
  needs no bookkeeping that a crash could leave stale. Only the API's ``/metrics`` exports it (a worker's
  endpoint does not, so the figures are never double counted).

Tenant labels are bounded by ``TENANTQ_METRICS_TENANT_LABELS``: ``all`` (one series per tenant),
``none`` (every tenant is ``tenant="all"``), or ``top:N`` (the N tenants with the most submissions keep
their id, the rest are aggregated as ``tenant="other"``).

Redis keys written here and in ``tenantq.worker.metrics`` (all advisory, safe to delete):
- ``tq:metrics:volume``      ZSET tenant id -> jobs submitted (ranks tenants for ``top:N`` labels).
- ``tq:metrics:running``     HASH job id -> JSON ``{"tenant", "task", "since"}`` while an attempt runs.
- ``tq:workers``             ZSET worker hostname -> unix time of its last heartbeat.
- ``tq:dispatcher:heartbeat`` STRING unix time of the dispatcher's last completed pass (it writes it).
Read only: ``tq:active``, ``tq:q:{tenant}``, ``tq:delayed``, ``tq:paused``, the Celery execution queue
lists, and the usage stream ``tq:usage`` when it exists.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response

from tenantq.core import keys
from tenantq.core.errors import Unauthorized
from tenantq.core.settings import get_settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

VOLUME_KEY = keys.METRICS_VOLUME
RUNNING_KEY = keys.METRICS_RUNNING
WORKERS_KEY = keys.WORKERS
DISPATCHER_HEARTBEAT_KEY = keys.DISPATCHER_HEARTBEAT
USAGE_STREAM = keys.USAGE_STREAM

# A worker that has not refreshed its heartbeat for this long is not counted as live.
WORKER_HEARTBEAT_INTERVAL_S = 10.0
WORKER_STALE_AFTER_S = 30.0
# The dispatcher writes its heartbeat every pass (at most once a second); older than this it is down.
DISPATCHER_STALE_AFTER_S = 15.0
# A running entry older than the broker's visibility timeout belongs to an attempt that was lost
# (its worker was killed before postrun): the message has been redelivered, so ignore the entry.
RUNNING_STALE_AFTER_S = 3700.0

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
    from prometheus_client import values

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
                        from tenantq.core.redis import get_redis

                        self._top = frozenset(get_redis().zrevrange(VOLUME_KEY, 0, self.limit - 1))
                    except Exception:  # noqa: BLE001  (metrics never fail the caller; keep the old ranking)
                        pass
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
        from prometheus_client import Counter, Histogram

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
            "Requests refused by a rate limit (429) or a quota (402), by error code.",
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


def _safely(fn, *args: Any) -> None:
    # A metrics failure (full disk, Redis blip) must never fail a submission or an attempt.
    try:
        fn(*args)
    except Exception:  # noqa: BLE001
        import logging

        logging.getLogger("tenantq.metrics").debug("metrics update failed", exc_info=True)


def job_submitted(tenant_id: str, task: str, *, client: Any = None) -> None:
    def _do() -> None:
        lab = labeler()
        if client is not None:
            lab.record_submission(client, tenant_id)
        get_metrics().submitted.labels(lab.label(tenant_id), task).inc()

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


# -- cluster state read from Redis at scrape time ---------------------------------------------------------


def _stream_id_time(entry_id: str) -> float:
    return int(str(entry_id).split("-", 1)[0]) / 1000.0


def usage_backlog(client: Any, now: float | None = None) -> tuple[int, float]:
    """(unflushed events, age in seconds of the oldest) of the usage stream; (0, 0) if absent.

    Without consumer groups every entry is unflushed (the flusher deletes what it wrote). With groups,
    the entries not yet delivered plus those delivered but not acknowledged are unflushed.
    """
    now = time.time() if now is None else now
    if not client.exists(USAGE_STREAM):
        return 0, 0.0
    groups = client.xinfo_groups(USAGE_STREAM)
    if not groups:
        length = int(client.xlen(USAGE_STREAM))
        if length == 0:
            return 0, 0.0
        first = client.xrange(USAGE_STREAM, count=1)
        return length, max(0.0, now - _stream_id_time(first[0][0])) if first else 0.0
    backlog, oldest = 0, None
    for group in groups:
        name = group["name"]
        pending = client.xpending(USAGE_STREAM, name)
        count = int(pending.get("pending") or 0)
        if count and pending.get("min"):
            t = _stream_id_time(pending["min"])
            oldest = t if oldest is None else min(oldest, t)
        last = group.get("last-delivered-id") or "0-0"
        undelivered = client.xrange(USAGE_STREAM, min=f"({last}", count=1)
        if undelivered:
            t = _stream_id_time(undelivered[0][0])
            oldest = t if oldest is None else min(oldest, t)
            lag = group.get("lag")
            count += (
                int(lag)
                if lag is not None
                else len(client.xrange(USAGE_STREAM, min=f"({last}", count=10_000))
            )
        backlog = max(backlog, count)
    return backlog, (max(0.0, now - oldest) if oldest is not None else 0.0)


class ClusterStateCollector:
    """Reads queue, worker, dispatcher and usage state from Redis at scrape time."""

    def __init__(self, client: Any = None, tenant_labeler: TenantLabeler | None = None) -> None:
        self._client = client
        self._labeler = tenant_labeler

    def describe(self) -> Iterable[Any]:
        return []  # collected on demand only; tells the registry not to call collect() at register time

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from tenantq.core.redis import get_redis

        client = self._client or get_redis()
        lab = self._labeler or labeler()
        up = GaugeMetricFamily("tenantq_redis_up", "1 if the metrics scrape could read Redis.")
        try:
            families = list(self._collect(client, lab))
        except Exception:  # noqa: BLE001  (a scrape reports Redis down instead of failing)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _collect(self, client: Any, lab: TenantLabeler) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from tenantq.platform.dispatch.dispatcher import exec_queue_depth

        settings = get_settings()
        now = time.time()

        tenants = sorted(client.smembers(keys.ACTIVE))
        pipe = client.pipeline(transaction=False)
        for t in tenants:
            pipe.zcard(keys.queue_key(t))
        depths = pipe.execute() if tenants else []
        by_label: dict[str, int] = defaultdict(int)
        for tenant, depth in zip(tenants, depths, strict=True):
            by_label[lab.label(tenant)] += int(depth)
        depth_family = GaugeMetricFamily(
            "tenantq_queue_depth",
            "Jobs waiting in a tenant's own queue (not yet released to workers).",
            labels=["tenant"],
        )
        for label, value in sorted(by_label.items()):
            depth_family.add_metric([label], value)
        yield depth_family

        total = GaugeMetricFamily("tenantq_queue_depth_total", "Jobs waiting in all tenant queues.")
        total.add_metric([], sum(int(d) for d in depths))
        yield total

        g = GaugeMetricFamily("tenantq_scheduled_jobs", "Jobs waiting for their countdown/eta.")
        g.add_metric([], int(client.zcard(keys.DELAYED)))
        yield g

        g = GaugeMetricFamily(
            "tenantq_exec_queue_depth",
            "Messages released to the Celery execution queue and not yet taken by a worker.",
            labels=["queue"],
        )
        g.add_metric([settings.exec_queue], exec_queue_depth(client, settings.exec_queue))
        yield g

        g = GaugeMetricFamily("tenantq_tenants_active", "Tenants with at least one queued job.")
        g.add_metric([], len(tenants))
        yield g
        g = GaugeMetricFamily(
            "tenantq_tenants_paused", "Tenants whose queue is paused (suspended or by the operator)."
        )
        g.add_metric([], int(client.scard(keys.PAUSED)))
        yield g

        running: dict[tuple[str, str], int] = defaultdict(int)
        for raw in client.hvals(RUNNING_KEY):
            try:
                entry = json.loads(raw)
            except (TypeError, ValueError):
                continue
            if now - float(entry.get("since", now)) > RUNNING_STALE_AFTER_S:
                continue
            running[(lab.label(entry.get("tenant")), str(entry.get("task", "unknown")))] += 1
        g = GaugeMetricFamily(
            "tenantq_jobs_running", "Attempts running on a worker now.", labels=["tenant", "task"]
        )
        for (tenant, task), value in sorted(running.items()):
            g.add_metric([tenant, task], value)
        yield g

        live = int(client.zcount(WORKERS_KEY, now - WORKER_STALE_AFTER_S, "+inf"))
        g = GaugeMetricFamily("tenantq_workers", "Celery workers whose heartbeat is fresh.")
        g.add_metric([], live)
        yield g

        beat = client.get(DISPATCHER_HEARTBEAT_KEY)
        beat_ts = float(beat) if beat else 0.0
        g = GaugeMetricFamily(
            "tenantq_dispatcher_heartbeat_timestamp_seconds",
            "Unix time of the dispatcher's last completed pass (0: never).",
        )
        g.add_metric([], beat_ts)
        yield g
        g = GaugeMetricFamily(
            "tenantq_dispatcher_up",
            f"1 if a dispatcher completed a pass in the last {DISPATCHER_STALE_AFTER_S:.0f}s.",
        )
        g.add_metric([], 1 if beat_ts and now - beat_ts <= DISPATCHER_STALE_AFTER_S else 0)
        yield g

        backlog, age = usage_backlog(client, now)
        g = GaugeMetricFamily(
            "tenantq_usage_backlog_events", "Usage events buffered in Redis, not yet in SQL."
        )
        g.add_metric([], backlog)
        yield g
        g = GaugeMetricFamily(
            "tenantq_usage_flush_lag_seconds",
            "Age of the oldest usage event not yet flushed to SQL (0 when none).",
        )
        g.add_metric([], age)
        yield g


STATE_METRICS = (
    "tenantq_redis_up",
    "tenantq_queue_depth",
    "tenantq_queue_depth_total",
    "tenantq_scheduled_jobs",
    "tenantq_exec_queue_depth",
    "tenantq_tenants_active",
    "tenantq_tenants_paused",
    "tenantq_jobs_running",
    "tenantq_workers",
    "tenantq_dispatcher_heartbeat_timestamp_seconds",
    "tenantq_dispatcher_up",
    "tenantq_usage_backlog_events",
    "tenantq_usage_flush_lag_seconds",
)


def exported_sample_names() -> set[str]:
    """Every sample name ``/metrics`` can export (for dashboards/alerts cross-checks)."""
    names = set(STATE_METRICS)
    for base in EVENT_METRICS:
        if base.endswith("_seconds"):
            names |= {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
        else:
            names.add(f"{base}_total")
    return names


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
    from prometheus_client.mmap_dict import MmapedDict

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


class _LockedMultiProcessCollector:
    """prometheus-client's MultiProcessCollector, reading under the directory's shared lock."""

    def __init__(self, path: Path) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self.path = path
        self._inner = MultiProcessCollector(None, path=str(path))

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        with _dir_lock(self.path, exclusive=False):
            return list(self._inner.collect())


def render(include_cluster_state: bool = True, path: Path | None = None) -> tuple[bytes, str]:
    """The exposition text: every process's event metrics (multiprocess files) + cluster state."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    path = path or ensure_multiproc_dir()
    registry = CollectorRegistry()
    registry.register(_LockedMultiProcessCollector(path))
    if include_cluster_state:
        registry.register(ClusterStateCollector())
    return generate_latest(registry), CONTENT_TYPE_LATEST


def start_worker_metrics_server(port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104  (scraped from outside the pod)
    """Serve this host's event metrics (no cluster state) on ``port``: how a worker machine is scraped."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(_LockedMultiProcessCollector(ensure_multiproc_dir()))
    start_http_server(port, addr=addr, registry=registry)


router = APIRouter(tags=["ops"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="Prometheus text exposition: job counters and histograms per tenant and task type from "
    "every API and worker process on this host, plus queue depth, running jobs, workers, dispatcher "
    "heartbeat and usage backlog read from Redis. When TENANTQ_METRICS_TOKEN is set, requires "
    "`Authorization: Bearer <token>`.",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
def metrics_endpoint(request: Request) -> Response:
    import hmac

    token = get_settings().metrics_token
    if token:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise Unauthorized(
                "The metrics token is required.",
                code="invalid_metrics_token",
                headers={"WWW-Authenticate": "Bearer"},
            )
    body, content_type = render()
    return Response(content=body, media_type=content_type)
