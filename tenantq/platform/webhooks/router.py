"""HTTP routes for completion webhooks: parse, call the service, return a schema."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from tenantq.core.dependencies import SessionDep
from tenantq.core.openapi import errors
from tenantq.platform.webhooks import service
from tenantq.platform.webhooks.repository import WebhookRepository
from tenantq.platform.webhooks.schemas import (
    DeliveryAttemptOut,
    DeliveryList,
    DeliveryOut,
    WebhookCreate,
    WebhookCreated,
    WebhookList,
    WebhookOut,
)
from tenantq.tenants.access.dependencies import JobsRead, JobsWrite

router = APIRouter(prefix="/v1", tags=["webhooks"])


@router.post(
    "/webhooks",
    response_model=WebhookCreated,
    status_code=201,
    summary="Register a webhook endpoint",
    description="Job events are POSTed as JSON with the headers 'tenantq-signature: t=<unix>,v1=<hex "
    "HMAC-SHA256(secret, \"{t}.{body}\")>', 'tenantq-event-id' and 'tenantq-event-type'. The secret is "
    "returned once, here. Non-2xx answers are retried with exponential backoff.",
    responses=errors(
        422,
        429,
        s422="Invalid URL, or a destination refused by the network policy (code `webhook_url_not_allowed`).",
        s429="The plan's number of webhook endpoints is reached (code `webhook_limit_reached`).",
    ),
)
def create_webhook(body: WebhookCreate, ctx: JobsWrite, session: SessionDep) -> WebhookCreated:
    endpoint, secret = service.create_endpoint(session, ctx.tenant, body)
    return WebhookCreated(**WebhookOut.model_validate(endpoint).model_dump(), secret=secret)


@router.get("/webhooks", response_model=WebhookList, summary="List webhook endpoints")
def list_webhooks(ctx: JobsRead, session: SessionDep) -> WebhookList:
    rows = WebhookRepository(session, ctx.tenant_id).list()
    return WebhookList(items=[WebhookOut.model_validate(r) for r in rows])


@router.get("/webhooks/{webhook_id}", response_model=WebhookOut, summary="Get a webhook endpoint")
def get_webhook(webhook_id: str, ctx: JobsRead, session: SessionDep) -> WebhookOut:
    return WebhookOut.model_validate(WebhookRepository(session, ctx.tenant_id).get(webhook_id))


@router.delete(
    "/webhooks/{webhook_id}",
    status_code=204,
    summary="Delete a webhook endpoint",
    description="Stops deliveries to it; its delivery history is deleted with it.",
)
def delete_webhook(webhook_id: str, ctx: JobsWrite, session: SessionDep) -> Response:
    service.delete_endpoint(session, ctx.tenant, webhook_id)
    return Response(status_code=204)


@router.get(
    "/webhooks/{webhook_id}/deliveries",
    response_model=DeliveryList,
    summary="Recent deliveries to an endpoint, newest first, with every attempt",
)
def list_deliveries(
    webhook_id: str, ctx: JobsRead, session: SessionDep, limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> DeliveryList:
    rows = WebhookRepository(session, ctx.tenant_id).deliveries(webhook_id, limit=limit)
    return DeliveryList(
        items=[
            DeliveryOut(
                id=d.id,
                event_id=d.event_id,
                event_type=d.event_type,
                job_id=d.job_id,
                status=d.status,
                attempts=d.attempts,
                next_attempt_at=d.next_attempt_at,
                created_at=d.created_at,
                finished_at=d.finished_at,
                attempt_log=[DeliveryAttemptOut.model_validate(a) for a in attempts],
            )
            for d, attempts in rows
        ]
    )
