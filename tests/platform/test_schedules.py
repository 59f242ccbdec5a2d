"""Per-tenant schedules: the API (validation, plan limits, isolation), timing, firing through the jobs
service, and real beat processes (firing, runtime edits, two beats without duplicate firings)."""

from __future__ import annotations

import re
import sys
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from tenantq.platform.jobs.models import Job
from tenantq.platform.schedules import service
from tenantq.platform.schedules.models import Schedule
from tests.conftest import ProcessGroup, wait_until
from tests.factories import ApiKeyFactory, TenantFactory, auth


def jobs_of(session, tenant_id: str) -> list[Job]:
    session.expire_all()
    return list(session.scalars(select(Job).where(Job.tenant_id == tenant_id).order_by(Job.created_at)))


def make_schedule(session, tenant, **fields) -> Schedule:
    from tenantq.platform.schedules.schemas import ScheduleCreate

    data = {"task": "demo.echo", "args": {"from": "schedule"}, "interval_seconds": 3600, **fields}
    schedule = service.create_schedule(session, tenant, ScheduleCreate(**data))
    # The request's session dependency commits in the API; here the test does, so beat sees the row.
    session.commit()
    return schedule


class TestScheduleApi:
    def test_create_cron_schedule_shows_next_run_in_utc(self, api):
        key = ApiKeyFactory()
        resp = api.post(
            "/v1/schedules",
            json={
                "name": "weekly report",
                "task": "demo.echo",
                "args": {"r": 1},
                "priority": 7,
                "cron": "0 8 * * 1",
                "timezone": "Europe/Paris",
            },
            headers=auth(key),
        )
        assert resp.status_code == 201, resp.text
        body = resp.json()
        assert body["enabled"] is True and body["runs"] == 0 and body["last_run_at"] is None
        assert (
            body["cron"] == "0 8 * * 1"
            and body["timezone"] == "Europe/Paris"
            and body["interval_seconds"] is None
        )
        nxt = datetime.fromisoformat(body["next_run_at"])
        local = nxt.astimezone(ZoneInfo("Europe/Paris"))
        assert (local.weekday(), local.hour, local.minute) == (0, 8, 0)
        assert timedelta(0) < nxt - datetime.now(UTC) <= timedelta(days=7)

    def test_get_list_patch_delete(self, api):
        key = ApiKeyFactory()
        created = api.post(
            "/v1/schedules", json={"task": "demo.echo", "interval_seconds": 3600}, headers=auth(key)
        ).json()
        sid = created["id"]
        assert api.get(f"/v1/schedules/{sid}", headers=auth(key)).json()["id"] == sid
        assert [s["id"] for s in api.get("/v1/schedules", headers=auth(key)).json()["items"]] == [sid]

        disabled = api.patch(f"/v1/schedules/{sid}", json={"enabled": False}, headers=auth(key)).json()
        assert disabled["enabled"] is False and disabled["next_run_at"] is None
        switched = api.patch(
            f"/v1/schedules/{sid}",
            json={"enabled": True, "cron": "*/5 * * * *", "name": "n"},
            headers=auth(key),
        )
        assert switched.status_code == 200, switched.text
        body = switched.json()
        assert body["cron"] == "*/5 * * * *" and body["interval_seconds"] is None and body["name"] == "n"
        assert datetime.fromisoformat(body["next_run_at"]).minute % 5 == 0

        assert api.delete(f"/v1/schedules/{sid}", headers=auth(key)).status_code == 204
        assert api.get(f"/v1/schedules/{sid}", headers=auth(key)).status_code == 404

    @pytest.mark.parametrize(
        "body,code,needle",
        [
            ({"cron": "61 * * * *"}, "invalid_cron", "Invalid cron expression"),
            ({"cron": "0 8 * *"}, "invalid_cron", "5 fields"),
            ({"cron": "* * * * * *"}, "invalid_cron", "5 fields"),
            ({"cron": "0 8 * * 1", "timezone": "Mars/Olympus"}, "invalid_timezone", "Mars/Olympus"),
            ({}, "invalid_schedule_timing", "exactly one"),
            ({"cron": "0 8 * * 1", "interval_seconds": 60}, "invalid_schedule_timing", "exactly one"),
        ],
    )
    def test_invalid_timing_answers_422(self, api, body, code, needle):
        key = ApiKeyFactory()
        resp = api.post("/v1/schedules", json={"task": "demo.echo", **body}, headers=auth(key))
        assert resp.status_code == 422, resp.text
        assert resp.json()["error"]["code"] == code and needle in resp.json()["error"]["message"]

    def test_task_and_args_are_validated_like_jobs(self, api):
        key = ApiKeyFactory()
        unknown = api.post(
            "/v1/schedules", json={"task": "nope.nope", "interval_seconds": 3600}, headers=auth(key)
        )
        assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_task"
        bad = api.post(
            "/v1/schedules",
            json={"task": "demo.sleep", "args": {"seconds": -1}, "interval_seconds": 3600},
            headers=auth(key),
        )
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_args"
        sid = api.post(
            "/v1/schedules",
            json={"task": "demo.sleep", "args": {"seconds": 1}, "interval_seconds": 3600},
            headers=auth(key),
        ).json()["id"]
        patched = api.patch(f"/v1/schedules/{sid}", json={"args": {"seconds": "x"}}, headers=auth(key))
        assert patched.status_code == 422 and patched.json()["error"]["code"] == "invalid_args"
        too_many = api.post(
            "/v1/schedules",
            json={"task": "demo.echo", "max_retries": 50, "interval_seconds": 3600},
            headers=auth(key),
        )  # pro plan: 10 at most
        assert too_many.status_code == 422 and too_many.json()["error"]["code"] == "max_retries_not_allowed"

    def test_plan_minimum_interval(self, api):
        free = ApiKeyFactory(tenant=TenantFactory(plan_name="free"))
        resp = api.post(
            "/v1/schedules", json={"task": "demo.echo", "interval_seconds": 60}, headers=auth(free)
        )
        assert resp.status_code == 422
        err = resp.json()["error"]
        assert err["code"] == "schedule_interval_too_short" and err["details"]["minimum_seconds"] == 300
        assert err["details"]["limit"] == "min_schedule_interval_s"
        every_minute = api.post(
            "/v1/schedules", json={"task": "demo.echo", "cron": "* * * * *"}, headers=auth(free)
        )
        assert (
            every_minute.status_code == 422
            and every_minute.json()["error"]["details"]["interval_seconds"] == 60
        )
        ok = api.post(
            "/v1/schedules", json={"task": "demo.echo", "interval_seconds": 300}, headers=auth(free)
        )
        assert ok.status_code == 201
        enterprise = ApiKeyFactory(tenant=TenantFactory(plan_name="enterprise"))
        every_second = api.post(
            "/v1/schedules", json={"task": "demo.echo", "interval_seconds": 1}, headers=auth(enterprise)
        )
        assert every_second.status_code == 201
        # Not left enabled: beats started by later tests would keep firing it.
        api.delete(f"/v1/schedules/{every_second.json()['id']}", headers=auth(enterprise))

    def test_plan_maximum_number_of_schedules(self, api):
        key = ApiKeyFactory(tenant=TenantFactory(plan_name="free"))
        for _ in range(5):
            assert (
                api.post(
                    "/v1/schedules", json={"task": "demo.echo", "interval_seconds": 3600}, headers=auth(key)
                ).status_code
                == 201
            )
        resp = api.post(
            "/v1/schedules", json={"task": "demo.echo", "interval_seconds": 3600}, headers=auth(key)
        )
        assert resp.status_code == 429
        err = resp.json()["error"]
        assert err["code"] == "schedule_limit_reached" and err["details"] == {
            "limit": "max_schedules",
            "max": 5,
            "used": 5,
        }

    def test_tenant_override_beats_plan_limit(self, api):
        key = ApiKeyFactory(tenant=TenantFactory(plan_name="pro", overrides={"max_schedules": 1}))
        assert (
            api.post(
                "/v1/schedules", json={"task": "demo.echo", "interval_seconds": 3600}, headers=auth(key)
            ).status_code
            == 201
        )
        assert (
            api.post(
                "/v1/schedules", json={"task": "demo.echo", "interval_seconds": 3600}, headers=auth(key)
            ).status_code
            == 429
        )

    def test_other_tenants_schedules_are_404(self, api):
        owner, other = ApiKeyFactory(), ApiKeyFactory()
        sid = api.post(
            "/v1/schedules", json={"task": "demo.echo", "interval_seconds": 3600}, headers=auth(owner)
        ).json()["id"]
        assert api.get(f"/v1/schedules/{sid}", headers=auth(other)).status_code == 404
        assert (
            api.patch(f"/v1/schedules/{sid}", json={"enabled": False}, headers=auth(other)).status_code == 404
        )
        assert api.delete(f"/v1/schedules/{sid}", headers=auth(other)).status_code == 404
        assert api.get("/v1/schedules", headers=auth(other)).json()["items"] == []
        assert api.get(f"/v1/schedules/{sid}", headers=auth(owner)).json()["enabled"] is True

    def test_scopes_are_required(self, api):
        reader = ApiKeyFactory(scopes=["jobs:read"])
        resp = api.post(
            "/v1/schedules", json={"task": "demo.echo", "interval_seconds": 3600}, headers=auth(reader)
        )
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "missing_scope"
        assert api.get("/v1/schedules").status_code == 401


