"""Tenant-scoped data access for API keys: a route cannot read or change another tenant's key because
no method here reaches a key without the tenant filter of ``TenantRepository``."""

from __future__ import annotations

import builtins

from tenantq.core.repository import TenantRepository
from tenantq.tenants.accounts.models import ApiKey


class ApiKeyRepository(TenantRepository[ApiKey]):
    model = ApiKey
    not_found = "API key not found."

    def list(self) -> builtins.list[ApiKey]:
        return builtins.list(
            self.session.scalars(self.select().order_by(ApiKey.created_at.desc(), ApiKey.id))
        )
