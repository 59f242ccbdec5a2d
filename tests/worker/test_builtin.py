"""Built-in task types: email.send against a real SMTP server and http.request against a real HTTP server,
both run by a real worker; plus the network policy that keeps tenants off the platform's own network."""

from __future__ import annotations

import ipaddress
import json

import pytest

from tenantq.core.outbound import BlockedDestination, NetworkPolicy, check_url, guarded_client
from tenantq.platform.jobs.models import Job
from tenantq.worker.builtin import SenderNotAllowed, parse_retry_after, resolve_sender
from tests.conftest import wait_until
from tests.factories import ApiKeyFactory, TenantFactory, auth
from tests.isolated_platform import LocalHttpServer, Reply, json_reply

pytest_plugins = ["tests.isolated_platform"]

TERMINAL = ("succeeded", "failed", "cancelled")


def wait_job(session, job_id: str, timeout: float = 60) -> Job:
    def done():
        session.expire_all()
        job = session.get(Job, job_id)
        return job if job.status in TERMINAL else None

    return wait_until(done, timeout=timeout, message=f"job {job_id} to finish")


class TestSenderRules:
    def test_default_sender_when_from_is_omitted(self, db_session):
        tenant = TenantFactory()
        assert (
            resolve_sender(None, tenant, "Platform <no-reply@platform.test>")
            == "Platform <no-reply@platform.test>"
        )

    def test_tenant_without_domains_may_only_use_the_default(self, db_session):
        tenant = TenantFactory()
        assert (
            resolve_sender("no-reply@platform.test", tenant, "P <no-reply@platform.test>")
            == "no-reply@platform.test"
        )
        with pytest.raises(SenderNotAllowed, match="no allowed sender domains"):
            resolve_sender("ceo@acme.test", tenant, "P <no-reply@platform.test>")

    def test_allowed_domains_are_exact_and_case_insensitive(self, db_session):
        tenant = TenantFactory(overrides={"email_from_domains": ["Acme.test"]})
        assert resolve_sender("Bob <bob@ACME.test>", tenant, "x@platform.test") == "Bob <bob@ACME.test>"
        with pytest.raises(SenderNotAllowed, match=r"'evil\.test' is not allowed"):
            resolve_sender("bob@evil.test", tenant, "x@platform.test")
        with pytest.raises(SenderNotAllowed):
            resolve_sender("bob@sub.acme.test", tenant, "x@platform.test")


class TestArgumentValidation:
    def test_bad_email_args_answer_422(self, api):
        key = ApiKeyFactory()
        for args in (
            {"to": [], "subject": "s", "text": "t"},
            {"to": ["not-an-address"], "subject": "s", "text": "t"},
            {"to": ["a@b.test"], "subject": "s\r\nBcc: x@y.test", "text": "t"},
        ):
            resp = api.post("/v1/jobs", json={"task": "email.send", "args": args}, headers=auth(key))
            assert resp.status_code == 422, resp.text
            assert resp.json()["error"]["code"] == "invalid_args"

    def test_bad_http_args_answer_422(self, api):
        key = ApiKeyFactory()
        for args in (
            {"url": "ftp://example.com/x"},
            {"url": "https://example.com", "body": "a", "json": {"b": 1}},
            {"url": "https://example.com", "headers": {"Host": "other"}},
            {"url": "https://example.com", "method": "TRACE"},
        ):
            resp = api.post("/v1/jobs", json={"task": "http.request", "args": args}, headers=auth(key))
            assert resp.status_code == 422, (args, resp.text)

    def test_task_types_are_listed_with_schemas(self, api):
        key = ApiKeyFactory()
        types = {t["name"]: t for t in api.get("/v1/task-types", headers=auth(key)).json()}
        assert "from" in types["email.send"]["args_schema"]["properties"]
        assert "json" in types["http.request"]["args_schema"]["properties"]


