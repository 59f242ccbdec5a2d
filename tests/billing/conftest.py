"""Helpers shared by the billing tests."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from tenantq.billing.usage.models import UsageEvent
from tenantq.tenants.accounts.models import Plan
from tests.billing.invoice_factories import reset_billing_state


def usage_of(session, job_id: str) -> list[UsageEvent]:
    session.expire_all()
    return list(
        session.scalars(select(UsageEvent).where(UsageEvent.job_id == job_id).order_by(UsageEvent.id))
    )


@pytest.fixture
def clean_billing(db_session):
    """Billing periods, invoices and old usage are global: the test starts with none and leaves none.

    Modules use it with ``pytestmark = pytest.mark.usefixtures("clean_billing")`` so that it runs
    before the fixtures named in the test's arguments (a usefixtures mark comes first in the order)."""
    reset_billing_state(db_session)
    yield
    reset_billing_state(db_session)


@pytest.fixture
def make_plan(db_session):
    """A plan of the test's own, with generous rate limits so only quotas decide admission."""

    def make(**values) -> Plan:
        defaults = {
            "display_name": "test plan",
            "submit_rate": 10_000,
            "submit_burst": 10_000,
            "exec_rate": 10_000,
            "concurrency": 100,
            "max_queued": 1_000_000,
            "included_jobs": 1000,
            "included_compute_seconds": 3600,
            "hard_limits": True,
        }
        plan = Plan(name=f"test-{uuid.uuid4().hex[:10]}", **{**defaults, **values})
        db_session.add(plan)
        db_session.commit()
        return plan

    return make
