"""Stripe: the real SDK over HTTP against localstripe (sync twice -> one of each), signed webhooks."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

import httpx
import pytest
import stripe
from sqlalchemy import delete, func, select
from typer.testing import CliRunner

from tenantq.billing.invoicing.models import Invoice, StripeCustomer, StripeEvent, StripeMeterCursor
from tenantq.billing.invoicing.pricing import to_minor_units
from tenantq.billing.invoicing.service import close_period
from tenantq.billing.invoicing.stripe_sync import (
    ensure_customer,
    metadata_value,
    process_event,
    record_event,
    stream_meter_events,
    stripe_client,
    sync_credit_note,
    sync_invoice,
    sync_period,
)
from tenantq.core.settings import reset_settings_cache
from tenantq.tenants.accounts.models import Tenant
from tests.billing.invoice_factories import UsageEventFactory, old_tenant
from tests.conftest import ROOT, ProcessGroup, free_port, wait_until

STRIPE_KEY = "sk_test_tenantq"
ADMIN = {"Authorization": "Bearer test-admin-token-0123456789abcdef"}
WEBHOOK_SECRET = "whsec_" + uuid.uuid4().hex


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture(scope="module")
def localstripe(tmp_path_factory):
    """localstripe on 127.0.0.1 in its own process and temp dir; yields its base URL."""
    port = free_port()
    tmp = tmp_path_factory.mktemp("localstripe")
    with open(tmp / "localstripe.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.billing.localstripe_server", str(port)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(ROOT)},
        )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError("localstripe exited: " + (tmp / "localstripe.log").read_text())
        try:
            return httpx.get(f"{url}/v1/customers", auth=(STRIPE_KEY, ""), timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, timeout=60, interval=0.2, message="localstripe to listen")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def stripe_env(localstripe, monkeypatch):
    monkeypatch.setenv("TENANTQ_STRIPE_API_KEY", STRIPE_KEY)
    monkeypatch.setenv("TENANTQ_STRIPE_API_BASE", localstripe)
    monkeypatch.setenv("TENANTQ_STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    reset_settings_cache()
    yield localstripe
    monkeypatch.undo()
    reset_settings_cache()


@pytest.fixture
def webhook_env(monkeypatch):
    monkeypatch.setenv("TENANTQ_STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    reset_settings_cache()
    yield
    monkeypatch.undo()
    reset_settings_cache()


pytestmark = pytest.mark.usefixtures("clean_billing")


def closed_invoice(session, period: str = "2001-03") -> Invoice:
    """A pro tenant's invoice of 53.53 usd (see test_invoices for the hand computation)."""
    tenant = old_tenant("pro")
    when = at(int(period[:4]), int(period[5:]), 10)
    UsageEventFactory(tenant=tenant, metric="jobs", quantity=100_625, occurred_at=when)
    UsageEventFactory(tenant=tenant, metric="compute_ms", quantity=47_345_678, occurred_at=when)
    result = close_period(session, period, now=at(2030, 1, 1))
    session.commit()
    [invoice] = [i for i in result.invoices if i.tenant_id == tenant.id]
    assert invoice.total == Decimal("53.53")
    return invoice


def stripe_customers_of(client: stripe.StripeClient, tenant_id: str) -> list:
    customers = client.v1.customers.list(params={"limit": 100}).data
    return [c for c in customers if metadata_value(c, "tenantq_tenant_id") == tenant_id]