class TestNetworkPolicy:
    @pytest.mark.parametrize(
        ("ip", "reason"),
        [
            ("127.0.0.1", "loopback"),
            ("::1", "loopback"),
            ("10.1.2.3", "private"),
            ("192.168.0.1", "private"),
            ("169.254.169.254", "link-local"),
            ("::ffff:10.0.0.1", "private"),
            ("100.64.0.1", "reserved"),
            ("0.0.0.0", "unspecified"),
            ("8.8.8.8", None),
            ("2606:4700:4700::1111", None),
        ],
    )
    def test_default_policy(self, ip, reason):
        why = NetworkPolicy().why_blocked(ipaddress.ip_address(ip))
        assert (why is None) if reason is None else (reason in why)

    def test_allow_and_deny_lists(self):
        policy = NetworkPolicy(
            allow=(ipaddress.ip_network("10.0.0.0/8"),), deny=(ipaddress.ip_network("8.8.8.0/24"),)
        )
        assert policy.why_blocked(ipaddress.ip_address("10.9.9.9")) is None
        assert "deny list" in policy.why_blocked(ipaddress.ip_address("8.8.8.8"))
        assert policy.why_blocked(ipaddress.ip_address("127.0.0.1")) is not None

    def test_check_url_rejects_schemes_credentials_and_names_resolving_to_loopback(self):
        with pytest.raises(ValueError, match="Only http"):
            check_url("file:///etc/passwd", NetworkPolicy())
        with pytest.raises(ValueError, match="Credentials in the URL"):
            check_url("http://user:pw@example.com/", NetworkPolicy())
        with pytest.raises(BlockedDestination, match="loopback"):
            check_url("http://localhost:8080/", NetworkPolicy())

    def test_a_redirect_to_a_blocked_address_is_refused(self):
        # The first hop (127.0.0.1) is explicitly allowed; the redirect target (127.0.0.2) is not.
        with LocalHttpServer(lambda req: Reply(302, b"", {"location": "http://127.0.0.2:9/secret"})) as srv:
            policy = NetworkPolicy(allow=(ipaddress.ip_network("127.0.0.1/32"),))
            with (
                guarded_client(timeout=5, follow_redirects=True, policy=policy) as client,
                pytest.raises(BlockedDestination, match=r"127\.0\.0\.2"),
            ):
                client.get(srv.url + "/start")
            assert len(srv.requests) == 1

    def test_a_dripping_body_is_cut_off_at_the_deadline(self):
        import time

        import httpx

        from tenantq.worker.builtin import _read_bounded

        def drip():
            for _ in range(50):
                time.sleep(0.05)
                yield b"x"

        with pytest.raises(httpx.ReadTimeout):
            _read_bounded(httpx.Response(200, content=drip()), limit=1000, deadline=time.monotonic() + 0.3)
        body, truncated = _read_bounded(
            httpx.Response(200, content=b"y" * 10), limit=4, deadline=time.monotonic() + 5
        )
        assert (body, truncated) == (b"yyyy", True)

    def test_retry_after_parsing(self):
        assert parse_retry_after("7") == 7.0
        assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
        assert parse_retry_after("999999") == 3600.0
        assert parse_retry_after("soon") is None


