"""Tenant-scoped data access for API keys: ``ApiKeyRepository(session, tenant_id)``.

A route cannot read or change another tenant's key because no method here reaches a key without the
tenant filter of ``TenantRepository``; another tenant's key is indistinguishable from a key that does
not exist (404, never 403).
"""

from __future__ import annotations

import builtins

from tenantq.core.repository import TenantRepository
from tenantq.tenants.access.models import ApiKey


class ApiKeyRepository(TenantRepository[ApiKey]):
    model = ApiKey
    not_found = "API key not found."

    def list(self) -> builtins.list[ApiKey]:
        return builtins.list(
            self.session.scalars(self.select().order_by(ApiKey.created_at.desc(), ApiKey.id))
        )
