"""Data access for tenants and plans: ``AccountRepository(session)``.

Tenants and plans are the accounts themselves, not data a tenant owns, so this repository is not
bound to a tenant: its callers are the operator API, the CLI, and the services every area uses to
read a tenant's plan and limits.
"""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from tenantq.tenants.accounts.models import Plan, Tenant


class AccountRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    # ------------------------------------------------------------------------------------ tenants
    def tenant(self, tenant_id: str) -> Tenant | None:
        return self.session.get(Tenant, tenant_id)

    def tenant_by_ref(self, ref: str) -> Tenant | None:
        """A tenant by id or by name (the CLI accepts either)."""
        return self.session.scalars(select(Tenant).where(or_(Tenant.id == ref, Tenant.name == ref))).first()

    def name_taken(self, name: str, *, except_id: str | None = None) -> bool:
        query = select(Tenant.id).where(Tenant.name == name)
        if except_id is not None:
            query = query.where(Tenant.id != except_id)
        return self.session.scalars(query).first() is not None

    def tenants(self, *, status: str | None = None) -> list[Tenant]:
        query = select(Tenant).order_by(Tenant.name)
        if status:
            query = query.where(Tenant.status == status)
        return list(self.session.scalars(query))

    def tenants_on_plan(self, plan_name: str) -> list[Tenant]:
        return list(self.session.scalars(select(Tenant).where(Tenant.plan_name == plan_name)))

    # -------------------------------------------------------------------------------------- plans
    def plan(self, name: str) -> Plan | None:
        return self.session.get(Plan, name)

    def plans(self) -> list[Plan]:
        return list(self.session.scalars(select(Plan).order_by(Plan.name)))

    def add(self, row: Tenant | Plan) -> None:
        self.session.add(row)
        self.session.flush()
