"""What the sync and the async client share: requests as data, retry decisions, answers to models."""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from pydantic import BaseModel, TypeAdapter

from tenantq_client import errors, models

DEFAULT_URL = "http://127.0.0.1:8000"
WAIT_MAX_SECONDS = 60  # the server's cap on GET /v1/jobs/{id}?wait=
STREAM_IDLE_SECONDS = 45  # three of the server's keep-alive intervals without a byte: reconnect
# 429 (queue full, rate limited) and 503 (queue or quota store unavailable) are refusals before anything
# was done: any request may be sent again. A lost connection or a gateway error may hide a request
# that was done: only requests that are safe to repeat are sent again then.
REFUSED = frozenset({429, 503})
MAYBE_DONE = frozenset({502, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` sends at most (1 = never retry); waits ``backoff * 2**n`` (jittered, capped at
    ``max_backoff``), or the server's ``Retry-After`` when it says more (capped at ``max_retry_after``)."""

    attempts: int = 4
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 60.0

    def delay(self, retry: int, retry_after: float | None) -> float:
        base = min(self.max_backoff, self.backoff * 2**retry) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            return min(self.max_retry_after, max(base, retry_after))
        return base


@dataclass
class Call:
    """One API call: sent as is on every retry (the idempotency key included)."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    body: Any = None
    # Safe to send again after a lost connection: reads, deletes, cancels, submissions with a key.
    repeatable: bool = False
    timeout: float | None = None
    headers: dict[str, str] = field(default_factory=dict)


def settings(api_key: str | None, base_url: str | None) -> tuple[str, str]:
    key = api_key or os.environ.get("TENANTQ_API_KEY")
    if not key:
        raise errors.TenantqClientError("no API key: pass api_key= or set TENANTQ_API_KEY")
    url = (base_url or os.environ.get("TENANTQ_URL") or DEFAULT_URL).rstrip("/")
    return key, url


def headers(api_key: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {api_key}",
        "Accept": "application/json",
        "User-Agent": "tenantq-client",
    }


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def should_retry(call: Call, response: httpx.Response | None) -> bool:
    """``response`` None: the connection failed."""
    if response is None:
        return call.repeatable
    if response.status_code in REFUSED:
        return True
    return response.status_code in MAYBE_DONE and call.repeatable


def raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    raise errors.error_for(
        response.status_code, body, response.headers.get("x-request-id"), retry_after(response)
    )


def parse(model: Any, response: httpx.Response) -> Any:
    if model is None:
        return None
    data = response.json()
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model.model_validate(data)
    return TypeAdapter(model).validate_python(data)


def new_key() -> str:
    return f"tqc-{uuid.uuid4()}"


def submission(
    task: str,
    args: dict[str, Any] | None,
    *,
    priority: int | None,
    countdown: float | None,
    max_retries: int | None,
    idempotency_key: str | None,
    **options: Any,
) -> dict[str, Any]:
    """A POST /v1/jobs body. Without an idempotency key one is made up, so that a retried submission
    (the answer lost on the way) finds the job the first one created instead of making a second."""
    body: dict[str, Any] = {"task": task, "args": args or {}, "idempotency_key": idempotency_key or new_key()}
    given = {"priority": priority, "countdown": countdown, "max_retries": max_retries, **options}
    return {**body, **clean(given)}


def batch_item(job: dict[str, Any]) -> dict[str, Any]:
    return job if job.get("idempotency_key") else {**job, "idempotency_key": new_key()}


# -- Server-Sent Events ------------------------------------------------------------------------------
class SseParser:
    """Feeds lines, yields (event, data) pairs (the event stream format, comments ignored)."""

    def __init__(self) -> None:
        self.event = "message"
        self.data: list[str] = []

    def feed(self, line: str) -> Iterator[tuple[str, str]]:
        if line == "":
            if self.data:
                yield self.event, "\n".join(self.data)
            self.event, self.data = "message", []
        elif line.startswith(":"):
            return
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                self.event = value
            elif name == "data":
                self.data.append(value)


def job_event(event: str, data: str) -> models.JobEvent | None:
    payload = json.loads(data)
    if event == "job":
        return models.JobEvent(kind="job", job=models.Job.model_validate(payload))
    if event == "status":
        return models.JobEvent(kind="status", status=models.StatusEvent.model_validate(payload))
    if event == "attempt":
        return models.JobEvent(kind="attempt", attempt=models.Attempt.model_validate(payload))
    if event == "progress":
        return models.JobEvent(kind="progress", progress=models.ProgressEvent.model_validate(payload))
    return None  # an event type this SDK does not know yet


def clean(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}
