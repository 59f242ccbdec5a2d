"""``GET /metrics``: every process's event metrics plus the cluster's state, read at scrape time.

Two kinds of figures, two sources:

- **Events** (``tenantq.core.metrics``) are counted where they happen and written to the multiprocess
  directory; a scrape sums every process's files on this host.
- **State** (queue depth, running jobs, dispatcher heartbeat, live workers, usage backlog) is read
  from Redis at scrape time by ``ClusterStateCollector``, so it is right whichever process answers and
  needs no bookkeeping that a crash could leave stale. Only the API's ``/metrics`` exports it (a worker's
  endpoint does not, so the figures are never double counted).

- **Database state** (``DatabaseStateCollector``): whether the database answers, and jobs SQL holds as
  ``running`` past their hard time limit plus ``overdue_margin_seconds``: an attempt whose end never
  reached SQL. Read with a deadline (``DB_SCRAPE_TIMEOUT_S``), so a stalled database never stalls a
  scrape: it reports ``tenantq_database_up 0`` instead.

Redis keys read here besides those of ``tenantq.core.metrics``: ``tq:dispatcher:heartbeat`` (unix time of
the dispatcher's last completed pass, which it writes), ``tq:active``, ``tq:q:{tenant}``, ``tq:delayed``,
``tq:paused``, the Celery execution queue lists, the usage stream ``tq:usage`` when it exists, the
outcomes kept during a database outage ``tq:outcomes`` and the submission outbox ``tq:outbox``.
"""

from __future__ import annotations

import hmac
import json
import time
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import select

from tenantq.core import keys
from tenantq.core.celery import MAX_TIME_LIMIT_S
from tenantq.core.db import unscoped_session, utcnow
from tenantq.core.errors import Forbidden, Unauthorized
from tenantq.core.metrics import (
    EVENT_METRICS,
    RUNNING_KEY,
    WORKERS_KEY,
    LockedMultiProcessCollector,
    TenantLabeler,
    ensure_multiproc_dir,
    labeler,
)
from tenantq.core.openapi import errors
from tenantq.core.redis import get_redis
from tenantq.core.settings import Settings, get_settings
from tenantq.platform.dispatch.dispatcher import exec_queue_depth
from tenantq.platform.jobs.models import Job

DISPATCHER_HEARTBEAT_KEY = keys.DISPATCHER_HEARTBEAT
USAGE_STREAM = keys.USAGE_STREAM

# A worker that has not refreshed its heartbeat for this long is not counted as live.
WORKER_STALE_AFTER_S = 30.0
# The dispatcher writes its heartbeat every pass (at most once a second); older than this it is down.
DISPATCHER_STALE_AFTER_S = 15.0
# A running entry older than the broker's visibility timeout belongs to an attempt that was lost
# (its worker was killed before postrun): the message has been redelivered, so ignore the entry.
RUNNING_STALE_AFTER_S = 3700.0


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

        g = GaugeMetricFamily(
            "tenantq_outcomes_pending",
            "Attempt outcomes kept in Redis because SQL could not take them, not yet settled.",
        )
        g.add_metric([], int(client.xlen(keys.OUTCOMES)))
        yield g
        g = GaugeMetricFamily(
            "tenantq_outbox_pending", "Jobs noted in the outbox and not yet known to be enqueued."
        )
        g.add_metric([], int(client.zcard(keys.OUTBOX)))
        yield g


# A scrape waits this long for the database; a stalled database reports tenantq_database_up 0.
DB_SCRAPE_TIMEOUT_S = 2.0
_DB_SCRAPE_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tq-metrics-db")


def overdue_jobs(now: datetime | None = None) -> int:
    """Jobs SQL holds as running past their hard time limit plus the margin (without a limit of its
    own, the largest one). The partial index ix_job_running_started keeps it to the running rows."""
    now = now or utcnow()
    margin = get_settings().overdue_margin_seconds
    with unscoped_session() as session:
        rows = session.execute(
            select(Job.started_at, Job.time_limit).where(
                Job.status == "running", Job.started_at < now - timedelta(seconds=margin)
            )
        ).all()
    count = 0
    for started_at, limit in rows:
        if (
            started_at is not None
            and started_at + timedelta(seconds=(limit or MAX_TIME_LIMIT_S) + margin) < now
        ):
            count += 1
    return count


