"""Fixtures of the tenants tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient


@pytest.fixture
def client_from() -> Iterator[Callable[[str], TestClient]]:
    """An in-process client whose requests come from a given address (the limiter keys on it)."""
    from tenantq.app import create_app

    clients: list[TestClient] = []

    def make(address: str) -> TestClient:
        client = TestClient(create_app(), raise_server_exceptions=False, client=(address, 40000))
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()
