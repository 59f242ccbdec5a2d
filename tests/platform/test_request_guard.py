"""Bad input on the wire: every case answers a clear 4xx in the one error shape and writes nothing."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from tenantq.core.settings import get_settings
from tenantq.platform.jobs.models import Job
from tests.factories import ApiKeyFactory, auth


def job_count(session, tenant_id: str) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id))


def check(resp, status: int, code: str | None = None) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    if code:
        assert body["error"]["code"] == code, body


@pytest.fixture
def key():
    return ApiKeyFactory()


def post_raw(api, key, raw: bytes | str, content_type: str = "application/json"):
    return api.post("/v1/jobs", content=raw, headers={**auth(key), "content-type": content_type})


class TestBodySize:
    def test_declared_too_large(self, api, key, db_session):
        big = json.dumps({"task": "demo.echo", "args": {"blob": "x" * (get_settings().max_body_bytes + 10)}})
        check(post_raw(api, key, big), 413, "payload_too_large")
        assert job_count(db_session, key.tenant_id) == 0

    def test_chunked_without_content_length(self, api, key, db_session):
        limit = get_settings().max_body_bytes

        def chunks():
            yield b'{"task": "demo.echo", "args": {"blob": "'
            for _ in range(limit // 65536 + 2):
                yield b"x" * 65536
            yield b'"}}'

        resp = api.post(
            "/v1/jobs", content=chunks(), headers={**auth(key), "content-type": "application/json"}
        )
        check(resp, 413, "payload_too_large")
        assert job_count(db_session, key.tenant_id) == 0

    def test_small_chunked_body_is_fine(self, api, key):
        def chunks():
            yield b'{"task": "demo.echo",'
            yield b' "args": {"a": 1}}'

        resp = api.post(
            "/v1/jobs", content=chunks(), headers={**auth(key), "content-type": "application/json"}
        )
        assert resp.status_code == 202 and resp.json()["args"] == {"a": 1}

    def test_invalid_content_length(self, api, key):
        check(
            api.post(
                "/v1/jobs",
                content=b"{}",
                headers={**auth(key), "content-length": "abc", "content-type": "application/json"},
            ),
            400,
        )


class TestJsonShape:
    def test_malformed_and_not_utf8(self, api, key, db_session):
        check(post_raw(api, key, b'{"task": "demo.echo",'), 400, "malformed_json")
        check(post_raw(api, key, b'{"task": "demo.\xff\xfe"}'), 400, "malformed_json")
        assert job_count(db_session, key.tenant_id) == 0

    def test_wrong_types_unknown_fields(self, api, key, db_session):
        for body in (
            {"task": "demo.echo", "priority": "high"},
            {"task": "demo.echo", "args": [1, 2]},
            {"task": 5},
            {"task": "demo.echo", "priority": 10**100},
            {"task": "demo.echo", "colour": 1},
            {},
            [],
            "demo.echo",
        ):
            check(api.post("/v1/jobs", json=body, headers=auth(key)), 422, "invalid_input")
        check(post_raw(api, key, b'{"task": "demo.echo"}', "text/plain"), 422)
        assert job_count(db_session, key.tenant_id) == 0

    def test_nan_and_infinity(self, api, key, db_session):
        for raw in (
            '{"task": "demo.echo", "countdown": NaN}',
            '{"task": "demo.echo", "countdown": Infinity}',
            '{"task": "demo.echo", "args": {"x": -Infinity}}',
        ):
            check(post_raw(api, key, raw), 422, "invalid_number")
        assert job_count(db_session, key.tenant_id) == 0

    def test_absurd_countdowns(self, api, key, db_session):
        for countdown in (-5, -0.001, 1e308, 10**12, 366 * 24 * 3600 + 1, "tomorrow"):
            check(
                api.post("/v1/jobs", json={"task": "demo.echo", "countdown": countdown}, headers=auth(key)),
                422,
            )
        assert job_count(db_session, key.tenant_id) == 0

    def test_deep_nesting(self, api, key, db_session):
        for depth in (100, 50_000):
            raw = '{"task": "demo.echo", "args": {"x": ' + "[" * depth + "]" * depth + "}}"
            check(post_raw(api, key, raw), 422, "too_deeply_nested")
        ok = '{"task": "demo.echo", "args": {"x": ' + "[" * 20 + "]" * 20 + "}}"
        assert post_raw(api, key, ok).status_code == 202

    def test_huge_but_allowed_args_round_trip(self, api, key):
        blob = "y" * 200_000
        resp = api.post("/v1/jobs", json={"task": "demo.echo", "args": {"blob": blob}}, headers=auth(key))
        assert resp.status_code == 202
        assert api.get(f"/v1/jobs/{resp.json()['id']}", headers=auth(key)).json()["args"]["blob"] == blob


class TestUnicode:
    @pytest.mark.parametrize(
        "raw",
        [
            '{"task": "demo.echo", "args": {"s": "a\\u0000b"}}',
            '{"task": "demo.echo", "args": {"a\\u0000": 1}}',
            '{"task": "demo.echo\\u0000"}',
            '{"task": "demo.echo", "idempotency_key": "k\\u0000"}',
            '{"task": "demo.echo", "args": {"deep": [{"s": ["\\u0000"]}]}}',
        ],
    )
    def test_nul_is_422(self, api, key, db_session, raw):
        check(post_raw(api, key, raw), 422, "invalid_text")
        assert job_count(db_session, key.tenant_id) == 0

    @pytest.mark.parametrize(
        "raw",
        [
            '{"task": "demo.echo", "args": {"s": "\\ud800"}}',
            '{"task": "demo.echo", "args": {"s": "x\\udfff"}}',
            '{"task": "demo.echo", "args": {"\\ude00": 1}}',
            '{"task": "demo.echo", "idempotency_key": "\\ud83d"}',
        ],
    )
    def test_lone_surrogates_are_422(self, api, key, db_session, raw):
        check(post_raw(api, key, raw), 422, "invalid_text")
        assert job_count(db_session, key.tenant_id) == 0

    def test_rtl_emoji_and_escaped_pairs_round_trip(self, api, key):
        text = "שלום \u202eevil\u202c مرحبا 🚀👩‍💻 e\u0301"
        raw = json.dumps(
            {"task": "demo.echo", "args": {"text": text, "🔑": "مفتاح"}, "idempotency_key": "🙂-\u05d0"}
        )
        assert "\\ud83d" in raw  # json.dumps escapes astral characters as surrogate pairs: those are valid
        resp = post_raw(api, key, raw)
        assert resp.status_code == 202, resp.text
        job = api.get(f"/v1/jobs/{resp.json()['id']}", headers=auth(key)).json()
        assert job["args"] == {"text": text, "🔑": "مفتاح"} and job["idempotency_key"] == "🙂-\u05d0"

    def test_nul_in_url(self, api, key):
        check(api.get("/v1/jobs/abc%00def", headers=auth(key)), 422, "invalid_text")
        check(api.get("/v1/jobs?task=demo%00", headers=auth(key)), 422, "invalid_text")
        check(api.get("/v1/keys/x%00", headers=auth(key)), 422, "invalid_text")

    def test_odd_ids_are_plain_404(self, api, key):
        for job_id in ("%F0%9F%9A%80", "%D7%A9", "..%2F..%2Fetc", "'%20OR%201=1--", "x" * 300, "%ED%A0%80"):
            check(api.get(f"/v1/jobs/{job_id}", headers=auth(key)), 404, "not_found")


class TestDisconnect:
    def test_client_leaving_mid_body_runs_nothing(self, key, db_session):
        import asyncio

        from tenantq.app import create_app

        app = create_app()
        sent: list[dict] = []
        messages = [
            {"type": "http.request", "body": b'{"task": "demo.echo", "args": {"x": ', "more_body": True},
            {"type": "http.disconnect"},
        ]

        async def receive():
            return messages.pop(0)

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/jobs",
            "raw_path": b"/v1/jobs",
            "query_string": b"",
            "root_path": "",
            "client": ("127.0.0.1", 1234),
            "server": ("testserver", 80),
            "headers": [
                (b"authorization", auth(key)["Authorization"].encode()),
                (b"content-type", b"application/json"),
            ],
        }
        asyncio.run(app(scope, receive, send))
        assert sent == []
        assert job_count(db_session, key.tenant_id) == 0
