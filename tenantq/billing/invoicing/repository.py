"""Tenant-scoped reads of invoices: the only way a tenant's request reaches them. Period close issues
invoices of every tenant in its own unscoped session."""

from __future__ import annotations

import builtins

from tenantq.billing.invoicing.models import Invoice
from tenantq.core.repository import TenantRepository


class InvoiceRepository(TenantRepository[Invoice]):
    model = Invoice
    not_found = "Invoice not found."
    # Newest billing month first; ``period`` is "YYYY-MM", so text order is time order.
    page_key = "period"

    def list(
        self, *, status: str | None = None, limit: int = 24, cursor: str | None = None
    ) -> tuple[builtins.list[Invoice], str | None]:
        query = self.select()
        if status:
            query = query.where(Invoice.status == status)
        return self.page(query, limit=limit, cursor=cursor)

    @staticmethod
    def _parse_page_key(raw: str) -> str:
        return raw
