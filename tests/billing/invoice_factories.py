"""Factories for billing tests: usage events written straight to SQL (what metering would record)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import factory
from factory.alchemy import SQLAlchemyModelFactory
from sqlalchemy import delete

from tenantq.billing.invoicing.models import (
    BillingPeriod,
    Invoice,
    InvoiceLine,
    StripeCustomer,
    StripeEvent,
    StripeMeterCursor,
)
from tenantq.billing.invoicing.pricing import price_plan_usage, total
from tenantq.billing.usage.models import UsageEvent
from tenantq.core.periods import Period
from tenantq.tenants.accounts.models import Plan, Tenant
from tests.factories import TenantFactory, _register

# Billing tests live in the distant past so their periods never meet usage from the rest of the suite.
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


@_register
class UsageEventFactory(SQLAlchemyModelFactory):
    class Meta:
        model = UsageEvent
        sqlalchemy_session_persistence = "commit"

    job_id = factory.LazyFunction(lambda: str(uuid.uuid4()))
    attempt = 1
    metric = "jobs"
    id = factory.LazyAttribute(lambda o: f"{o.job_id}:{o.attempt}:{o.metric}")
    tenant_id = factory.LazyAttribute(lambda o: o.tenant.id)
    task = "demo.echo"
    quantity = 1
    state = "succeeded"
    occurred_at = factory.LazyFunction(lambda: datetime(2001, 1, 15, tzinfo=UTC))
    recorded_at = factory.LazyAttribute(lambda o: o.occurred_at)

    class Params:
        tenant = factory.SubFactory(TenantFactory)


@_register
class InvoiceFactory(SQLAlchemyModelFactory):
    """One tenant's issued invoice, written straight to SQL and priced by its plan's real prices.

    For tests that need an invoice of one tenant without closing a period (a close is global: it bills
    every tenant). ``usage`` is metric -> quantity as metering records it (``jobs``, ``compute_ms``...);
    the default period is far in the past and closes nothing, so it never meets the billing tests'.
    """

    class Meta:
        model = Invoice
        sqlalchemy_session_persistence = "commit"

    tenant = factory.SubFactory(TenantFactory)
    period = "1999-12"
    usage = factory.LazyFunction(dict)

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        session = cls._meta.sqlalchemy_session
        tenant, usage, p = kwargs.pop("tenant"), kwargs.pop("usage"), Period.parse(kwargs.pop("period"))
        plan = session.get(Plan, tenant.plan_name)
        lines = price_plan_usage(session, plan, usage)
        amount = total(lines)
        kwargs.setdefault("status", "open" if amount > 0 else "paid")
        invoice = model_class(
            tenant_id=tenant.id,
            period=p.name,
            plan_name=plan.name,
            currency=plan.currency.lower(),
            total=amount,
            period_start=p.start,
            period_end=p.end,
            **kwargs,
        )
        invoice.lines = [
            InvoiceLine(
                position=i,
                metric=line.metric,
                tier=line.tier,
                description=line.description,
                quantity=line.quantity,
                unit_price=line.unit_price,
                amount=line.amount,
            )
            for i, line in enumerate(lines)
        ]
        session.add(invoice)
        session.commit()
        return invoice


def old_tenant(plan: str = "pro", **kwargs):
    """A tenant that existed before every period the billing tests close."""
    return TenantFactory(plan_name=plan, created_at=LONG_AGO, **kwargs)


def reset_billing_state(session) -> None:
    """Billing periods are global: each test starts with none closed and no old usage left over."""
    session.rollback()
    session.execute(delete(StripeEvent))
    session.execute(delete(Invoice))
    session.execute(delete(BillingPeriod))
    session.execute(delete(StripeCustomer))
    session.execute(delete(StripeMeterCursor))
    session.execute(delete(UsageEvent).where(UsageEvent.occurred_at < datetime(2020, 1, 1, tzinfo=UTC)))
    # Old tenants would get a base-fee invoice from every later close.
    session.execute(delete(Tenant).where(Tenant.created_at < datetime(2020, 1, 1, tzinfo=UTC)))
    session.commit()
