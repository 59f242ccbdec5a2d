"""Tenant-scoped data access for webhook endpoints and their deliveries. The worker side (recording
events, delivering them) works on rows of every tenant by id, in its own unscoped session."""

from __future__ import annotations

import builtins

from sqlalchemy import select

from tenantq.core.repository import TenantRepository
from tenantq.platform.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint


class WebhookRepository(TenantRepository[WebhookEndpoint]):
    model = WebhookEndpoint
    not_found = "Webhook not found."

    def list(self) -> builtins.list[WebhookEndpoint]:
        return builtins.list(
            self.session.scalars(
                self.select().order_by(WebhookEndpoint.created_at.desc(), WebhookEndpoint.id)
            )
        )

    def deliveries(
        self, endpoint_id: str, limit: int = 50
    ) -> builtins.list[tuple[WebhookDelivery, builtins.list[WebhookAttempt]]]:
        """The endpoint's latest deliveries, newest first, each with its attempts in order."""
        endpoint = self.get(endpoint_id)
        rows = builtins.list(
            self.session.scalars(
                select(WebhookDelivery)
                .where(
                    WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.tenant_id == self.tenant_id
                )
                .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id)
                .limit(limit)
            )
        )
        attempts: dict[str, builtins.list[WebhookAttempt]] = {r.id: [] for r in rows}
        if rows:
            for a in self.session.scalars(
                select(WebhookAttempt)
                .where(WebhookAttempt.delivery_id.in_(builtins.list(attempts)))
                .order_by(WebhookAttempt.attempt)
            ):
                attempts[a.delivery_id].append(a)
        return [(r, attempts[r.id]) for r in rows]