class TestTiming:
    def test_cron_follows_the_time_zone_across_dst(self):
        paris = ZoneInfo("Europe/Paris")
        winter = service.next_cron("0 8 * * *", paris, datetime(2026, 1, 10, 12, tzinfo=UTC))
        summer = service.next_cron("0 8 * * *", paris, datetime(2026, 7, 10, 12, tzinfo=UTC))
        assert winter == datetime(2026, 1, 11, 7, tzinfo=UTC)  # UTC+1
        assert summer == datetime(2026, 7, 11, 6, tzinfo=UTC)  # UTC+2

    def test_interval_keeps_its_phase_and_coalesces_missed_runs(self):
        sched = Schedule(interval_seconds=10)
        due = datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)
        assert service.next_after(sched, due, due + timedelta(seconds=0.3)) == due + timedelta(seconds=10)
        # Beat was away for 35 s: one firing now, then back on the 10 s grid.
        assert service.next_after(sched, due, due + timedelta(seconds=35)) == due + timedelta(seconds=40)


class TestFiring:
    def test_due_schedule_creates_a_job_through_the_jobs_service(self, db_session, redis_client):
        tenant = TenantFactory(plan_name="enterprise")
        sched = make_schedule(db_session, tenant, interval_seconds=60, priority=8, max_retries=2)
        due = sched.next_run_at
        now = due + timedelta(seconds=0.5)
        assert sched.id in [s.id for s in service.due_schedules(db_session, now)]
        assert sched.id not in [s.id for s in service.due_schedules(db_session, due - timedelta(seconds=1))]
        firing = service.fire(db_session, sched, now)
        assert firing is not None and firing.error is None
        job = db_session.get(Job, firing.job_id)
        assert (
            job.tenant_id == tenant.id
            and job.task == "demo.echo"
            and job.priority == 8
            and job.max_retries == 2
        )
        assert job.args == {"from": "schedule"}
        assert job.idempotency_key == service.idempotency_key(sched.id, due)
        db_session.refresh(sched)
        assert (
            sched.runs == 1
            and sched.last_job_id == job.id
            and sched.next_run_at == due + timedelta(seconds=60)
        )

    def test_one_due_time_fires_once_when_two_beats_race(self, db_session):
        from tenantq.core.db import session_factory

        tenant = TenantFactory(plan_name="enterprise")
        sched = make_schedule(db_session, tenant, interval_seconds=60)
        now = sched.next_run_at + timedelta(seconds=0.1)
        # Two beats read the same due row before either claims it.
        beat_a, beat_b = session_factory()(), session_factory()()
        try:
            row_a, row_b = beat_a.get(Schedule, sched.id), beat_b.get(Schedule, sched.id)
            first = service.fire(beat_a, row_a, now)
            second = service.fire(beat_b, row_b, now)
        finally:
            beat_a.close()
            beat_b.close()
        assert first is not None and first.job_id is not None
        assert second is None
        assert len(jobs_of(db_session, tenant.id)) == 1

    def test_an_edit_between_read_and_claim_wins(self, db_session, api):
        from tenantq.core.db import session_factory

        key = ApiKeyFactory(tenant=TenantFactory(plan_name="enterprise"))
        sid = api.post(
            "/v1/schedules", json={"task": "demo.echo", "interval_seconds": 5}, headers=auth(key)
        ).json()["id"]
        beat = session_factory()()
        try:
            stale = beat.get(Schedule, sid)
            api.patch(f"/v1/schedules/{sid}", json={"enabled": False}, headers=auth(key))
            assert service.fire(beat, stale, stale.next_run_at + timedelta(seconds=1)) is None
        finally:
            beat.close()
        assert jobs_of(db_session, key.tenant_id) == []

    def test_refused_firing_is_recorded_and_the_schedule_moves_on(self, db_session):
        tenant = TenantFactory(plan_name="enterprise")
        sched = make_schedule(db_session, tenant, interval_seconds=60)
        tenant.status = "suspended"
        db_session.commit()
        due = sched.next_run_at
        firing = service.fire(db_session, sched, due + timedelta(seconds=1))
        assert firing.job_id is None and "tenant_suspended" in firing.error
        db_session.refresh(sched)
        assert sched.last_error.startswith("tenant_suspended") and sched.next_run_at > due
        assert jobs_of(db_session, tenant.id) == []

    def test_disabled_schedules_never_fire(self, db_session):
        tenant = TenantFactory(plan_name="enterprise")
        sched = make_schedule(db_session, tenant, interval_seconds=60, enabled=False)
        assert sched.next_run_at is None
        assert sched.id not in [
            s.id for s in service.due_schedules(db_session, datetime.now(UTC) + timedelta(days=400))
        ]
        assert service.fire(db_session, sched) is None
        assert jobs_of(db_session, tenant.id) == []


