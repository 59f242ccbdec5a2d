"""One settings object for every tenantq process, read from ``TENANTQ_*`` environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    secret_key: str = Field(
        default="dev-insecure-secret-change-me",
        description="Server secret: keys the API-key HMAC and signs dashboard session JWTs.",
    )
    previous_secret_keys: list[str] = Field(
        default_factory=list,
        description="Older secrets still accepted when verifying session JWTs (JSON list), for rotation.",
    )
    admin_token: str | None = Field(
        default=None, description="Bearer token for the operator API (/admin/v1). Unset disables it."
    )
    env: str = Field(
        default="live", description="'live' or 'test': the API key prefix issued (tq_live_/tq_test_)."
    )
    result_expires_seconds: int = Field(default=7 * 24 * 3600, description="Celery result backend expiry.")
    exec_queue: str = Field(default="tq.exec", description="Name of the shared Celery execution queue.")
    dispatch_depth: int = Field(
        default=32, description="How many released jobs may wait in the execution queue at once."
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
    stripe_meters: dict[str, str] = Field(
        default_factory=dict,
        description="Usage metric -> Stripe meter event_name to stream as Billing Meter events (JSON, e.g. "
        '{"compute_ms": "tenantq_compute_ms"}); empty streams nothing.',
    )
    auth_failure_limit: int = Field(
        default=20, description="Failed authentications allowed per client address per auth_failure_window_s."
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
        description="Bearer token required by GET /metrics. Unset: /metrics is open (keep it internal).",
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
    def celery_broker_url(self) -> str:
        """kombu spells a unix-socket Redis as ``redis+socket://``."""
        url = self.effective_redis_url
        if url.startswith("unix://"):
            return "redis+socket://" + url[len("unix://") :]
        return url

    @property
    def uses_embedded_redis(self) -> bool:
        return not self.redis_url


@lru_cache
def get_settings() -> Settings:
    return Settings()


def reset_settings_cache() -> None:
    get_settings.cache_clear()


def data_dir_from_env() -> Path:
    return Path(os.environ.get("TENANTQ_DATA_DIR", ".tenantq")).expanduser().resolve()
