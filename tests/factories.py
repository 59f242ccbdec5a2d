"""factory-boy factories for the core models. ``bind(session)`` points them at a test's session."""

from __future__ import annotations

import uuid

import factory
from factory.alchemy import SQLAlchemyModelFactory

from tenantq.platform.jobs.models import Job
from tenantq.tenants.access.keys import ALL_SCOPES
from tenantq.tenants.access.models import ApiKey
from tenantq.tenants.access.service import create_api_key
from tenantq.tenants.accounts.models import Tenant

_FACTORIES: list[type[SQLAlchemyModelFactory]] = []


def _register(cls):
    _FACTORIES.append(cls)
    return cls


def bind(session) -> None:
    for cls in _FACTORIES:
        cls._meta.sqlalchemy_session = session


@_register
class TenantFactory(SQLAlchemyModelFactory):
    class Meta:
        model = Tenant
        sqlalchemy_session_persistence = "commit"

    name = factory.Sequence(lambda n: f"tenant-{n}-{uuid.uuid4().hex[:8]}")
    plan_name = "pro"
    status = "active"

    class Params:
        # For tests and benches that submit faster or in bigger batches than a plan's submission
        # rate limit allows: TenantFactory(unthrottled=True).
        unthrottled = factory.Trait(overrides={"submit_rate": 1_000_000, "submit_burst": 10_000_000})


@_register
class ApiKeyFactory(SQLAlchemyModelFactory):
    """Creates a real key through the service; the plaintext is on ``.plaintext`` (shown once)."""

    class Meta:
        model = ApiKey
        sqlalchemy_session_persistence = "commit"

    tenant = factory.SubFactory(TenantFactory)
    scopes = factory.LazyFunction(lambda: list(ALL_SCOPES))
    name = "test key"

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        session = cls._meta.sqlalchemy_session
        row, full = create_api_key(
            session,
            tenant=kwargs["tenant"],
            scopes=kwargs.get("scopes"),
            name=kwargs.get("name", ""),
            expires_at=kwargs.get("expires_at"),
        )
        session.commit()
        row.plaintext = full
        return row


@_register
class JobFactory(SQLAlchemyModelFactory):
    class Meta:
        model = Job
        sqlalchemy_session_persistence = "commit"

    tenant_id = factory.LazyAttribute(lambda o: o.tenant.id)
    task = "demo.echo"
    args = factory.LazyFunction(dict)
    priority = 5
    status = "succeeded"

    class Params:
        tenant = factory.SubFactory(TenantFactory)


def auth(key: ApiKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.plaintext}"}
