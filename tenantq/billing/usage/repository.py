"""Tenant-scoped reads of usage events: the sums behind ``GET /v1/usage`` and the usage reports.
System-wide sums (quota counter sync, period close, the operator report) read every tenant in their
own unscoped sessions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import InstrumentedAttribute

from tenantq.billing.usage.models import UsageEvent
from tenantq.core.repository import TenantRepository


class UsageRepository(TenantRepository[UsageEvent]):
    model = UsageEvent
    not_found = "Usage event not found."

    def metric_total(self, metric: str, start: datetime, end: datetime) -> int:
        """Sum of one metric over events that occurred in [start, end)."""
        query = select(func.coalesce(func.sum(UsageEvent.quantity), 0)).where(
            self._tenant_filter(),
            UsageEvent.metric == metric,
            UsageEvent.occurred_at >= start,
            UsageEvent.occurred_at < end,
        )
        return int(self.session.scalar(query) or 0)

    def sums_by(
        self, key: ColumnElement[str] | InstrumentedAttribute[str], start: datetime, end: datetime
    ) -> list[tuple[Any, str, int | None]]:
        """(key, metric, summed quantity) over events that occurred in [start, end), per key and metric."""
        query = (
            select(key, UsageEvent.metric, func.sum(UsageEvent.quantity))
            .where(self._tenant_filter(), UsageEvent.occurred_at >= start, UsageEvent.occurred_at < end)
            .group_by(key, UsageEvent.metric)
        )
        return [(row_key, metric, quantity) for row_key, metric, quantity in self.session.execute(query)]

    def sums_where(
        self, key: ColumnElement[str] | InstrumentedAttribute[str], condition: ColumnElement[bool]
    ) -> list[tuple[Any, str, int | None]]:
        """(key, metric, summed quantity) over this tenant's events matching ``condition``."""
        query = (
            select(key, UsageEvent.metric, func.sum(UsageEvent.quantity))
            .where(self._tenant_filter(), condition)
            .group_by(key, UsageEvent.metric)
        )
        return [(row_key, metric, quantity) for row_key, metric, quantity in self.session.execute(query)]
