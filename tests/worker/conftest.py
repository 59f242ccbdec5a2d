"""A Redis of their own for the dispatcher tests.

The session-wide dispatcher (``platform_processes``) serves every tenant on the shared test Redis; a test
that counts the decisions of its own dispatcher needs a Redis no other dispatcher touches.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis as redis_lib

from tests.conftest import RedisServer


@pytest.fixture(scope="module")
def iso_server(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("iso-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def iso_redis(iso_server) -> Iterator[redis_lib.Redis]:
    client = redis_lib.Redis(port=iso_server.port, decode_responses=True)
    client.flushdb()
    yield client
    client.close()
