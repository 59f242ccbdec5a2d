"""Workflows, schedules, webhooks (with a real signed delivery), usage and invoices through the SDK."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from tenantq_client import InvalidSignature, construct_event, errors, verify_signature
from tenantq_client.webhooks import sign


def test_workflow_runs_its_steps_in_order(client):
    wf = client.workflows.create([{"task": "demo.echo", "args": {"step": 1}}, {"task": "demo.echo"}])
    deadline = time.monotonic() + 120
    while not wf.finished and time.monotonic() < deadline:
        time.sleep(0.3)
        wf = client.workflows.get(wf.id)
    assert wf.status == "succeeded", wf
    assert [s.status for s in wf.steps] == ["succeeded", "succeeded"]
    assert wf.result["input"] == {"step": 1}


def test_schedules_create_list_update_delete(client):
    schedule = client.schedules.create("demo.echo", {"s": 1}, name="sdk", interval_seconds=3600)
    assert schedule.interval_seconds == 3600 and schedule.enabled
    assert schedule.id in [s.id for s in client.schedules.list(page_size=1)]
    assert client.schedules.update(schedule.id, enabled=False).enabled is False
    client.schedules.delete(schedule.id)
    with pytest.raises(errors.NotFound):
        client.schedules.get(schedule.id)


class Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str | None, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.received.append((self.headers.get("tenantq-signature"), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_webhook_delivery_verifies_with_the_secret_from_create(client):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/hook"
        hook = client.webhooks.create(url, ["job.succeeded"], description="sdk test")
        assert hook.secret and hook.id in [h.id for h in client.webhooks.list()]
        job = client.jobs.submit_and_wait("demo.echo", {"hooked": True}, timeout=120)
        deadline = time.monotonic() + 120
        while not Receiver.received and time.monotonic() < deadline:
            time.sleep(0.2)
        header, body = Receiver.received[0]
        assert verify_signature(hook.secret, header, body)
        assert not verify_signature(hook.secret, header, body + b" ")
        assert not verify_signature("whsec_other", header, body)
        event = construct_event(hook.secret, header, body)
        assert event["type"] == "job.succeeded" and event["data"]["job"]["id"] == job.id
        with pytest.raises(InvalidSignature):
            construct_event(hook.secret, sign(hook.secret, body, timestamp=int(time.time()) - 3600), body)
        deliveries = client.webhooks.deliveries(hook.id)
        assert deliveries and deliveries[0].job_id == job.id
        client.webhooks.delete(hook.id)
    finally:
        httpd.shutdown()


def test_usage_and_invoices(client):
    usage = client.usage()
    jobs = next(q for q in usage.quotas if q.name == "jobs")
    assert jobs.used >= 1
    assert list(client.invoices.list()) == []  # no period closed yet for this new tenant
    with pytest.raises(errors.NotFound):
        client.invoices.get("in_missing")
