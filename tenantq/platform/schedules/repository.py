"""Tenant-scoped data access for schedules (the API's only way to reach them); beat reads due
schedules of every tenant through the unscoped queries in ``service``."""

from __future__ import annotations

import builtins

from tenantq.core.repository import TenantRepository
from tenantq.platform.schedules.models import Schedule


class ScheduleRepository(TenantRepository[Schedule]):
    model = Schedule
    not_found = "Schedule not found."

    def list(
        self, *, limit: int = 100, cursor: str | None = None
    ) -> tuple[builtins.list[Schedule], str | None]:
        return self.page(self.select(), limit=limit, cursor=cursor)