class TestStripeSync:
    def test_sync_twice_creates_one_customer_and_one_invoice(self, stripe_env, db_session):
        invoice = closed_invoice(db_session)
        client = stripe_client()
        first = sync_period(db_session, "2001-03", client)
        second = sync_period(db_session, "2001-03", client)
        [r1] = [r for r in first if r.invoice_id == invoice.id]
        [r2] = [r for r in second if r.invoice_id == invoice.id]
        assert r1.customer_created and r1.invoice_created and r1.items_created == 6
        assert r2.skipped == "already_synced" and r2.stripe_invoice_id == r1.stripe_invoice_id

        # What localstripe holds, asked over HTTP through the SDK:
        [customer] = stripe_customers_of(client, invoice.tenant_id)
        stripe_invoices = client.v1.invoices.list(params={"customer": customer.id}).data
        assert [i.id for i in stripe_invoices] == [r1.stripe_invoice_id]
        [remote] = stripe_invoices
        assert remote.total == 5353 and remote.currency == "usd"
        assert remote.metadata["tenantq_invoice_id"] == invoice.id
        lines = client.v1.invoices.line_items.list(remote.id, params={"limit": 100}).data
        assert sorted(line.amount for line in lines) == sorted([4900, 0, 13, 0, 400, 40])
        assert client.v1.invoice_items.list(params={"customer": customer.id}).data == []  # none left pending

        db_session.expire_all()
        stored = db_session.get(Invoice, invoice.id)
        assert stored.stripe_invoice_id == remote.id
        assert all(line.stripe_invoice_item_id for line in stored.lines)
        assert db_session.get(StripeCustomer, invoice.tenant_id).customer_id == customer.id

    def test_next_period_reuses_the_customer(self, stripe_env, db_session):
        invoice = closed_invoice(db_session, "2001-03")
        client = stripe_client()
        sync_period(db_session, "2001-03", client)
        close_period(db_session, "2001-04", now=at(2030, 1, 1))  # base fee only: 49.00
        db_session.commit()
        [april] = sync_period(db_session, "2001-04", client)
        assert not april.customer_created and april.invoice_created
        [customer] = stripe_customers_of(client, invoice.tenant_id)
        totals = sorted(i.total for i in client.v1.invoices.list(params={"customer": customer.id}).data)
        assert totals == [4900, 5353]

    def test_recovers_invoice_created_before_a_crash(self, stripe_env, db_session):
        """Stripe created the invoice but tenantq died before storing its id: the re-run finds it by
        metadata."""
        invoice = closed_invoice(db_session)
        client = stripe_client()
        first = sync_invoice(db_session, client, invoice)
        invoice.stripe_invoice_id = None  # the lost commit
        db_session.commit()
        again = sync_invoice(db_session, client, invoice)
        assert not again.invoice_created and again.stripe_invoice_id == first.stripe_invoice_id
        [customer] = stripe_customers_of(client, invoice.tenant_id)
        assert len(client.v1.invoices.list(params={"customer": customer.id}).data) == 1

    def test_zero_invoices_are_not_pushed(self, stripe_env, db_session):
        tenant = old_tenant("free")
        UsageEventFactory(tenant=tenant, occurred_at=at(2001, 3, 5))
        close_period(db_session, "2001-03", now=at(2030, 1, 1))
        db_session.commit()
        [result] = sync_period(db_session, "2001-03", stripe_client())
        assert result.skipped == "zero_total"
        assert stripe_customers_of(stripe_client(), tenant.id) == []

    def test_cli_stripe_sync(self, stripe_env, db_session):
        from tenantq.cli import app

        invoice = closed_invoice(db_session)
        runner = CliRunner()
        out = [
            json.loads(runner.invoke(app, ["billing", "stripe-sync", "--period", "2001-03", "--json"]).output)
            for _ in range(2)
        ]
        assert out[0]["invoices"][0]["invoice_created"] is True
        assert out[1]["invoices"][0]["skipped"] == "already_synced"
        [customer] = stripe_customers_of(stripe_client(), invoice.tenant_id)
        assert len(stripe_client().v1.invoices.list(params={"customer": customer.id}).data) == 1

    def test_unconfigured(self, db_session, monkeypatch):
        from tenantq.cli import app

        monkeypatch.delenv("TENANTQ_STRIPE_API_KEY", raising=False)
        reset_settings_cache()
        result = CliRunner().invoke(app, ["billing", "stripe-sync", "--period", "2001-03", "--json"])
        assert result.exit_code == 1 and json.loads(result.output)["error"]["code"] == "stripe_not_configured"