@pytest.mark.e2e
class TestHttpRequest:
    def test_loopback_is_refused_by_default_with_a_clear_error(self, api, db_session, platform_processes):
        # The session worker runs with the default policy (private addresses refused).
        key = ApiKeyFactory()
        with LocalHttpServer(lambda req: json_reply({"ok": True})) as srv:
            job = api.post(
                "/v1/jobs",
                json={"task": "http.request", "args": {"url": srv.url + "/x"}, "max_retries": 3},
                headers=auth(key),
            ).json()
            done = wait_job(db_session, job["id"])
            assert done.status == "failed"
            assert "BlockedDestination" in done.error and "loopback address" in done.error
            assert done.attempts == 1  # a policy refusal is never retried
            assert srv.requests == []  # nothing reached the server

    def test_post_json_result_has_status_headers_and_body(self, db_session, isolated_platform):
        tenant = TenantFactory()
        with LocalHttpServer(
            lambda req: json_reply(
                {"echo": json.loads(req["body"]), "method": req["method"]},
                status=201,
                headers={"x-internal": "no", "etag": "v1"},
            )
        ) as srv:
            job = isolated_platform.submit(
                db_session,
                tenant,
                "http.request",
                {
                    "method": "post",
                    "url": srv.url + "/items?a=1",
                    "json": {"n": 1},
                    "headers": {"X-Trace": "abc"},
                    "timeout": 5,
                },
            )
            done = wait_job(db_session, job.id)
            assert done.status == "succeeded", done.error
            result = done.result
            assert result["status_code"] == 201 and result["truncated"] is False
            assert json.loads(result["body"]) == {"echo": {"n": 1}, "method": "POST"}
            assert result["headers"]["etag"] == "v1" and "x-internal" not in result["headers"]
            request = srv.matching("/items")[0]
            assert request["headers"]["X-Trace"] == "abc"
            assert request["headers"]["Content-Type"] == "application/json"

    def test_large_body_is_truncated(self, db_session, isolated_platform):
        tenant = TenantFactory()
        with LocalHttpServer(lambda req: Reply(200, b"x" * 200_000, {"content-type": "text/plain"})) as srv:
            job = isolated_platform.submit(db_session, tenant, "http.request", {"url": srv.url + "/big"})
            done = wait_job(db_session, job.id)
            assert done.status == "succeeded", done.error
            assert done.result["truncated"] is True and len(done.result["body"]) == 65_536

    def test_503_with_retry_after_is_retried_after_at_least_that_delay(self, db_session, isolated_platform):
        tenant = TenantFactory()

        def route(req):
            if req["index"] == 1:
                return Reply(503, b"busy", {"retry-after": "2"})
            return json_reply({"ok": True})

        with LocalHttpServer(route) as srv:
            job = isolated_platform.submit(
                db_session, tenant, "http.request", {"url": srv.url + "/flaky"}, max_retries=2
            )
            done = wait_job(db_session, job.id)
            assert done.status == "succeeded", done.error
            assert done.attempts == 2
            first, second = srv.matching("/flaky")
            assert second["at"] - first["at"] >= 1.9  # backoff alone would be under 2s (base 2, jitter)

    def test_4xx_fails_without_retry_and_5xx_fails_after_retries(self, db_session, isolated_platform):
        tenant = TenantFactory()

        def route(req):
            return Reply(404, b"no such thing") if req["path"] == "/missing" else Reply(500, b"oops")

        with LocalHttpServer(route) as srv:
            missing = isolated_platform.submit(
                db_session, tenant, "http.request", {"url": srv.url + "/missing"}, max_retries=2
            )
            broken = isolated_platform.submit(
                db_session, tenant, "http.request", {"url": srv.url + "/broken"}, max_retries=1
            )
            missing, broken = wait_job(db_session, missing.id), wait_job(db_session, broken.id)
            assert missing.status == "failed" and missing.attempts == 1
            assert (
                "HttpStatusError" in missing.error
                and "HTTP 404" in missing.error
                and "no such thing" in missing.error
            )
            assert broken.status == "failed" and broken.attempts == 2 and "HTTP 500" in broken.error
            assert len(srv.matching("/broken")) == 2

    def test_connection_refused_is_retried(self, db_session, isolated_platform):
        from tests.conftest import free_port

        tenant = TenantFactory()
        job = isolated_platform.submit(
            db_session,
            tenant,
            "http.request",
            {"url": f"http://127.0.0.1:{free_port()}/", "timeout": 2},
            max_retries=1,
        )
        done = wait_job(db_session, job.id)
        assert done.status == "failed" and done.attempts == 2
        assert "HttpRetryableError" in done.error and "ConnectError" in done.error


