"""Redis clients shared by the API, the dispatcher and the worker."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

import redis

from tenantq.core.settings import get_settings

T = TypeVar("T")

# A Redis restart (its AOF loaded again) lasts about a second: the worker's Redis work is tried again
# after each of these pauses before its last error counts.
REDIS_RETRY_DELAYS_S = (0.25, 0.5, 1.0, 2.0, 0.0)

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


def with_redis_retries(call: Callable[[], T]) -> T:
    """``call()``, tried again after each pause of :data:`REDIS_RETRY_DELAYS_S` while it raises a Redis
    error; the last error propagates."""
    error: redis.RedisError | None = None
    for delay in REDIS_RETRY_DELAYS_S:
        try:
            return call()
        except redis.RedisError as exc:
            error = exc
            time.sleep(delay)
    assert error is not None
    raise error
