"""Completion webhooks: signatures, the API (secret shown once, URL policy, isolation), and real
deliveries from a real worker to a real local HTTP receiver that verifies every signature."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tenantq.core.settings import reset_settings_cache
from tenantq.platform.jobs.models import Job
from tenantq.platform.webhooks import service
from tenantq.platform.webhooks.models import WebhookDelivery, WebhookEndpoint
from tenantq.platform.webhooks.service import sign, verify_signature
from tests.conftest import wait_until
from tests.factories import ApiKeyFactory, JobFactory, TenantFactory, auth
from tests.isolated_platform import LocalHttpServer, Reply

pytest_plugins = ["tests.isolated_platform"]


@pytest.fixture
def allow_private(monkeypatch):
    """This (API) process accepts loopback webhook URLs, like an operator with
    TENANTQ_HTTP_ALLOW_PRIVATE=1."""
    monkeypatch.setenv("TENANTQ_HTTP_ALLOW_PRIVATE", "1")
    reset_settings_cache()
    yield
    monkeypatch.delenv("TENANTQ_HTTP_ALLOW_PRIVATE")
    reset_settings_cache()


class VerifyingReceiver(LocalHttpServer):
    """A webhook receiver: checks each request's signature like a tenant would; answers from a script."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.secret: str | None = None
        self.statuses = list(statuses or [])
        self.verified: list[dict] = []
        self.rejected: list[dict] = []
        self.ready = threading.Event()
        super().__init__(self.route)

    def route(self, req: dict) -> Reply:
        self.ready.wait(10)
        ok = verify_signature(
            self.secret, req["headers"].get("tenantq-signature"), req["body"], tolerance=300
        )
        (self.verified if ok else self.rejected).append(req)
        if not ok:
            return Reply(400, b"bad signature")
        status = self.statuses.pop(0) if self.statuses else 200
        return Reply(status, b"thanks" if status < 300 else b"try later")


class TestSignature:
    def test_round_trip(self):
        header = sign("whsec_x", '{"a":1}', timestamp=1_700_000_000)
        assert header.startswith("t=1700000000,v1=")
        assert verify_signature("whsec_x", header, b'{"a":1}', tolerance=300, now=1_700_000_100)

    def test_wrong_secret_body_or_stale_timestamp_fail(self):
        header = sign("whsec_x", '{"a":1}', timestamp=1_700_000_000)
        assert not verify_signature("whsec_y", header, '{"a":1}', now=1_700_000_000)
        assert not verify_signature("whsec_x", header, '{"a":2}', now=1_700_000_000)
        assert not verify_signature("whsec_x", header, '{"a":1}', tolerance=300, now=1_700_000_301)
        assert not verify_signature("whsec_x", None, '{"a":1}')
        assert not verify_signature("whsec_x", "t=abc,v1=00", '{"a":1}')
        assert not verify_signature("whsec_x", "v1=00", '{"a":1}')

    def test_any_of_several_signatures_may_match(self):
        good = sign("whsec_x", "body", timestamp=100).split("v1=")[1]
        assert verify_signature("whsec_x", f"t=100,v1=deadbeef,v1={good}", "body", now=100)


class TestWebhookApi:
    def test_create_shows_secret_once_then_list_and_delete(self, api, allow_private):
        key = ApiKeyFactory()
        resp = api.post(
            "/v1/webhooks",
            json={
                "url": "http://127.0.0.1:9/hook",
                "events": ["job.failed", "job.succeeded", "job.failed"],
                "description": "ops",
            },
            headers=auth(key),
        )
        assert resp.status_code == 201, resp.text
        body = resp.json()
        assert body["secret"].startswith("whsec_") and len(body["secret"]) > 30
        assert body["events"] == ["job.failed", "job.succeeded"] and body["description"] == "ops"
        listed = api.get("/v1/webhooks", headers=auth(key)).json()["items"]
        assert [w["id"] for w in listed] == [body["id"]] and "secret" not in listed[0]
        assert "secret" not in api.get(f"/v1/webhooks/{body['id']}", headers=auth(key)).json()
        assert api.get(f"/v1/webhooks/{body['id']}/deliveries", headers=auth(key)).json() == {"items": []}
        assert api.delete(f"/v1/webhooks/{body['id']}", headers=auth(key)).status_code == 204
        assert api.get(f"/v1/webhooks/{body['id']}/deliveries", headers=auth(key)).status_code == 404

    @pytest.mark.parametrize(
        ("url", "needle"),
        [
            ("http://127.0.0.1:8080/hook", "loopback"),
            ("http://localhost/hook", "loopback"),
            ("http://169.254.169.254/latest/meta-data", "link-local"),
            ("http://10.0.0.5/hook", "private"),
            ("ftp://example.com/hook", "http"),
        ],
    )
    def test_private_destinations_are_refused_by_default(self, api, url, needle):
        key = ApiKeyFactory()
        resp = api.post("/v1/webhooks", json={"url": url, "events": ["job.succeeded"]}, headers=auth(key))
        assert resp.status_code == 422, resp.text
        err = resp.json()["error"]
        assert err["code"] == "webhook_url_not_allowed" and needle in err["message"]

    def test_unknown_event_type_is_422(self, api, allow_private):
        key = ApiKeyFactory()
        resp = api.post(
            "/v1/webhooks", json={"url": "http://127.0.0.1:9/", "events": ["job.exploded"]}, headers=auth(key)
        )
        assert resp.status_code == 422

    def test_other_tenants_webhooks_are_404(self, api, allow_private):
        owner, other = ApiKeyFactory(), ApiKeyFactory()
        wid = api.post(
            "/v1/webhooks",
            json={"url": "http://127.0.0.1:9/", "events": ["job.succeeded"]},
            headers=auth(owner),
        ).json()["id"]
        assert api.get(f"/v1/webhooks/{wid}", headers=auth(other)).status_code == 404
        assert api.get(f"/v1/webhooks/{wid}/deliveries", headers=auth(other)).status_code == 404
        assert api.delete(f"/v1/webhooks/{wid}", headers=auth(other)).status_code == 404
        assert api.get("/v1/webhooks", headers=auth(other)).json()["items"] == []
        assert api.get(f"/v1/webhooks/{wid}", headers=auth(owner)).status_code == 200


