"""Redis clients shared by the API, the dispatcher and the worker."""

from __future__ import annotations

import os

import redis

from tenantq.core.settings import get_settings

_client: redis.Redis | None = None
_client_pid: int | None = None


def new_redis() -> redis.Redis:
    """A client of its own (with its own connection pool): for a background thread, which must not
    share the process's client with the code it runs beside."""
    settings = get_settings()
    return redis.Redis.from_url(
        settings.effective_redis_url,
        decode_responses=True,
        socket_timeout=settings.redis_socket_timeout_seconds,
        socket_connect_timeout=settings.redis_connect_timeout_seconds,
        health_check_interval=30,
    )


def get_redis() -> redis.Redis:
    """The process's client (the main thread's): re-created after a fork."""
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client = new_redis()
        _client_pid = os.getpid()
    return _client


def reset_redis() -> None:
    global _client, _client_pid
    if _client is not None and _client_pid == os.getpid():
        _client.close()
    _client = None
    _client_pid = None