def start_beat(group: ProcessGroup, name: str):
    return group.start(name, [sys.executable, "-m", "tenantq.cli", "beat", "--loglevel", "INFO"])


# Works for JSON log lines too: ids and timestamps never contain quotes or commas.
FIRED = re.compile(r"fired schedule ([^\s\",]+) due ([^\s\",]+) -> job ([^\s\",]+)")


def fired_lines(group: ProcessGroup, names: list[str], schedule_id: str) -> list[tuple[str, str, str]]:
    out = []
    for name in names:
        for sid, due, job in FIRED.findall(group.log(name)):
            if sid == schedule_id:
                out.append((name, due, job))
    return out


@pytest.mark.e2e
class TestBeat:
    def test_interval_schedule_fires_repeatedly_and_stops_when_disabled(
        self, api, db_session, platform_env, platform_processes, tmp_path
    ):
        key = ApiKeyFactory(tenant=TenantFactory(plan_name="enterprise"))
        group = ProcessGroup(platform_env, tmp_path)
        try:
            start_beat(group, "beat")
            # Created while beat runs: beat picks it up from SQL without a restart.
            sid = api.post(
                "/v1/schedules",
                json={"task": "demo.echo", "args": {"tick": True}, "interval_seconds": 1},
                headers=auth(key),
            ).json()["id"]

            def two_succeeded():
                jobs = jobs_of(db_session, key.tenant_id)
                return len([j for j in jobs if j.status == "succeeded"]) >= 2

            wait_until(two_succeeded, timeout=90, interval=0.2, message="two scheduled jobs to succeed")
            jobs = jobs_of(db_session, key.tenant_id)
            assert all(j.task == "demo.echo" and j.args == {"tick": True} for j in jobs)
            assert all(j.idempotency_key.startswith(f"schedule:{sid}:") for j in jobs)
            assert len({j.idempotency_key for j in jobs}) == len(jobs)
            shown = api.get(f"/v1/schedules/{sid}", headers=auth(key)).json()
            assert shown["runs"] >= 2 and shown["last_run_at"] and shown["last_job_id"]

            patched = api.patch(f"/v1/schedules/{sid}", json={"enabled": False}, headers=auth(key))
            assert patched.status_code == 200 and patched.json()["next_run_at"] is None
            # Every firing claimed before the edit is counted in runs; its job may land just after it.
            runs = patched.json()["runs"]
            wait_until(
                lambda: len(jobs_of(db_session, key.tenant_id)) == runs,
                timeout=30,
                message="the last claimed firing's job",
            )
            time.sleep(3.5)  # more than three intervals and three beat polls
            assert len(jobs_of(db_session, key.tenant_id)) == runs
            assert api.get(f"/v1/schedules/{sid}", headers=auth(key)).json()["runs"] == runs
        finally:
            group.stop_all()

    def test_two_beats_fire_each_due_time_once(
        self, api, db_session, platform_env, platform_processes, tmp_path
    ):
        key = ApiKeyFactory(tenant=TenantFactory(plan_name="enterprise"))
        group = ProcessGroup(platform_env, tmp_path)
        try:
            start_beat(group, "beat-a")
            start_beat(group, "beat-b")
            wait_until(
                lambda: (
                    "tenant schedules: reading from SQL" in group.log("beat-a")
                    and "tenant schedules: reading from SQL" in group.log("beat-b")
                ),
                timeout=60,
                interval=0.2,
                message="both beats to start",
            )
            sid = api.post(
                "/v1/schedules", json={"task": "demo.echo", "interval_seconds": 1}, headers=auth(key)
            ).json()["id"]
            wait_until(
                lambda: len(jobs_of(db_session, key.tenant_id)) >= 5,
                timeout=90,
                interval=0.2,
                message="five firings",
            )
            runs = api.patch(f"/v1/schedules/{sid}", json={"enabled": False}, headers=auth(key)).json()[
                "runs"
            ]
            wait_until(
                lambda: len(fired_lines(group, ["beat-a", "beat-b"], sid)) >= runs,
                timeout=30,
                message="every claimed firing to be logged",
            )
        finally:
            group.stop_all()
        jobs = jobs_of(db_session, key.tenant_id)
        lines = fired_lines(group, ["beat-a", "beat-b"], sid)
        dues = [due for _, due, _ in lines]
        assert len(dues) == len(set(dues)), f"a due time fired twice: {lines}"
        # Every firing either beat logged is exactly one job, and every job comes from one logged firing.
        assert len(lines) == runs == len(jobs) >= 5
        assert sorted(job for _, _, job in lines) == sorted(j.id for j in jobs)
        assert len({j.idempotency_key for j in jobs}) == len(jobs)