class TestEvents:
    def test_event_id_is_stable_per_finish_and_changes_with_a_new_attempt(self):
        job = Job(id="job-1", attempts=1)
        first = service.event_id_for(job, "job.failed")
        assert first == service.event_id_for(job, "job.failed") and first.startswith("evt_")
        job.attempts = 2
        assert service.event_id_for(job, "job.failed") != first

    def test_deliveries_are_recorded_once_per_endpoint_and_event(self, db_session):
        tenant = TenantFactory()
        both = WebhookEndpoint(
            tenant_id=tenant.id,
            url="http://127.0.0.1:9/",
            events=["job.succeeded", "job.failed"],
            secret="whsec_a",
        )
        failures_only = WebhookEndpoint(
            tenant_id=tenant.id, url="http://127.0.0.1:9/", events=["job.failed"], secret="whsec_b"
        )
        db_session.add_all([both, failures_only])
        db_session.commit()
        job = JobFactory(tenant=tenant, status="succeeded", attempts=1, result={"x": 1})
        first = service.record_job_finished(db_session, job.id)
        again = service.record_job_finished(db_session, job.id)  # a duplicate postrun signal
        assert len(first) == 1 and again == []
        delivery = db_session.get(WebhookDelivery, first[0])
        assert delivery.endpoint_id == both.id and delivery.event_type == "job.succeeded"
        event = json.loads(delivery.body)
        assert event["id"] == delivery.event_id and event["type"] == "job.succeeded"
        assert event["data"]["job"]["id"] == job.id and event["data"]["job"]["result"] == {"x": 1}

    def test_unfinished_jobs_and_other_tenants_endpoints_produce_nothing(self, db_session):
        tenant, other = TenantFactory(), TenantFactory()
        db_session.add(
            WebhookEndpoint(
                tenant_id=other.id, url="http://127.0.0.1:9/", events=["job.succeeded"], secret="whsec_c"
            )
        )
        db_session.commit()
        assert service.record_job_finished(db_session, JobFactory(tenant=tenant, status="succeeded").id) == []
        db_session.add(
            WebhookEndpoint(
                tenant_id=tenant.id, url="http://127.0.0.1:9/", events=["job.succeeded"], secret="whsec_d"
            )
        )
        db_session.commit()
        assert service.record_job_finished(db_session, JobFactory(tenant=tenant, status="running").id) == []


class TestAttempts:
    def test_duplicate_task_copies_never_repeat_an_attempt_and_lost_ones_are_swept(
        self, db_session, allow_private
    ):
        from datetime import timedelta

        from tenantq.core.db import utcnow

        tenant = TenantFactory()
        with VerifyingReceiver() as receiver:
            receiver.secret = "whsec_t"
            receiver.ready.set()
            db_session.add(
                WebhookEndpoint(
                    tenant_id=tenant.id, url=receiver.url + "/x", events=["job.succeeded"], secret="whsec_t"
                )
            )
            db_session.commit()
            first_job = JobFactory(tenant=tenant, status="succeeded", attempts=1)
            (did,) = service.record_job_finished(db_session, first_job.id)
            # Planned for later (a retry): an early copy of the task does nothing.
            db_session.get(WebhookDelivery, did).next_attempt_at = utcnow() + timedelta(minutes=1)
            db_session.commit()
            assert service.attempt_delivery(db_session, did).outcome == "not_due"
            assert receiver.requests == []
            # Lost task: overdue by more than STALE_AFTER, so the sweeper finds it.
            db_session.get(WebhookDelivery, did).next_attempt_at = utcnow() - timedelta(minutes=10)
            db_session.commit()
            assert did in service.stale_deliveries(db_session)
            assert service.attempt_delivery(db_session, did).outcome == "succeeded"
            assert service.attempt_delivery(db_session, did).outcome == "gone"  # a second copy
            assert did not in service.stale_deliveries(db_session)
            assert len(receiver.verified) == 1


