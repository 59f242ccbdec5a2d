"""One settings object for every tenantq process, read from ``TENANTQ_*`` environment variables."""

from __future__ import annotations

import contextlib
import os
import secrets
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# A server secret or admin token shorter than this is refused at role start (see check_server_settings).
MIN_SECRET_BYTES = 32
MIN_ADMIN_TOKEN_CHARS = 32
# TENANTQ_BROKER_URL schemes: RabbitMQ (AMQP 0-9-1 through py-amqp) or Redis.
AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
BROKER_SCHEMES = AMQP_SCHEMES | {"redis", "rediss", "redis+socket"}
# The generated secret of an embedded-defaults data dir (owner-only: it keys every API-key hash).
SECRET_FILE_NAME = "secret_key"


class InsecureSettings(RuntimeError):
    """A server role was asked to start with a secret or admin token anyone could guess."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TENANTQ_", extra="ignore")

    data_dir: Path = Field(
        default=Path(".tenantq"),
        description="Directory for the embedded SQLite database, the embedded Redis socket and beat state.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL. Default: a SQLite file inside data_dir.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis URL (redis://, rediss:// or unix://). "
        "Default: the embedded Redis socket in data_dir.",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker of the execution queues (tq.exec, dedicated pools, tq.system). "
        "amqp://user:password@host:5672/vhost (or amqps://) runs them on RabbitMQ: real acknowledgements, "
        "a killed worker's jobs come back as soon as the broker sees its connection close. Default: the "
        "Redis of TENANTQ_REDIS_URL. Per-tenant queues, limits, leases, usage and results stay in Redis.",
    )
    secret_key: str = Field(
        default="",
        description="Server secret (at least 32 bytes): keys the API-key HMAC and signs session JWTs. "
        "Required by every server role, except on embedded defaults (no TENANTQ_DATABASE_URL and no "
        "TENANTQ_REDIS_URL), where a random one is generated once into data_dir/secret_key.",
    )
    previous_secret_keys: list[str] = Field(
        default_factory=list,
        description="Older secrets still accepted when verifying session JWTs (JSON list), for rotation.",
    )
    admin_token: str | None = Field(
        default=None,
        description="Bearer token for the operator API (/admin/v1), at least 32 characters. Unset (or "
        "empty) disables operator access; changing or removing it ends every operator session.",
    )
    env: str = Field(
        default="live", description="'live' or 'test': the API key prefix issued (tq_live_/tq_test_)."
    )
    result_expires_seconds: int = Field(default=7 * 24 * 3600, description="Celery result backend expiry.")
    exec_queue: str = Field(default="tq.exec", description="Name of the shared Celery execution queue.")
    dispatch_depth: int = Field(
        default=32,
        description="Ceiling of released jobs waiting in an execution queue. The dispatcher keeps each queue "
        "at the free worker slots behind it plus one (workers publish them), or adapts its depth up to "
        "this when no worker published slots for the queue.",
    )
    direct_release: bool = Field(
        default=True,
        description="On an idle system (no tenant has a job waiting, a worker slot is free) the submitter "
        "releases a new job itself instead of waiting for the dispatcher. Needs the execution queues in "
        "the same Redis as the tenant queues (no TENANTQ_BROKER_URL of its own); otherwise off.",
    )
    lease_ttl_seconds: float = Field(
        default=30.0,
        description="Concurrency lease lifetime; running attempts refresh theirs every third of it, "
        "so a crashed worker's slots come back after at most this long.",
    )
    leader_ttl_seconds: float = Field(
        default=5.0,
        description="Dispatcher leader lock lifetime: a standby takes over this long after the leader dies.",
    )
    limits_refresh_seconds: float = Field(
        default=5.0, description="How long the dispatcher and workers cache a tenant's plan limits."
    )
    inflight_deadline_seconds: float = Field(
        default=30.0,
        description="A job popped but not acknowledged as published for this long is queued again.",
    )
    lost_job_grace_seconds: float = Field(
        default=300.0,
        description="A SQL 'queued' job absent from Redis this long is queued again by the reconciler.",
    )
    visibility_timeout_seconds: float = Field(
        default=3700.0,
        gt=0,
        description="Broker visibility timeout: a message taken by a worker that died unacknowledged is "
        "handed to another worker after this long. Keep it above the largest plan's max_time_limit_s, or a "
        "long attempt is redelivered while it still runs.",
    )
    # Timeouts and pool bounds: each well below a client's timeout (30 s is common), so a stalled database
    # or Redis turns into a prompt 503 (database_unavailable, queue_unavailable) instead of a hang.
    db_connect_timeout_seconds: int = Field(
        default=3,
        ge=2,
        description="PostgreSQL connect timeout (libpq connect_timeout; whole seconds, at least 2).",
    )
    db_statement_timeout_ms: int = Field(
        default=15_000,
        ge=0,
        description="PostgreSQL statement_timeout of every session (0: none). Migrations run without it.",
    )
    db_pool_size: int = Field(
        default=10, ge=1, description="Connections each process keeps pooled (PostgreSQL)."
    )
    db_max_overflow: int = Field(
        default=10, ge=0, description="Extra connections a process may open above db_pool_size (PostgreSQL)."
    )
    db_pool_timeout_seconds: float = Field(
        default=1.0,
        gt=0,
        description="Longest wait for a pooled connection; then a request answers 503 database_unavailable.",
    )
    redis_socket_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Redis read/write timeout of the API, dispatcher and workers' client."
    )
    redis_connect_timeout_seconds: float = Field(default=2.0, gt=0, description="Redis connect timeout.")
    api_max_inflight: int = Field(
        default=8,
        ge=1,
        description="Requests one API process works on at once; more wait up to api_overload_wait_seconds "
        "for a turn, then answer 503 overloaded with Retry-After. Keep it at most db_pool_size + "
        "db_max_overflow (every request may hold a connection) and below the 40 threads of the request "
        "thread pool (so an admitted request never waits for a thread while holding a connection).",
    )
    api_max_waits: int = Field(
        default=2000,
        ge=1,
        description="Open waits (GET /v1/jobs/{id}?wait=, GET /v1/jobs/{id}/events) one API process holds "
        "at once; they take no api_max_inflight turn (they hold no connection while waiting). More answer "
        "503 overloaded at once. 2,000 is the measured capacity of one process (docs/jobs.md).",
    )
    api_overload_wait_seconds: float = Field(
        default=0.25,
        ge=0,
        description="How long a request may wait for an api_max_inflight turn before 503 overloaded.",
    )
    overdue_margin_seconds: float = Field(
        default=300.0,
        gt=0,
        description="A job still running this long past its hard time limit counts as overdue "
        "(tenantq_jobs_overdue on /metrics, alert TenantqJobsOverdue): its worker's report never arrived.",
    )
    min_time_limit_seconds: float = Field(
        default=1.0,
        gt=0,
        description="Smallest soft_time_limit / time_limit a job may ask for; a smaller one answers 422 "
        "(a task type's smaller default is raised to it).",
    )
    time_limit_grace_seconds: float = Field(
        default=10.0,
        gt=0,
        description="The job's time limits stop the task function in the worker; the pool kills the attempt "
        "this long after its hard limit if the function ignored the stop (code stuck in C, or catching it). "
        "The platform's start and finish bookkeeping runs outside the job's limits, inside this grace.",
    )
    max_body_bytes: int = Field(default=1_000_000, description="Largest accepted request body.")
    hsts_seconds: int = Field(
        default=0,
        ge=0,
        description="Strict-Transport-Security max-age sent on https responses; 0 (default) sends none.",
    )
    billing_grace_seconds: int = Field(
        default=2 * 24 * 3600,
        description="How long after a calendar month ends before it is closed and invoiced; usage recorded "
        "inside this window is billed in its own month, later usage in the next open month.",
    )
    stripe_api_key: str | None = Field(
        default=None, description="Stripe secret key; unset disables Stripe sync."
    )
    stripe_api_base: str | None = Field(
        default=None, description="Stripe API base URL (default Stripe's own; tests point it at localstripe)."
    )
    stripe_webhook_secret: str | None = Field(
        default=None,
        description="Signing secret (whsec_...) of the Stripe webhook endpoint; unset rejects webhooks.",
    )
    stripe_webhook_tolerance_seconds: int = Field(
        default=300, description="Largest accepted age of a Stripe webhook signature timestamp."
    )
    stripe_days_until_due: int = Field(
        default=30,
        ge=1,
        le=365,
        description="Days a tenant has to pay a Stripe invoice (emailed: collection_method=send_invoice).",
    )
    stripe_meters: dict[str, str] = Field(
        default_factory=dict,
        description="Usage metric -> Stripe meter event_name to stream as Billing Meter events (JSON, e.g. "
        '{"compute_ms": "tenantq_compute_ms"}); empty streams nothing.',
    )
    auth_failure_limit: int = Field(
        default=20,
        description="Failed authentications allowed per client address and credential (API key id, "
        "operator token) per auth_failure_window_s.",
    )
    auth_failure_window_s: int = Field(default=60, description="Window of auth_failure_limit, in seconds.")
    max_result_bytes: int = Field(
        default=256 * 1024,
        description="Largest job result (JSON-encoded bytes); "
        "a larger result fails the job with a clear error.",
    )
    idempotency_retention_seconds: int = Field(
        default=24 * 3600,
        description="How long an idempotency key maps to its job; after that the key may be used again.",
    )
    cancel_marker_ttl_seconds: int = Field(
        default=7 * 24 * 3600,
        description="How long a job's cancellation marker (a Redis key) guards against a late start of a "
        "cancelled attempt. Must exceed how long a message can wait in the execution queue.",
    )
    log_json: bool | None = Field(default=None, description="Force JSON logs (default: JSON unless a TTY).")
    metrics_tenant_labels: str = Field(
        default="all",
        pattern=r"^(all|none|top:[1-9][0-9]*)$",
        description="Tenant label on metrics: 'all' (one series per tenant), 'none' (aggregated), or 'top:N' "
        '(the N busiest tenants by submissions; the rest as tenant="other").',
    )
    metrics_token: str | None = Field(
        default=None,
        description="Bearer token required by GET /metrics. Unset: /metrics answers 403 outside embedded "
        "defaults unless TENANTQ_METRICS_PUBLIC=1.",
    )
    metrics_public: bool = Field(
        default=False,
        description="Serve GET /metrics without a token outside embedded defaults (only where the API port "
        "is reachable by trusted scrapers alone). Ignored when TENANTQ_METRICS_TOKEN is set.",
    )
    forwarded_allow_ips: str = Field(
        default="",
        description="Comma-separated addresses or CIDRs of trusted reverse proxies: only their "
        "X-Forwarded-For / X-Forwarded-Proto are honoured (passed to uvicorn). Empty: no proxy is trusted "
        "and the client address is the peer's.",
    )
    worker_metrics_port: int | None = Field(
        default=None,
        description="Port on which each worker serves its own host's metrics (multi-host scraping).",
    )

    # Schedules: how often beat re-reads the schedule table, so edits apply without a restart.
    schedule_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Beat re-reads per-tenant schedules from SQL at least this often.",
    )
    # Outgoing e-mail for the built-in email.send task type (the operator's SMTP relay).
    smtp_host: str | None = Field(
        default=None, description="SMTP relay host for email.send (unset: email.send fails)."
    )
    smtp_port: int = Field(default=587, description="SMTP relay port.")
    smtp_username: str | None = Field(default=None, description="SMTP login user (unset: no AUTH).")
    smtp_password: str | None = Field(default=None, description="SMTP login password.")
    smtp_starttls: bool = Field(default=True, description="Upgrade the SMTP connection with STARTTLS.")
    smtp_ssl: bool = Field(default=False, description="Connect with implicit TLS (SMTPS, usually port 465).")
    smtp_default_from: str = Field(
        default="tenantq <no-reply@localhost>",
        description="Sender used when a job gives no 'from' (and the only one allowed for tenants without "
        "configured sender domains).",
    )
    smtp_timeout_seconds: float = Field(default=30.0, gt=0, description="SMTP connect/command timeout.")
    # Outgoing HTTP (http.request task type and completion webhooks): the operator's network policy.
    http_allow_private: bool = Field(
        default=False,
        description="Allow private, loopback, link-local and reserved destinations (tests, trusted setups).",
    )
    http_allow_cidrs: list[str] = Field(
        default_factory=list, description="CIDRs always allowed even if private (JSON list)."
    )
    http_deny_cidrs: list[str] = Field(
        default_factory=list, description="CIDRs always refused, even if public (JSON list)."
    )
    http_max_timeout_seconds: float = Field(
        default=60.0, gt=0, description="Upper bound of http.request timeouts."
    )
    http_max_response_bytes: int = Field(default=65_536, gt=0, description="Response body kept in a result.")
    # Completion webhooks.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, description="Timeout of one webhook delivery.")
    webhook_max_attempts: int = Field(
        default=12, ge=1, le=50, description="Delivery attempts before giving up."
    )
    webhook_backoff_base_seconds: float = Field(
        default=2.0, gt=0, description="First retry delay; doubles on each attempt (with jitter)."
    )
    webhook_backoff_max_seconds: float = Field(
        default=3600.0,
        gt=0,
        le=3600,
        description="Cap of the retry delay (below the broker visibility timeout).",
    )
    metering: bool = Field(
        default=True, description="Record usage events from task signals (TENANTQ_METERING=0 turns it off)."
    )

    @field_validator("broker_url")
    @classmethod
    def _known_broker(cls, value: str | None) -> str | None:
        if not value:
            return None
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme not in BROKER_SCHEMES:
            raise ValueError(
                f"TENANTQ_BROKER_URL must start with one of {', '.join(sorted(BROKER_SCHEMES))}:// "
                f"(got {scheme or 'no scheme'!r})"
            )
        return value

    @field_validator("admin_token")
    @classmethod
    def _empty_admin_token_is_unset(cls, value: str | None) -> str | None:
        # Deployments often pass an empty variable for "not set" (compose's ${TENANTQ_ADMIN_TOKEN:-}).
        return value or None

    @property
    def runs_on_embedded_defaults(self) -> bool:
        """No external database and no external Redis: the single-machine setup of `tenantq up`."""
        return not self.database_url and not self.redis_url

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def embedded_redis_socket(self) -> Path:
        return self.resolved_data_dir / "redis.sock"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir / 'tenantq.db'}"

    @property
    def effective_redis_url(self) -> str:
        if self.redis_url:
            return self.redis_url
        return f"unix://{self.embedded_redis_socket}"

    @property
    def celery_result_backend(self) -> str:
        """Results always live in Redis (kombu spells a unix-socket Redis as ``redis+socket://``)."""
        url = self.effective_redis_url
        if url.startswith("unix://"):
            return "redis+socket://" + url[len("unix://") :]
        return url

    @property
    def celery_broker_url(self) -> str:
        """TENANTQ_BROKER_URL, else the Redis that holds everything else."""
        return self.broker_url or self.celery_result_backend

    @property
    def broker_is_amqp(self) -> bool:
        """The execution queues run on RabbitMQ (real acknowledgements), not on Redis."""
        return self.celery_broker_url.split("://", 1)[0].lower() in AMQP_SCHEMES

    @property
    def uses_embedded_redis(self) -> bool:
        return not self.redis_url


def private_dir(path: Path) -> Path:
    """Create ``path`` readable by its owner only (0700), and tighten it if it exists with wider
    modes: the data dir holds the secret, the SQLite database and the Redis append-only file."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = path.stat().st_mode
    if mode & 0o077:
        path.chmod(mode & 0o700)
    return path


def private_file(path: Path) -> None:
    """Drop group and other permissions from an existing file (e.g. one an older release created)."""
    with contextlib.suppress(FileNotFoundError):
        mode = path.stat().st_mode
        if mode & 0o077:
            path.chmod(mode & 0o700)


def embedded_secret(data_dir: Path) -> str:
    """The secret of an embedded-defaults data dir: generated once, then read back by every process
    (and CLI command) using that dir, so API keys hashed by one verify in the others. The dir is 0700
    and the file 0600."""
    path = data_dir / SECRET_FILE_NAME
    private_dir(data_dir)
    with contextlib.suppress(FileNotFoundError):
        private_file(path)
        return _read_secret(path)
    # Written to a private temporary file, then linked into place: a concurrent reader never sees a
    # partial secret, and of two processes racing here exactly one secret wins (link fails if present).
    tmp = data_dir / f".{SECRET_FILE_NAME}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48) + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return _read_secret(path)


def _read_secret(path: Path) -> str:
    value = path.read_text().strip()
    if len(value.encode()) < MIN_SECRET_BYTES:
        raise InsecureSettings(f"{path} holds a secret shorter than {MIN_SECRET_BYTES} bytes; remove it.")
    return value


def check_server_settings(settings: Settings, *, embedded: bool | None = None) -> None:
    """Refuse to run a server role (API, worker, beat, dispatcher, flusher) that anyone could forge
    credentials for: a missing or short secret (outside embedded defaults, ``embedded``), or a short
    admin token. Raises ``InsecureSettings`` naming every problem."""
    if embedded is None:
        embedded = settings.runs_on_embedded_defaults
    problems: list[str] = []
    if not embedded:
        if not settings.secret_key:
            problems.append(
                "TENANTQ_SECRET_KEY is not set (required with TENANTQ_DATABASE_URL or TENANTQ_REDIS_URL)"
            )
        elif len(settings.secret_key.encode()) < MIN_SECRET_BYTES:
            problems.append(f"TENANTQ_SECRET_KEY is shorter than {MIN_SECRET_BYTES} bytes")
        if any(len(s.encode()) < MIN_SECRET_BYTES for s in settings.previous_secret_keys):
            problems.append(
                f"TENANTQ_PREVIOUS_SECRET_KEYS holds a secret shorter than {MIN_SECRET_BYTES} bytes"
            )
    if settings.admin_token is not None and len(settings.admin_token) < MIN_ADMIN_TOKEN_CHARS:
        problems.append(f"TENANTQ_ADMIN_TOKEN is shorter than {MIN_ADMIN_TOKEN_CHARS} characters")
    if problems:
        raise InsecureSettings(
            "refusing to start: " + "; ".join(problems) + ". Generate one with: openssl rand -hex 32"
        )


@lru_cache
def get_settings() -> Settings:
    settings = Settings()
    if settings.runs_on_embedded_defaults and not settings.secret_key:
        settings.secret_key = embedded_secret(settings.resolved_data_dir)
    return settings


def reset_settings_cache() -> None:
    get_settings.cache_clear()


def data_dir_from_env() -> Path:
    return Path(os.environ.get("TENANTQ_DATA_DIR", ".tenantq")).expanduser().resolve()
