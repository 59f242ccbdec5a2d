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