@pytest.mark.e2e
class TestDelivery:
    def register(self, api, key, url: str, events: list[str]) -> dict:
        resp = api.post("/v1/webhooks", json={"url": url, "events": events}, headers=auth(key))
        assert resp.status_code == 201, resp.text
        return resp.json()

    def deliveries(self, api, key, wid: str) -> list[dict]:
        return api.get(f"/v1/webhooks/{wid}/deliveries", headers=auth(key)).json()["items"]

    def test_succeeded_job_is_delivered_signed_and_retried_after_a_failure(
        self, api, db_session, allow_private, isolated_platform
    ):
        key = ApiKeyFactory()
        tenant = key.tenant
        with VerifyingReceiver(statuses=[500]) as receiver:
            hook = self.register(api, key, receiver.url + "/hooks", ["job.succeeded"])
            receiver.secret = hook["secret"]
            receiver.ready.set()
            job = isolated_platform.submit(db_session, tenant, "demo.echo", {"hello": "webhooks"})

            def delivered():
                items = self.deliveries(api, key, hook["id"])
                return items if items and items[0]["status"] == "succeeded" else None

            items = wait_until(delivered, timeout=60, interval=0.2, message="the webhook to be delivered")
            assert receiver.rejected == []
            assert len(receiver.verified) == 2  # first answered 500, the retry 200
            first, second = receiver.verified
            assert first["body"] == second["body"]  # same event, same bytes
            assert first["headers"]["tenantq-event-id"] == second["headers"]["tenantq-event-id"]
            assert second["at"] - first["at"] >= 0.2  # backed off (base 0.5 s, jitter 50-100%)
            event = json.loads(second["body"])
            assert (
                event["type"] == "job.succeeded"
                and second["headers"]["tenantq-event-type"] == "job.succeeded"
            )
            assert event["data"]["job"]["id"] == job.id and event["data"]["job"]["status"] == "succeeded"
            assert event["data"]["job"]["result"] == {"hello": "webhooks"}
            assert event["id"] == second["headers"]["tenantq-event-id"]

            (delivery,) = items
            assert delivery["job_id"] == job.id and delivery["attempts"] == 2 and delivery["finished_at"]
            log = delivery["attempt_log"]
            assert [a["attempt"] for a in log] == [1, 2]
            assert log[0]["status_code"] == 500 and "HTTP 500" in log[0]["error"]
            assert log[1]["status_code"] == 200 and log[1]["error"] is None
            assert all(a["duration_ms"] >= 0 for a in log)

    def test_failed_job_event_and_unreachable_endpoint_gives_up_after_max_attempts(
        self, api, db_session, allow_private, isolated_platform
    ):
        key = ApiKeyFactory()
        with VerifyingReceiver() as receiver:
            good = self.register(api, key, receiver.url + "/ok", ["job.failed"])
            receiver.secret = good["secret"]
            receiver.ready.set()
            from tests.conftest import free_port

            dead = self.register(api, key, f"http://127.0.0.1:{free_port()}/gone", ["job.failed"])
            ignored = self.register(api, key, receiver.url + "/success-only", ["job.succeeded"])
            job = isolated_platform.submit(db_session, key.tenant, "demo.fail", {"message": "kaput"})

            wait_until(lambda: receiver.verified, timeout=60, interval=0.2, message="the job.failed event")
            event = json.loads(receiver.verified[0]["body"])
            assert event["type"] == "job.failed" and event["data"]["job"]["id"] == job.id
            assert "kaput" in event["data"]["job"]["error"]

            def dead_gave_up():
                items = self.deliveries(api, key, dead["id"])
                return items if items and items[0]["status"] == "failed" else None

            (delivery,) = wait_until(
                dead_gave_up, timeout=90, interval=0.3, message="the dead endpoint to give up"
            )
            # TENANTQ_WEBHOOK_MAX_ATTEMPTS=4 in the isolated worker; connection errors recorded each time.
            assert delivery["attempts"] == 4 and len(delivery["attempt_log"]) == 4
            assert all(
                a["status_code"] is None and "ConnectError" in a["error"] for a in delivery["attempt_log"]
            )
            time.sleep(0.5)
            assert self.deliveries(api, key, ignored["id"]) == []
            assert receiver.matching("/success-only") == []
            assert len(receiver.matching("/ok")) == 1
