"""Tenant-scoped data access for API keys: ``ApiKeyRepository(session, tenant_id)``.

Like ``JobRepository``, the tenant filter lives in ``_scoped`` and nowhere else: a route cannot read
or change another tenant's key because no method here reaches a key without that filter. A key of
another tenant is indistinguishable from a key that does not exist (404, never 403).
"""

from __future__ import annotations

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from tenantq.core.errors import NotFound
from tenantq.tenants.access.models import ApiKey


class ApiKeyRepository:
    def __init__(self, session: Session, tenant_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def _scoped(self) -> Select[tuple[ApiKey]]:
        return select(ApiKey).where(ApiKey.tenant_id == self.tenant_id)

    def get(self, key_id: str) -> ApiKey:
        key = self.session.scalars(self._scoped().where(ApiKey.id == key_id)).first()
        if key is None:
            raise NotFound("API key not found.", details={"id": key_id})
        return key

    def list(self) -> list[ApiKey]:
        return list(self.session.scalars(self._scoped().order_by(ApiKey.created_at.desc(), ApiKey.id)))