@pytest.mark.e2e
class TestEmailSend:
    def test_message_is_received_by_the_smtp_server(self, db_session, isolated_platform):
        tenant = TenantFactory(overrides={"email_from_domains": ["acme.test"]})
        job = isolated_platform.submit(
            db_session,
            tenant,
            "email.send",
            {
                "to": ["Alice <alice@example.test>", "bob@example.test"],
                "from": "Billing <billing@acme.test>",
                "subject": "Your invoice",
                "text": "Hello in text",
                "html": "<p>Hello in <b>HTML</b></p>",
                "reply_to": "help@acme.test",
            },
        )
        done = wait_job(db_session, job.id)
        assert done.status == "succeeded", done.error
        assert done.result["accepted"] == ["Alice <alice@example.test>", "bob@example.test"]
        assert done.result["refused"] == {}
        received = isolated_platform.smtp.for_recipient("alice@example.test")
        assert len(received) == 1
        entry = received[0]
        assert entry["mail_from"] == "billing@acme.test"
        assert sorted(entry["rcpt_tos"]) == ["alice@example.test", "bob@example.test"]
        msg = entry["message"]
        assert msg["Subject"] == "Your invoice" and msg["Reply-To"] == "help@acme.test"
        assert msg["X-Tenantq-Job"] == job.id and msg["Message-ID"] == f"<{job.id}@acme.test>"
        parts = {
            p.get_content_type(): p.get_payload(decode=True).decode()
            for p in msg.walk()
            if not p.is_multipart()
        }
        assert "Hello in text" in parts["text/plain"] and "<b>HTML</b>" in parts["text/html"]

    def test_default_sender_is_the_operators(self, db_session, isolated_platform):
        tenant = TenantFactory()
        job = isolated_platform.submit(
            db_session, tenant, "email.send", {"to": ["carol@example.test"], "subject": "Hi", "text": "x"}
        )
        done = wait_job(db_session, job.id)
        assert done.status == "succeeded", done.error
        assert done.result["from"] == "Platform <no-reply@platform.test>"
        assert (
            isolated_platform.smtp.for_recipient("carol@example.test")[0]["mail_from"]
            == "no-reply@platform.test"
        )

    def test_sender_outside_allowed_domains_fails_and_sends_nothing(self, db_session, isolated_platform):
        tenant = TenantFactory(overrides={"email_from_domains": ["acme.test"]})
        job = isolated_platform.submit(
            db_session,
            tenant,
            "email.send",
            {"to": ["dave@example.test"], "from": "ceo@evil.test", "subject": "x", "text": "x"},
            max_retries=3,
        )
        done = wait_job(db_session, job.id)
        assert done.status == "failed" and done.attempts == 1
        assert "SenderNotAllowed" in done.error and "evil.test" in done.error
        assert isolated_platform.smtp.for_recipient("dave@example.test") == []

    def test_transient_4xx_is_retried_then_delivered(self, db_session, isolated_platform):
        tenant = TenantFactory()
        job = isolated_platform.submit(
            db_session,
            tenant,
            "email.send",
            {"to": ["busy-1@example.test"], "subject": "retry me", "text": "x"},
            max_retries=3,
        )
        done = wait_job(db_session, job.id, timeout=90)
        assert done.status == "succeeded", done.error
        assert done.attempts == 2
        assert isolated_platform.smtp.busy_seen["busy-1@example.test"] == 2
        assert len(isolated_platform.smtp.for_recipient("busy-1@example.test")) == 1

    def test_rejected_recipient_is_never_retried(self, db_session, isolated_platform):
        tenant = TenantFactory()
        job = isolated_platform.submit(
            db_session,
            tenant,
            "email.send",
            {"to": ["reject-me@example.test"], "subject": "x", "text": "x"},
            max_retries=3,
        )
        done = wait_job(db_session, job.id)
        assert done.status == "failed" and done.attempts == 1
        assert "EmailRejected" in done.error and "550" in done.error

    def test_partly_refused_recipients_are_reported_not_retried(self, db_session, isolated_platform):
        tenant = TenantFactory()
        job = isolated_platform.submit(
            db_session,
            tenant,
            "email.send",
            {"to": ["erin@example.test", "reject-2@example.test"], "subject": "x", "text": "x"},
            max_retries=3,
        )
        done = wait_job(db_session, job.id)
        assert done.status == "succeeded" and done.attempts == 1
        assert done.result["accepted"] == ["erin@example.test"]
        assert done.result["refused"]["reject-2@example.test"].startswith("550")
        assert len(isolated_platform.smtp.for_recipient("erin@example.test")) == 1


def test_environment_proxies_are_ignored(monkeypatch):
    # A proxy from the environment would be contacted instead of the checked address: it must be ignored.
    monkeypatch.setenv("HTTP_PROXY", "http://10.255.255.1:9")
    monkeypatch.setenv("http_proxy", "http://10.255.255.1:9")
    with LocalHttpServer(lambda req: json_reply({"direct": True})) as srv:
        policy = NetworkPolicy(allow=(ipaddress.ip_network("127.0.0.1/32"),))
        with guarded_client(timeout=5, policy=policy) as client:
            assert client.get(srv.url + "/p").json() == {"direct": True}
