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
        description="Redis URL (redis://, rediss:// or unix://). Default: the embedded Redis socket in data_dir.",
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
    env: str = Field(default="live", description="'live' or 'test': the API key prefix issued (tq_live_/tq_test_).")
    result_expires_seconds: int = Field(default=7 * 24 * 3600, description="Celery result backend expiry.")
    exec_queue: str = Field(default="tq.exec", description="Name of the shared Celery execution queue.")
    dispatch_depth: int = Field(
        default=32, description="How many released jobs may wait in the execution queue at once."
    )
    lease_ttl_seconds: float = Field(
        default=30.0, description="Concurrency lease lifetime; running attempts refresh theirs every third of it, "
        "so a crashed worker's slots come back after at most this long.",
    )
    leader_ttl_seconds: float = Field(
        default=5.0, description="Dispatcher leader lock lifetime: a standby takes over this long after the leader dies."
    )
    limits_refresh_seconds: float = Field(
        default=5.0, description="How long the dispatcher and workers cache a tenant's plan limits."
    )
    inflight_deadline_seconds: float = Field(
        default=30.0, description="A job popped but not acknowledged as published for this long is queued again."
    )
    lost_job_grace_seconds: float = Field(
        default=300.0, description="A SQL 'queued' job absent from Redis this long is queued again by the reconciler."
    )
    max_body_bytes: int = Field(default=1_000_000, description="Largest accepted request body.")
    log_json: bool | None = Field(default=None, description="Force JSON logs (default: JSON unless a TTY).")

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
