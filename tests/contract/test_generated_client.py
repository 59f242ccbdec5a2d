"""A client generated from ``/openapi.json`` by ``openapi-python-client`` works against the server.

The generator runs as a subprocess on the document the live contract server publishes, and must not
warn (a warning means it dropped a model, an operation or a response). The generated package then
submits, replays, gets, lists, pages, cancels and misses a job, registers a webhook and reads its
deliveries: every answer parses into the model its status documents, never ``None``.

openapi-python-client pins typer below the version the tenantq CLI needs, so it cannot share the
test virtualenv: CI installs it in a virtualenv of its own and names the program in
``TENANTQ_OPENAPI_CLIENT`` (``.ci/run``). Without that variable the program is looked up on PATH.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.contract.conftest import LiveApi

GENERATOR_ENV = "TENANTQ_OPENAPI_CLIENT"


def generator() -> str:
    configured = os.environ.get(GENERATOR_ENV)
    if configured:
        assert Path(configured).is_file(), f"{GENERATOR_ENV}={configured} does not exist"
        return configured
    found = shutil.which("openapi-python-client")
    if not found:
        pytest.skip(f"openapi-python-client is not installed (set {GENERATOR_ENV}; .ci/run does)")
    return found


@pytest.fixture(scope="module")
def client_package(live_api: LiveApi, tmp_path_factory) -> Iterator[ModuleType]:
    program = generator()
    work = tmp_path_factory.mktemp("generated-client")
    document = work / "openapi.json"
    document.write_bytes(httpx.get(f"{live_api.url}/openapi.json", timeout=60).content)
    name = f"tenantq_client_{uuid.uuid4().hex[:8]}"
    result = subprocess.run(
        [
            *(program, "generate", "--path", str(document), "--output-path", str(work / name)),
            *("--meta", "none", "--fail-on-warning"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=work,
        # The generator formats its output with the ruff of its own virtualenv.
        env={**os.environ, "PATH": f"{Path(program).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    assert result.returncode == 0, f"generation failed or warned:\n{result.stdout}\n{result.stderr}"
    sys.path.insert(0, str(work))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(work))
        for module in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
            del sys.modules[module]


def api(package: ModuleType, tag: str, operation: str) -> Any:
    return importlib.import_module(f"{package.__name__}.api.{tag}.{operation}")


def models(package: ModuleType) -> Any:
    return importlib.import_module(f"{package.__name__}.models")


def parsed(response: Any, status: int, model: type) -> Any:
    assert response.status_code == status, (response.status_code, response.content)
    assert isinstance(response.parsed, model), f"{status} parsed as {response.parsed!r}, not {model}"
    return response.parsed


def test_generated_client_drives_the_jobs_api(live_api: LiveApi, client_package: ModuleType) -> None:
    m = models(client_package)
    _tenant_id, key = live_api.new_tenant("contract-client")
    client = client_package.AuthenticatedClient(
        base_url=live_api.url, token=key, raise_on_unexpected_status=True
    )
    create_job = api(client_package, "jobs", "create_job")
    get_job = api(client_package, "jobs", "get_job")
    list_jobs = api(client_package, "jobs", "list_jobs")
    cancel_job = api(client_package, "jobs", "cancel_job")

    body = m.JobCreate(
        task=m.JobCreateTask.DEMO_ECHO,
        args=m.JobCreateArgs.from_dict({"hello": "world"}),
        priority=4,
        countdown=3600.0,  # scheduled an hour ahead: it stays cancellable whatever runs meanwhile
        idempotency_key="contract-1",
    )
    created = parsed(create_job.sync_detailed(client=client, body=body), 202, m.JobOut)
    assert created.task == "demo.echo"
    assert created.args.to_dict() == {"hello": "world"}
    assert created.priority == 4

    # The idempotent replay answers 200 with the same job, and the client parses it too.
    replayed = parsed(create_job.sync_detailed(client=client, body=body), 200, m.JobOut)
    assert replayed.id == created.id

    second = parsed(
        create_job.sync_detailed(
            client=client, body=m.JobCreate(task=m.JobCreateTask.DEMO_ECHO, countdown=3600.0)
        ),
        202,
        m.JobOut,
    )

    got = parsed(get_job.sync_detailed(created.id, client=client), 200, m.JobOut)
    assert got.id == created.id
    assert got.status in (m.JobOutStatus.SCHEDULED, m.JobOutStatus.QUEUED)

    first_page = parsed(list_jobs.sync_detailed(client=client, limit=1), 200, m.JobList)
    assert [j.id for j in first_page.items] == [second.id]
    assert isinstance(first_page.next_cursor, str)
    next_page = parsed(
        list_jobs.sync_detailed(client=client, limit=1, cursor=first_page.next_cursor), 200, m.JobList
    )
    assert [j.id for j in next_page.items] == [created.id]

    cancelled = parsed(cancel_job.sync_detailed(created.id, client=client), 200, m.CancelOut)
    assert cancelled.cancellation == m.CancelOutCancellation.DEQUEUED
    assert cancelled.status == m.CancelOutStatus.CANCELLED
    again = parsed(cancel_job.sync_detailed(created.id, client=client), 200, m.CancelOut)
    assert again.cancellation == m.CancelOutCancellation.ALREADY_FINISHED

    missing = parsed(get_job.sync_detailed("no-such-job", client=client), 404, m.ErrorResponse)
    assert missing.error.code == "not_found"

    invalid = parsed(
        create_job.sync_detailed(
            client=client, body=m.JobCreate(task=m.JobCreateTask.DEMO_ECHO, priority=12)
        ),
        422,
        m.ErrorResponse,
    )
    assert invalid.error.code == "invalid_input"


def test_generated_client_reads_webhook_deliveries(live_api: LiveApi, client_package: ModuleType) -> None:
    m = models(client_package)
    _tenant_id, key = live_api.new_tenant("contract-webhooks")
    client = client_package.AuthenticatedClient(base_url=live_api.url, token=key)
    create_webhook = api(client_package, "webhooks", "create_webhook")
    list_deliveries = api(client_package, "webhooks", "list_deliveries")

    body = m.WebhookCreate(url="http://127.0.0.1:9/hook", events=[m.WebhookCreateEventsItem.JOB_SUCCEEDED])
    created = parsed(create_webhook.sync_detailed(client=client, body=body), 201, m.WebhookCreated)
    assert created.secret.startswith("whsec_")

    deliveries = parsed(list_deliveries.sync_detailed(created.id, client=client), 200, m.DeliveryList)
    assert deliveries.items == []
    missing = parsed(list_deliveries.sync_detailed("no-such-webhook", client=client), 404, m.ErrorResponse)
    assert missing.error.code == "not_found"


def test_generated_client_sees_a_missing_credential(live_api: LiveApi, client_package: ModuleType) -> None:
    m = models(client_package)
    anonymous = client_package.Client(base_url=live_api.url)
    response = api(client_package, "jobs", "list_jobs").sync_detailed(client=anonymous)
    assert parsed(response, 401, m.ErrorResponse).error.code == "unauthorized"
