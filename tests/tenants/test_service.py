"""Tenant service: effective limits (plan + overrides), override validation, plans, key rotation rules."""

from __future__ import annotations

import re

import pytest

from tenantq.core.errors import InvalidInput
from tenantq.tenants.accounts.models import Plan
from tenantq.tenants.accounts.service import (
    EffectiveLimits,
    effective_limits,
    update_tenant,
    validate_overrides,
)
from tests.conftest import selects_run_by
from tests.factories import ApiKeyFactory, TenantFactory, auth


class TestEffectiveLimits:
    def test_plan_values_without_overrides(self, db_session):
        tenant = TenantFactory(plan_name="pro")
        limits = effective_limits(db_session, tenant)
        plan = db_session.get(Plan, "pro")
        assert isinstance(limits, EffectiveLimits) and limits.plan == "pro"
        assert (limits.submit_rate, limits.concurrency, limits.weight) == (
            plan.submit_rate,
            plan.concurrency,
            plan.weight,
        )

    def test_overrides_win(self, db_session):
        tenant = TenantFactory(
            plan_name="free", overrides={"concurrency": 7, "priority_max": 9, "exec_rate": 2.5}
        )
        limits = effective_limits(db_session, tenant)
        assert limits.concurrency == 7 and limits.priority_max == 9 and limits.exec_rate == 2.5
        assert limits.submit_burst == db_session.get(Plan, "free").submit_burst

    def test_bad_stored_overrides_are_ignored_not_fatal(self, db_session):
        # Written around the service (a hand-edited row): unknown keys and out-of-bounds values fall back.
        tenant = TenantFactory(
            plan_name="free", overrides={"colour": "red", "concurrency": -4, "priority_min": 8}
        )
        limits = effective_limits(db_session, tenant)
        free = db_session.get(Plan, "free")
        assert limits.concurrency == free.concurrency
        assert (limits.priority_min, limits.priority_max) == (free.priority_min, free.priority_max)

    def test_validate_overrides(self, db_session):
        free = db_session.get(Plan, "free")  # priority 0-5
        assert validate_overrides(free, {"submit_rate": 3, "hard_limits": None}) == {"submit_rate": 3.0}
        for bad in (
            {"submit_rate": 0},
            {"weight": 0},
            {"priority_min": 6},
            {"nope": 1},
            {"max_queued": "lots"},
            {"submit_rate": float("nan")},
            {"concurrency": 10**7},
        ):
            with pytest.raises(InvalidInput):
                validate_overrides(free, bad)

    def test_plan_change_revalidates_overrides(self, db_session):
        tenant = TenantFactory(plan_name="pro", overrides={"priority_min": 7})
        with pytest.raises(InvalidInput):
            update_tenant(db_session, tenant, plan="free")  # free caps priority at 5
        db_session.rollback()


class TestLimitsReadOncePerTransaction:
    """A submission reads its tenant's limits five times (policy, queue bound, submission rate, quota,
    release): the plan is read once, and the result is kept until the session writes or ends."""

    @staticmethod
    def plan_selects(run) -> list[str]:
        # SQLAlchemy quotes the table's name (PLAN is a reserved word on PostgreSQL).
        return [s for s in selects_run_by(run) if re.search(r'FROM "?plan"?\s', s)]

    def test_a_submission_reads_the_plan_once(self, db_session):
        from tenantq.platform.jobs.schemas import JobCreate
        from tenantq.platform.jobs.service import submit_job
        from tenantq.tenants.accounts.models import Tenant

        tenant_id = TenantFactory(plan_name="pro").id
        db_session.expunge_all()
        tenant = db_session.get(Tenant, tenant_id)
        selects = self.plan_selects(lambda: submit_job(db_session, tenant, JobCreate(task="demo.echo")))
        assert len(selects) == 1, selects

    def test_a_flushed_plan_change_is_seen_at_once(self, db_session):
        tenant = TenantFactory(plan_name="pro")
        before = effective_limits(db_session, tenant).concurrency
        plan = db_session.get(Plan, "pro")
        plan.concurrency = before + 1
        db_session.flush()
        try:
            assert effective_limits(db_session, tenant).concurrency == before + 1
        finally:
            db_session.rollback()
        assert effective_limits(db_session, tenant).concurrency == before

    def test_changed_overrides_are_seen_without_a_flush(self, db_session):
        tenant = TenantFactory(plan_name="pro", overrides={"concurrency": 3})
        assert effective_limits(db_session, tenant).concurrency == 3
        tenant.overrides = {"concurrency": 4}
        assert effective_limits(db_session, tenant).concurrency == 4
        db_session.rollback()


class TestOverridesReachSubmission:
    def test_priority_range_and_retries_follow_overrides(self, api):
        tenant = TenantFactory(plan_name="free")  # free: priority 0-5, max_retries 3
        key = ApiKeyFactory(tenant=tenant)
        assert (
            api.post("/v1/jobs", json={"task": "demo.echo", "priority": 8}, headers=auth(key)).status_code
            == 422
        )
        resp = api.patch(
            f"/admin/v1/tenants/{tenant.id}",
            json={"overrides": {"priority_max": 9, "max_retries": 5}},
            headers={"Authorization": "Bearer test-admin-token-0123456789abcdef"},
        )
        assert resp.status_code == 200
        ok = api.post(
            "/v1/jobs", json={"task": "demo.echo", "priority": 8, "max_retries": 5}, headers=auth(key)
        )
        assert ok.status_code == 202, ok.text
