"""Load shedding: past api_max_inflight requests a process answers 503 overloaded at once."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from tenantq.core.settings import reset_settings_cache


@pytest.fixture
def one_turn_app(monkeypatch):
    monkeypatch.setenv("TENANTQ_API_MAX_INFLIGHT", "1")
    monkeypatch.setenv("TENANTQ_API_OVERLOAD_WAIT_SECONDS", "0.05")
    reset_settings_cache()
    from tenantq.app import create_app

    app = create_app()
    release = threading.Event()

    @app.get("/v1/test-hold")
    def hold() -> dict[str, str]:  # on a request thread: the event loop keeps serving others
        release.wait(60)
        return {"status": "released"}

    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, release
    release.set()
    reset_settings_cache()


def test_a_request_past_the_bound_is_refused_at_once_and_probes_still_answer(one_turn_app):
    client, release = one_turn_app
    held: dict[str, int] = {}

    def holder() -> None:
        held["status"] = client.get("/v1/test-hold").status_code

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        # Wait until the holder has its turn: a second request is then refused.
        deadline = time.monotonic() + 30
        while True:
            started = time.monotonic()
            resp = client.get("/v1/jobs")
            if resp.status_code == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["code"] == "overloaded"
        assert resp.headers["Retry-After"] == "1"
        assert resp.headers["X-Request-ID"]
        assert time.monotonic() - started < 2.0  # refused at once, not queued
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
    finally:
        release.set()
        thread.join(30)
    assert held["status"] == 200
    # The turn came back: the next request is served (401: no credentials, but not shed).
    assert client.get("/v1/jobs").status_code == 401


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        ("GET", "/v1/jobs/abc/events", b"", True),
        ("GET", "/v1/jobs/abc", b"wait=30", True),
        ("GET", "/v1/jobs/abc", b"wait=0", False),
        ("GET", "/v1/jobs/abc", b"", False),
        ("GET", "/v1/jobs", b"wait=30", False),  # a list is no wait
        ("POST", "/v1/jobs/abc/events", b"", False),
        ("GET", "/v1/jobs/abc/attempts", b"wait=5", False),
    ],
)
def test_waits_are_told_apart_from_work(method, path, query, expected):
    from tenantq.core.load_shedding import is_wait

    assert is_wait({"type": "http", "method": method, "path": path, "query_string": query}) is expected


def test_waits_take_no_turn_and_are_bounded_apart():
    """Open waits neither take the work turns nor go unbounded: past max_waits they are refused."""
    import asyncio

    from tenantq.core.load_shedding import LoadShedder

    async def scenario() -> list[int]:
        release = asyncio.Event()
        started = asyncio.Event()

        async def app(scope, receive, send):
            if scope["path"].endswith("/events"):
                started.set()
                await release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        shedder = LoadShedder(app, max_inflight=1, wait_seconds=0.05, max_waits=1)
        statuses: list[int] = []

        def call(path: str):
            async def send(message):
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])

            async def receive():
                return {"type": "http.request", "body": b""}

            scope = {"type": "http", "method": "GET", "path": path, "query_string": b"", "headers": []}
            return shedder(scope, receive, send)

        waiting = asyncio.create_task(call("/v1/jobs/a/events"))
        await started.wait()
        await call("/v1/jobs/b")  # work still gets its turn while a wait is open
        await call("/v1/jobs/c/events")  # a second wait is past max_waits=1
        release.set()
        await waiting
        return statuses

    assert asyncio.run(scenario()) == [200, 503, 200]
