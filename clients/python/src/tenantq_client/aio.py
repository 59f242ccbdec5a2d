"""The asynchronous client: ``AsyncClient``, the same calls as ``Client``, awaited."""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import httpx

from tenantq_client import _core, errors, models
from tenantq_client._core import Call, RetryPolicy

EventHandler = Callable[[models.JobEvent], None]


class AsyncClient:
    """As :class:`tenantq_client.Client`; use ``async with`` or ``await client.close()``."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        key, url = _core.settings(api_key, base_url)
        self.base_url = url
        self.retry = retry or RetryPolicy()
        self._http = http or httpx.AsyncClient(base_url=url, headers=_core.headers(key), timeout=timeout)
        self.jobs = AsyncJobs(self)
        self.workflows = AsyncWorkflows(self)
        self.schedules = AsyncSchedules(self)
        self.webhooks = AsyncWebhooks(self)
        self.invoices = AsyncInvoices(self)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def usage(self) -> models.Usage:
        result: models.Usage = await self.call(Call("GET", "/v1/usage", repeatable=True), models.Usage)
        return result

    async def call(self, call: Call, model: Any = None) -> Any:
        for retry in range(self.retry.attempts):
            last = retry == self.retry.attempts - 1
            try:
                response = await self._http.request(
                    call.method,
                    call.path,
                    params=call.params,
                    json=call.body,
                    headers=call.headers or None,
                    timeout=call.timeout or httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as exc:
                if last or not _core.should_retry(call, None):
                    raise errors.ConnectionFailed(f"{call.method} {call.path}: {exc}") from exc
                await asyncio.sleep(self.retry.delay(retry, None))
                continue
            if response.status_code >= 400 and not last and _core.should_retry(call, response):
                await asyncio.sleep(self.retry.delay(retry, _core.retry_after(response)))
                continue
            _core.raise_for(response)
            return _core.parse(model, response)
        raise AssertionError("unreachable")  # pragma: no cover


class AsyncJobs:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def submit(
        self,
        task: str,
        args: dict[str, Any] | None = None,
        *,
        priority: int | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> models.Job:
        body = _core.submission(
            task,
            args,
            priority=priority,
            countdown=countdown,
            max_retries=max_retries,
            idempotency_key=idempotency_key,
            **options,
        )
        job: models.Job = await self._c.call(Call("POST", "/v1/jobs", body=body, repeatable=True), models.Job)
        return job

    async def batch(self, jobs: list[dict[str, Any]]) -> builtins.list[models.BatchItem]:
        body = {"jobs": [_core.batch_item(job) for job in jobs]}
        page = await self._c.call(Call("POST", "/v1/jobs/batch", body=body, repeatable=True), dict)
        return [models.BatchItem.model_validate(item) for item in page["items"]]

    async def get(self, job_id: str, *, wait: float | None = None) -> models.Job:
        params = {"wait": min(wait, _core.WAIT_MAX_SECONDS)} if wait else None
        timeout = (params["wait"] + 30) if params else None
        call = Call("GET", f"/v1/jobs/{job_id}", params=params, repeatable=True, timeout=timeout)
        job: models.Job = await self._c.call(call, models.Job)
        return job

    async def pages(
        self, *, status: str | None = None, task: str | None = None, page_size: int = 100
    ) -> AsyncIterator[models.JobPage]:
        cursor: str | None = None
        while True:
            params = _core.clean({"status": status, "task": task, "limit": page_size, "cursor": cursor})
            page = await self._c.call(Call("GET", "/v1/jobs", params=params, repeatable=True), models.JobPage)
            yield page
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def list(
        self, *, status: str | None = None, task: str | None = None, page_size: int = 100
    ) -> AsyncIterator[models.Job]:
        async for page in self.pages(status=status, task=task, page_size=page_size):
            for job in page.items:
                yield job

    async def cancel(self, job_id: str) -> models.CancelResult:
        call = Call("POST", f"/v1/jobs/{job_id}/cancel", repeatable=True)
        result: models.CancelResult = await self._c.call(call, models.CancelResult)
        return result

    async def retry(self, job_id: str) -> models.Job:
        job: models.Job = await self._c.call(Call("POST", f"/v1/jobs/{job_id}/retry"), models.Job)
        return job

    async def task_types(self) -> builtins.list[models.TaskType]:
        types: builtins.list[models.TaskType] = await self._c.call(
            Call("GET", "/v1/task-types", repeatable=True), builtins.list[models.TaskType]
        )
        return types

    async def events(
        self, job_id: str, *, idle_timeout: float = _core.STREAM_IDLE_SECONDS
    ) -> AsyncIterator[models.JobEvent]:
        timeout = httpx.Timeout(30.0, read=idle_timeout)
        async with self._c._http.stream(
            "GET", f"/v1/jobs/{job_id}/events", headers={"Accept": "text/event-stream"}, timeout=timeout
        ) as response:
            if response.status_code >= 400:
                await response.aread()
                _core.raise_for(response)
            parser = _core.SseParser()
            async for line in response.aiter_lines():
                for name, data in parser.feed(line):
                    event = _core.job_event(name, data)
                    if event is not None:
                        yield event

    async def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the same call as Client.jobs.wait
        on_event: EventHandler | None = None,
    ) -> models.Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        last: models.Job | None = None
        retry = 0
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise errors.JobNotFinished(last or await self.get(job_id))
            idle = (
                _core.STREAM_IDLE_SECONDS if remaining is None else min(_core.STREAM_IDLE_SECONDS, remaining)
            )
            try:
                async for event in self.events(job_id, idle_timeout=max(idle, 0.1)):
                    retry = 0
                    if on_event is not None:
                        on_event(event)
                    if event.job is not None:
                        last = event.job
                        if last.finished:
                            return last
                    if deadline is not None and time.monotonic() >= deadline:
                        raise errors.JobNotFinished(last or await self.get(job_id))
            except (httpx.TransportError, errors.ServiceUnavailable, errors.TooManyRequests) as exc:
                if retry + 1 >= self._c.retry.attempts and not isinstance(exc, httpx.ReadTimeout):
                    raise errors.ConnectionFailed(f"event stream of job {job_id}: {exc}") from exc
                await asyncio.sleep(self._c.retry.delay(retry, getattr(exc, "retry_after", None)))
                retry += 1

    async def submit_and_wait(
        self, task: str, args: dict[str, Any] | None = None, **kwargs: Any
    ) -> models.Job:
        timeout = kwargs.pop("timeout", None)
        job = await self.submit(task, args, **kwargs)
        return await self.wait(job.id, timeout=timeout)


class AsyncWorkflows:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create(self, steps: list[dict[str, Any]]) -> models.Workflow:
        wf: models.Workflow = await self._c.call(
            Call("POST", "/v1/workflows", body={"steps": steps}), models.Workflow
        )
        return wf

    async def get(self, workflow_id: str) -> models.Workflow:
        call = Call("GET", f"/v1/workflows/{workflow_id}", repeatable=True)
        wf: models.Workflow = await self._c.call(call, models.Workflow)
        return wf

    async def cancel(self, workflow_id: str) -> models.Workflow:
        call = Call("POST", f"/v1/workflows/{workflow_id}/cancel", repeatable=True)
        wf: models.Workflow = await self._c.call(call, models.Workflow)
        return wf


class AsyncSchedules:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create(self, task: str, args: dict[str, Any] | None = None, **fields: Any) -> models.Schedule:
        body = {"task": task, "args": args or {}, **fields}
        schedule: models.Schedule = await self._c.call(
            Call("POST", "/v1/schedules", body=body), models.Schedule
        )
        return schedule

    async def get(self, schedule_id: str) -> models.Schedule:
        call = Call("GET", f"/v1/schedules/{schedule_id}", repeatable=True)
        schedule: models.Schedule = await self._c.call(call, models.Schedule)
        return schedule

    async def list(self, *, page_size: int = 100) -> AsyncIterator[models.Schedule]:
        cursor: str | None = None
        while True:
            params = _core.clean({"limit": page_size, "cursor": cursor})
            call = Call("GET", "/v1/schedules", params=params, repeatable=True)
            page = await self._c.call(call, models.SchedulePage)
            for item in page.items:
                yield item
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def update(self, schedule_id: str, **fields: Any) -> models.Schedule:
        call = Call("PATCH", f"/v1/schedules/{schedule_id}", body=fields, repeatable=True)
        schedule: models.Schedule = await self._c.call(call, models.Schedule)
        return schedule

    async def delete(self, schedule_id: str) -> None:
        await self._c.call(Call("DELETE", f"/v1/schedules/{schedule_id}", repeatable=True))


class AsyncWebhooks:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def create(
        self, url: str, events: list[Literal["job.succeeded", "job.failed"]], description: str = ""
    ) -> models.WebhookCreated:
        body = {"url": url, "events": events, "description": description}
        hook: models.WebhookCreated = await self._c.call(
            Call("POST", "/v1/webhooks", body=body), models.WebhookCreated
        )
        return hook

    async def get(self, webhook_id: str) -> models.Webhook:
        call = Call("GET", f"/v1/webhooks/{webhook_id}", repeatable=True)
        hook: models.Webhook = await self._c.call(call, models.Webhook)
        return hook

    async def list(self) -> builtins.list[models.Webhook]:
        page = await self._c.call(Call("GET", "/v1/webhooks", repeatable=True), dict)
        return [models.Webhook.model_validate(item) for item in page["items"]]

    async def delete(self, webhook_id: str) -> None:
        await self._c.call(Call("DELETE", f"/v1/webhooks/{webhook_id}", repeatable=True))

    async def deliveries(self, webhook_id: str) -> builtins.list[models.Delivery]:
        call = Call("GET", f"/v1/webhooks/{webhook_id}/deliveries", repeatable=True)
        page = await self._c.call(call, dict)
        return [models.Delivery.model_validate(item) for item in page["items"]]


class AsyncInvoices:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def get(self, invoice_id: str) -> models.Invoice:
        call = Call("GET", f"/v1/invoices/{invoice_id}", repeatable=True)
        invoice: models.Invoice = await self._c.call(call, models.Invoice)
        return invoice

    async def list(self, *, status: str | None = None, page_size: int = 24) -> AsyncIterator[models.Invoice]:
        cursor: str | None = None
        while True:
            params = _core.clean({"status": status, "limit": page_size, "cursor": cursor})
            page = await self._c.call(Call("GET", "/v1/invoices", params=params, repeatable=True), dict)
            for item in page["items"]:
                yield models.Invoice.model_validate(item)
            if not page.get("next_cursor"):
                return
            cursor = page["next_cursor"]