class DatabaseStateCollector:
    """Reads the database's state at scrape time, within ``DB_SCRAPE_TIMEOUT_S``."""

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        up = GaugeMetricFamily("tenantq_database_up", "1 if the metrics scrape could read the database.")
        future = _DB_SCRAPE_POOL.submit(overdue_jobs)
        try:
            overdue = future.result(timeout=DB_SCRAPE_TIMEOUT_S)
        except Exception:  # noqa: BLE001  (a scrape reports the database down instead of failing)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        g = GaugeMetricFamily(
            "tenantq_jobs_overdue",
            "Jobs SQL holds as running longer than their hard time limit plus overdue_margin_seconds.",
        )
        g.add_metric([], overdue)
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
    "tenantq_outcomes_pending",
    "tenantq_outbox_pending",
    "tenantq_database_up",
    "tenantq_jobs_overdue",
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


def render(include_cluster_state: bool = True, path: Path | None = None) -> tuple[bytes, str]:
    """The exposition text: every process's event metrics (multiprocess files) + cluster state."""
    path = path or ensure_multiproc_dir()
    registry = CollectorRegistry()
    registry.register(LockedMultiProcessCollector(path))
    if include_cluster_state:
        registry.register(ClusterStateCollector())
        registry.register(DatabaseStateCollector())
    return generate_latest(registry), CONTENT_TYPE_LATEST


router = APIRouter(tags=["ops"])

# The scrape credential, for the OpenAPI document (tenantq.app passes it to install_openapi).
METRICS_SCHEMES: dict[str, dict[str, Any]] = {
    "MetricsToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer $TENANTQ_METRICS_TOKEN`, when the operator set one.",
    }
}


def embedded_deployment(settings: Settings) -> bool:
    """Embedded defaults: nothing configured, or the children of `tenantq up`, which get the data dir's
    own SQLite file and Redis socket as explicit URLs. Only this host can reach those."""
    if settings.runs_on_embedded_defaults:
        return True
    data_dir = settings.resolved_data_dir
    return settings.effective_database_url == f"sqlite:///{data_dir / 'tenantq.db'}" and (
        settings.effective_redis_url == f"unix://{settings.embedded_redis_socket}"
    )


def authorize_scrape(request: Request) -> None:
    """``/metrics`` lists every tenant id: with a token it needs ``Bearer <token>``; without one it is
    open only on embedded defaults or when the operator opened it explicitly."""
    settings = get_settings()
    token = settings.metrics_token
    if token:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise Unauthorized(
                "The metrics token is required.",
                code="invalid_metrics_token",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return
    if settings.metrics_public or embedded_deployment(settings):
        return
    raise Forbidden(
        "/metrics is closed: set TENANTQ_METRICS_TOKEN (scrapers send it as a Bearer token) or "
        "TENANTQ_METRICS_PUBLIC=1.",
        code="metrics_disabled",
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="Prometheus text exposition: job counters and histograms per tenant and task type from "
    "every API and worker process on this host, plus queue depth, running jobs, workers, dispatcher "
    "heartbeat, usage backlog, outcomes and outbox entries waiting read from Redis, and database "
    "reachability and overdue jobs read from SQL. When TENANTQ_METRICS_TOKEN is set, requires "
    "`Authorization: Bearer <token>` (401 `invalid_metrics_token` otherwise). Without a token it is open "
    "on embedded defaults (`tenantq up` with nothing configured) or with TENANTQ_METRICS_PUBLIC=1, and "
    "answers 403 `metrics_disabled` everywhere else.",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        **errors(
            401,
            403,
            s401="TENANTQ_METRICS_TOKEN is set and the request lacks it (code `invalid_metrics_token`).",
            s403="No token is set and the endpoint is closed (code `metrics_disabled`).",
        ),
    },
    # The token when one is set; none on embedded defaults or with TENANTQ_METRICS_PUBLIC=1.
    openapi_extra={"security": [{"MetricsToken": []}, {}]},
)
def metrics_endpoint(request: Request) -> Response:
    authorize_scrape(request)
    body, content_type = render()
    return Response(content=body, media_type=content_type)