class TestStripeFinalizeAndCorrections:
    """Issue 14 item 14: invoices used to stay drafts (no auto_advance, never finalized, no email)."""

    def test_invoice_is_finalized_emailed_and_auto_advanced(self, stripe_env, db_session):
        invoice = closed_invoice(db_session)
        tenant = db_session.get(Tenant, invoice.tenant_id)
        tenant.billing_email = "ap@customer.example"
        db_session.commit()
        client = stripe_client()
        result = sync_invoice(db_session, client, invoice)
        assert result.invoice_created and result.finalized and result.stripe_status == "open"
        remote = client.v1.invoices.retrieve(result.stripe_invoice_id)
        assert remote.status == "open" and remote.auto_advance is True
        assert remote.collection_method == "send_invoice" and remote.days_until_due == 30
        assert remote.customer_email == "ap@customer.example"
        assert remote.status_transitions.finalized_at is not None
        assert remote.total == to_minor_units(invoice.total, invoice.currency) == 5353
        db_session.expire_all()
        assert db_session.get(Invoice, invoice.id).stripe_status == "open"
        again = sync_invoice(db_session, client, db_session.get(Invoice, invoice.id))
        assert again.skipped == "already_synced" and not again.finalized

    def test_a_draft_left_by_an_earlier_sync_is_finalized(self, stripe_env, db_session):
        invoice = closed_invoice(db_session)
        client = stripe_client()
        customer_id, _ = ensure_customer(db_session, client, db_session.get(Tenant, invoice.tenant_id))
        for line in invoice.lines:
            client.v1.invoice_items.create(
                params={
                    "customer": customer_id,
                    "amount": to_minor_units(line.amount, "usd"),
                    "currency": "usd",
                }
            )
        draft = client.v1.invoices.create(
            params={
                "customer": customer_id,
                "metadata": {"tenantq_invoice_id": invoice.id},
                "pending_invoice_items_behavior": "include",
            }
        )
        assert draft.status == "draft"
        invoice.stripe_invoice_id = draft.id  # what the old sync stored: a draft nobody finalizes
        db_session.commit()
        result = sync_invoice(db_session, client, invoice)
        assert result.finalized and client.v1.invoices.retrieve(draft.id).status == "open"

    def test_billing_email_change_reaches_the_customer(self, stripe_env, db_session):
        invoice = closed_invoice(db_session)
        client = stripe_client()
        sync_invoice(db_session, client, invoice)
        tenant = db_session.get(Tenant, invoice.tenant_id)
        tenant.billing_email = "new@customer.example"
        db_session.commit()
        close_period(db_session, "2001-04", now=at(2030, 1, 1))
        db_session.commit()
        [april] = sync_period(db_session, "2001-04", client)
        assert client.v1.invoices.retrieve(april.stripe_invoice_id).customer_email == "new@customer.example"
        [customer] = stripe_customers_of(client, tenant.id)
        assert customer.email == "new@customer.example"

    def test_void_and_reissue_and_credit_note_reach_stripe(self, stripe_env, api, db_session):
        invoice = closed_invoice(db_session)
        client = stripe_client()
        first = sync_invoice(db_session, client, invoice)
        resp = api.post(
            f"/admin/v1/billing/invoices/{invoice.id}/void",
            json={"reason": "wrong price", "reissue": True},
            headers=ADMIN,
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["voided"]["status"] == "void" and body["stripe"]["status"] == "void"
        assert client.v1.invoices.retrieve(first.stripe_invoice_id).status == "void"
        reissued = body["reissued"]
        assert reissued["revision"] == 2 and reissued["total"] == "53.53"
        remote = client.v1.invoices.retrieve(body["stripe"]["reissued_stripe_invoice_id"])
        assert remote.status == "open" and remote.total == 5353
        assert remote.metadata["tenantq_invoice_id"] == reissued["id"]

        resp = api.post(
            f"/admin/v1/billing/invoices/{reissued['id']}/credit-notes",
            json={"amount": "3.53", "reason": "goodwill"},
            headers=ADMIN,
        )
        assert resp.status_code == 201, resp.text
        note = resp.json()
        assert note["amount"] == "3.53" and note["invoice_credited"] == "3.53"
        cn = client.v1.credit_notes.retrieve(note["stripe"]["credit_note_id"])
        assert (
            cn.amount == 353
            and cn.invoice == remote.id
            and cn.metadata["tenantq_credit_note_id"] == note["id"]
        )
        assert client.v1.invoices.retrieve(remote.id).amount_due == 5000

    def test_credit_note_on_a_paid_invoice_credits_the_balance(self, stripe_env, db_session):
        from tenantq.billing.invoicing.corrections import issue_credit_note

        invoice = closed_invoice(db_session)
        client = stripe_client()
        synced = sync_invoice(db_session, client, invoice)
        card = client.v1.payment_methods.create(
            params={
                "type": "card",
                "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2040, "cvc": "123"},
            }
        )
        client.v1.payment_methods.attach(card.id, params={"customer": synced.stripe_customer_id})
        client.v1.customers.update(
            synced.stripe_customer_id, params={"invoice_settings": {"default_payment_method": card.id}}
        )
        assert client.v1.invoices.pay(synced.stripe_invoice_id).status == "paid"
        invoice.status = "paid"  # what the invoice.paid webhook does (tested above)
        db_session.commit()
        note = issue_credit_note(db_session, invoice, amount="53.53", reason="refund all", actor="test")
        db_session.commit()
        cn_id = sync_credit_note(db_session, client, note)
        cn = client.v1.credit_notes.retrieve(cn_id)
        assert cn.amount == 5353 and cn.type == "post_payment"
        assert sync_credit_note(db_session, client, note) == note.stripe_credit_note_id  # once


def sign(payload: bytes, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """Stripe's documented scheme: t=<unix time>,v1=hex(HMAC-SHA256(secret, "<t>.<raw body>"))."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def paid_event(stripe_invoice_id: str, invoice_id: str, event_type: str = "invoice.paid") -> bytes:
    now = int(time.time())
    return json.dumps(
        {
            "id": f"evt_{uuid.uuid4().hex[:24]}",
            "object": "event",
            "type": event_type,
            "created": now,
            "livemode": False,
            "api_version": "2026-10-28",
            "data": {
                "object": {
                    "id": stripe_invoice_id,
                    "object": "invoice",
                    "status": "paid",
                    "metadata": {"tenantq_invoice_id": invoice_id},
                    "status_transitions": {"paid_at": now},
                }
            },
        }
    ).encode()


def post_event(api, payload: bytes, signature: str | None):
    headers = {"content-type": "application/json"}
    if signature is not None:
        headers["stripe-signature"] = signature
    return api.post("/v1/stripe/webhook", content=payload, headers=headers)


def linked_invoice(session) -> Invoice:
    invoice = closed_invoice(session)
    invoice.stripe_invoice_id = f"in_{uuid.uuid4().hex[:14]}"
    session.commit()
    return invoice


def event_count(session) -> int:
    return session.scalar(select(func.count()).select_from(StripeEvent))


class TestWebhook:
    @pytest.mark.e2e
    def test_signed_invoice_paid_marks_invoice_paid_once(
        self, api, db_session, webhook_env, platform_processes
    ):
        invoice = linked_invoice(db_session)
        payload = paid_event(invoice.stripe_invoice_id, invoice.id)
        resp = post_event(api, payload, sign(payload))
        assert resp.status_code == 200, resp.text
        assert resp.json()["duplicate"] is False

        def paid() -> Invoice | None:  # applied by the real worker's billing.stripe_event task
            db_session.expire_all()
            row = db_session.get(Invoice, invoice.id)
            return row if row.status == "paid" else None

        paid_at = wait_until(paid, timeout=60, message="invoice marked paid by the worker").paid_at
        event_id = json.loads(payload)["id"]
        assert db_session.get(StripeEvent, event_id).outcome == "marked_paid"

        replay = post_event(api, payload, sign(payload))  # Stripe retries the same delivery
        assert replay.status_code == 200 and replay.json()["duplicate"] is True
        db_session.expire_all()
        assert db_session.get(Invoice, invoice.id).paid_at == paid_at
        assert event_count(db_session) == 1

    def test_processing_is_idempotent(self, db_session, webhook_env):
        invoice = linked_invoice(db_session)
        first = json.loads(paid_event(invoice.stripe_invoice_id, invoice.id))
        second = json.loads(paid_event(invoice.stripe_invoice_id, invoice.id, "invoice.payment_succeeded"))
        assert record_event(db_session, first)[1] is True
        assert record_event(db_session, first)[1] is False
        assert process_event(db_session, first["id"]) == "marked_paid"
        assert process_event(db_session, first["id"]) == "already_processed"
        record_event(db_session, second)
        assert process_event(db_session, second["id"]) == "already_paid"
        db_session.expire_all()
        assert db_session.get(Invoice, invoice.id).status == "paid"

    def test_unknown_invoice_and_other_types_are_recorded_and_ignored(self, db_session, webhook_env):
        stranger = json.loads(paid_event("in_nobody", str(uuid.uuid4())))
        other = {
            **json.loads(paid_event("in_x", "x")),
            "id": "evt_" + uuid.uuid4().hex,
            "type": "customer.created",
        }
        for event, outcome in ((stranger, "unknown_invoice"), (other, "ignored")):
            record_event(db_session, event)
            assert process_event(db_session, event["id"]) == outcome

    def test_forged_signature_is_rejected(self, api, db_session, webhook_env):
        invoice = linked_invoice(db_session)
        payload = paid_event(invoice.stripe_invoice_id, invoice.id)
        for signature in (
            sign(payload, secret="whsec_not_the_secret"),
            sign(payload + b" "),
            "t=1,v1=deadbeef",
            "garbage",
        ):
            resp = post_event(api, payload, signature)
            assert resp.status_code == 400, resp.text
            err = resp.json()["error"]
            assert err["code"] == "invalid_signature" and err["message"] and "details" in err
        missing = post_event(api, payload, None)
        assert missing.status_code == 400 and missing.json()["error"]["code"] == "invalid_signature"
        db_session.expire_all()
        assert db_session.get(Invoice, invoice.id).status == "open"
        assert event_count(db_session) == 0

    def test_stale_timestamp_is_rejected(self, api, db_session, webhook_env):
        invoice = linked_invoice(db_session)
        payload = paid_event(invoice.stripe_invoice_id, invoice.id)
        resp = post_event(api, payload, sign(payload, timestamp=int(time.time()) - 3600))
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_signature"
        assert "tolerance" in resp.json()["error"]["message"].lower()
        assert event_count(db_session) == 0

    def test_signed_but_not_an_event(self, api, db_session, webhook_env):
        resp = post_event(api, b"not json", sign(b"not json"))
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "malformed_json"
        for body in (b"[]", b'{"type": "invoice.paid"}', b'{"id": 5, "type": "x"}'):
            resp = post_event(api, body, sign(body))
            assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_event", body
        assert event_count(db_session) == 0

    def test_without_secret_webhooks_are_refused(self, api, monkeypatch):
        monkeypatch.delenv("TENANTQ_STRIPE_WEBHOOK_SECRET", raising=False)
        reset_settings_cache()
        payload = b"{}"
        resp = post_event(api, payload, sign(payload))
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "stripe_webhook_not_configured"


class TestPaidInStripe:
    @pytest.mark.e2e
    def test_localstripe_payment_webhook_marks_invoice_paid(
        self, stripe_env, db_session, platform_env, platform_processes, tmp_path
    ):
        """Full loop over real HTTP: close -> sync -> the customer pays in (local)Stripe -> localstripe signs
        and POSTs invoice.payment_succeeded to tenantq's API process -> the worker marks the invoice paid."""
        port = free_port()
        group = ProcessGroup({**platform_env, "TENANTQ_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET}, tmp_path)
        group.start("api", [sys.executable, "-m", "tenantq.cli", "api", "--port", str(port)])
        try:
            api_url = f"http://127.0.0.1:{port}"

            def api_up() -> bool:
                try:
                    return httpx.get(f"{api_url}/healthz", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(api_up, timeout=60, interval=0.2, message="API process to listen")
            registered = httpx.post(
                f"{stripe_env}/_config/webhooks/tenantq",
                auth=(STRIPE_KEY, ""),
                json={
                    "url": f"{api_url}/v1/stripe/webhook",
                    "secret": WEBHOOK_SECRET,
                    "events": ["invoice.payment_succeeded"],
                },
            )
            assert registered.status_code == 200

            invoice = closed_invoice(db_session)
            client = stripe_client()
            [result] = [r for r in sync_period(db_session, "2001-03", client) if r.invoice_id == invoice.id]
            card = client.v1.payment_methods.create(
                params={
                    "type": "card",
                    "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2040, "cvc": "123"},
                }
            )
            client.v1.payment_methods.attach(card.id, params={"customer": result.stripe_customer_id})
            client.v1.customers.update(
                result.stripe_customer_id, params={"invoice_settings": {"default_payment_method": card.id}}
            )
            assert client.v1.invoices.pay(result.stripe_invoice_id).status == "paid"

            def paid() -> bool:
                db_session.expire_all()
                return db_session.get(Invoice, invoice.id).status == "paid"

            wait_until(paid, timeout=60, message="localstripe's signed webhook to mark the invoice paid")
            event = db_session.scalars(select(StripeEvent)).one()
            assert event.type == "invoice.payment_succeeded" and event.outcome == "marked_paid"
        finally:
            group.stop_all()


class FakeMeterApi(BaseHTTPRequestHandler):
    """A small stand-in for Stripe's meter-event endpoint (localstripe has no Billing Meters).

    It enforces the documented identifier dedup: a second event with an identifier already seen is
    refused with 400 ``resource_already_exists``. It also creates bare customers.
    """

    events: dict[str, dict]  # set per server
    lock: threading.Lock

    def log_message(self, *_args) -> None:
        return None

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        form = dict(parse_qsl(self.rfile.read(int(self.headers["content-length"] or 0)).decode()))
        if self.path == "/v1/customers":
            self._reply(200, {"id": f"cus_fake{uuid.uuid4().hex[:10]}", "object": "customer"})
            return
        if self.path != "/v1/billing/meter_events":
            self._reply(
                404, {"error": {"type": "invalid_request_error", "message": "Unrecognized request URL"}}
            )
            return
        identifier = form.get("identifier")
        with self.server.lock:
            if identifier in self.server.events:
                self._reply(
                    400,
                    {
                        "error": {
                            "type": "invalid_request_error",
                            "code": "resource_already_exists",
                            "message": f"A meter event with identifier {identifier} already exists.",
                        }
                    },
                )
                return
            event = {
                "object": "billing.meter_event",
                "event_name": form["event_name"],
                "identifier": identifier,
                "timestamp": int(form["timestamp"]),
                "payload": {
                    "stripe_customer_id": form["payload[stripe_customer_id]"],
                    "value": form["payload[value]"],
                },
            }
            self.server.events[identifier] = event
        self._reply(200, event)


@pytest.fixture
def meter_fake(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeMeterApi)
    server.events, server.lock = {}, threading.Lock()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("TENANTQ_STRIPE_API_KEY", STRIPE_KEY)
    monkeypatch.setenv("TENANTQ_STRIPE_API_BASE", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("TENANTQ_STRIPE_METERS", json.dumps({"compute_ms": "tenantq_compute_ms"}))
    reset_settings_cache()
    yield server
    server.shutdown()
    server.server_close()
    monkeypatch.undo()
    reset_settings_cache()


class TestMeterEvents:
    def test_streams_each_usage_event_once(self, meter_fake, db_session):
        now = at(2001, 3, 20)
        tenant = old_tenant("pro")
        sent = [
            UsageEventFactory(
                tenant=tenant,
                metric="compute_ms",
                quantity=q,
                occurred_at=at(2001, 3, 10, h),
                recorded_at=at(2001, 3, 10, h),
            )
            for h, q in ((1, 1500), (2, 2500))
        ]
        UsageEventFactory(tenant=tenant, metric="jobs", occurred_at=at(2001, 3, 10))  # not a configured meter
        too_old = UsageEventFactory(
            tenant=tenant, metric="compute_ms", occurred_at=at(2001, 2, 1), recorded_at=at(2001, 3, 10)
        )
        unsettled = UsageEventFactory(
            tenant=tenant,
            metric="compute_ms",
            quantity=7,
            occurred_at=now - timedelta(seconds=30),
            recorded_at=now - timedelta(seconds=10),
        )
        client = stripe_client()

        first = stream_meter_events(db_session, client, now=now)
        assert first.as_dict() == {"sent": 2, "duplicates": 0, "too_old": 1}
        got = meter_fake.events
        assert set(got) == {e.id for e in sent}
        assert got[sent[0].id]["payload"]["value"] == "1500"
        assert got[sent[0].id]["timestamp"] == int(at(2001, 3, 10, 1).timestamp())
        assert got[sent[0].id]["event_name"] == "tenantq_compute_ms"
        customer = db_session.get(StripeCustomer, tenant.id).customer_id
        assert {e["payload"]["stripe_customer_id"] for e in got.values()} == {customer}

        assert stream_meter_events(db_session, client, now=now).sent == 0  # the cursor moved on
        later = stream_meter_events(db_session, client, now=now + timedelta(minutes=2))
        assert later.sent == 1 and unsettled.id in got and too_old.id not in got

        # A crash lost the cursor: everything is sent again and Stripe's identifier dedup refuses it.
        db_session.execute(delete(StripeMeterCursor))
        db_session.commit()
        replay = stream_meter_events(db_session, client, now=now + timedelta(minutes=2))
        assert replay.as_dict() == {"sent": 0, "duplicates": 3, "too_old": 1}
        assert len(got) == 3
