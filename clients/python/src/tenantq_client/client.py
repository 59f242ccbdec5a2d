"""The synchronous client: ``Client(api_key=..., base_url=...)``."""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import httpx

from tenantq_client import _core, errors, models
from tenantq_client._core import Call, RetryPolicy

EventHandler = Callable[[models.JobEvent], None]


class Client:
    """A tenant's connection to tenantq. ``api_key`` defaults to ``$TENANTQ_API_KEY``, ``base_url`` to
    ``$TENANTQ_URL`` or http://127.0.0.1:8000. Use it as a context manager, or call ``close()``."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        key, url = _core.settings(api_key, base_url)
        self.base_url = url
        self.retry = retry or RetryPolicy()
        self._http = http or httpx.Client(base_url=url, headers=_core.headers(key), timeout=timeout)
        self.jobs = Jobs(self)
        self.workflows = Workflows(self)
        self.schedules = Schedules(self)
        self.webhooks = Webhooks(self)
        self.invoices = Invoices(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def usage(self) -> models.Usage:
        """This billing period's usage against the plan's quotas."""
        return self.call(Call("GET", "/v1/usage", repeatable=True), models.Usage)

    def call(self, call: Call, model: Any = None) -> Any:
        """Send ``call`` (again, as it is, while the retry policy allows) and parse the answer."""
        for retry in range(self.retry.attempts):
            last = retry == self.retry.attempts - 1
            try:
                response = self._http.request(
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
                time.sleep(self.retry.delay(retry, None))
                continue
            if response.status_code >= 400 and not last and _core.should_retry(call, response):
                time.sleep(self.retry.delay(retry, _core.retry_after(response)))
                continue
            _core.raise_for(response)
            return _core.parse(model, response)
        raise AssertionError("unreachable")  # pragma: no cover


class Jobs:
    def __init__(self, client: Client) -> None:
        self._c = client

    def submit(
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
        """Submit a job. Without ``idempotency_key`` one is made up and kept across retries, so a
        retried submission never creates a second job. ``options``: retry_backoff, retry_backoff_max,
        soft_time_limit, time_limit."""
        body = _core.submission(
            task,
            args,
            priority=priority,
            countdown=countdown,
            max_retries=max_retries,
            idempotency_key=idempotency_key,
            **options,
        )
        return self._c.call(Call("POST", "/v1/jobs", body=body, repeatable=True), models.Job)

    def batch(self, jobs: list[dict[str, Any]]) -> builtins.list[models.BatchItem]:
        """Submit up to 1,000 jobs (each a dict like ``submit``'s arguments: task, args, priority...).
        Each gets its own answer; items without an idempotency key get one, as in ``submit``."""
        body = {"jobs": [_core.batch_item(job) for job in jobs]}
        page = self._c.call(Call("POST", "/v1/jobs/batch", body=body, repeatable=True), dict)
        return [models.BatchItem.model_validate(item) for item in page["items"]]

    def get(self, job_id: str, *, wait: float | None = None) -> models.Job:
        """The job; with ``wait`` (seconds, at most 60) the server answers when it finishes or the
        time is up (long-poll)."""
        params = {"wait": min(wait, _core.WAIT_MAX_SECONDS)} if wait else None
        timeout = (params["wait"] + 30) if params else None
        call = Call("GET", f"/v1/jobs/{job_id}", params=params, repeatable=True, timeout=timeout)
        return self._c.call(call, models.Job)

    def pages(
        self, *, status: str | None = None, task: str | None = None, page_size: int = 100
    ) -> Iterator[models.JobPage]:
        cursor: str | None = None
        while True:
            params = _core.clean({"status": status, "task": task, "limit": page_size, "cursor": cursor})
            page = self._c.call(Call("GET", "/v1/jobs", params=params, repeatable=True), models.JobPage)
            yield page
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def list(
        self, *, status: str | None = None, task: str | None = None, page_size: int = 100
    ) -> Iterator[models.Job]:
        """Every job, newest first, fetched a page at a time as the iteration goes."""
        for page in self.pages(status=status, task=task, page_size=page_size):
            yield from page.items

    def cancel(self, job_id: str) -> models.CancelResult:
        call = Call("POST", f"/v1/jobs/{job_id}/cancel", repeatable=True)
        return self._c.call(call, models.CancelResult)

    def retry(self, job_id: str) -> models.Job:
        """Re-run a failed or cancelled job (NotRerunnable otherwise)."""
        return self._c.call(Call("POST", f"/v1/jobs/{job_id}/retry"), models.Job)

    def task_types(self) -> builtins.list[models.TaskType]:
        return self._c.call(Call("GET", "/v1/task-types", repeatable=True), builtins.list[models.TaskType])

    def events(
        self, job_id: str, *, idle_timeout: float = _core.STREAM_IDLE_SECONDS
    ) -> Iterator[models.JobEvent]:
        """The job's event stream (one connection): the whole job first, then status, attempt and
        progress events, and the whole job again when it finished, where the iteration ends."""
        timeout = httpx.Timeout(30.0, read=idle_timeout)
        with self._c._http.stream(
            "GET", f"/v1/jobs/{job_id}/events", headers={"Accept": "text/event-stream"}, timeout=timeout
        ) as response:
            if response.status_code >= 400:
                response.read()
                _core.raise_for(response)
            parser = _core.SseParser()
            for line in response.iter_lines():
                for name, data in parser.feed(line):
                    event = _core.job_event(name, data)
                    if event is not None:
                        yield event

    def wait(
        self, job_id: str, *, timeout: float | None = None, on_event: EventHandler | None = None
    ) -> models.Job:
        """Block until the job finished and return it (whatever its outcome: check ``status``). Follows
        the event stream, reconnecting if it breaks; ``on_event`` sees every event (progress bars).
        Raises JobNotFinished after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: models.Job | None = None
        retry = 0
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise errors.JobNotFinished(last or self.get(job_id))
            idle = (
                _core.STREAM_IDLE_SECONDS if remaining is None else min(_core.STREAM_IDLE_SECONDS, remaining)
            )
            try:
                for event in self.events(job_id, idle_timeout=max(idle, 0.1)):
                    retry = 0
                    if on_event is not None:
                        on_event(event)
                    if event.job is not None:
                        last = event.job
                        if last.finished:
                            return last
                    if deadline is not None and time.monotonic() >= deadline:
                        raise errors.JobNotFinished(last or self.get(job_id))
            except (httpx.TransportError, errors.ServiceUnavailable, errors.TooManyRequests) as exc:
                if retry + 1 >= self._c.retry.attempts and not isinstance(exc, httpx.ReadTimeout):
                    raise errors.ConnectionFailed(f"event stream of job {job_id}: {exc}") from exc
                time.sleep(self._c.retry.delay(retry, getattr(exc, "retry_after", None)))
                retry += 1

    def submit_and_wait(self, task: str, args: dict[str, Any] | None = None, **kwargs: Any) -> models.Job:
        timeout = kwargs.pop("timeout", None)
        return self.wait(self.submit(task, args, **kwargs).id, timeout=timeout)


class Workflows:
    def __init__(self, client: Client) -> None:
        self._c = client

    def create(self, steps: list[dict[str, Any]]) -> models.Workflow:
        """Steps run in order; each is ``{"task", "args"...}`` or ``{"group": [tasks]}``."""
        return self._c.call(Call("POST", "/v1/workflows", body={"steps": steps}), models.Workflow)

    def get(self, workflow_id: str) -> models.Workflow:
        return self._c.call(Call("GET", f"/v1/workflows/{workflow_id}", repeatable=True), models.Workflow)

    def cancel(self, workflow_id: str) -> models.Workflow:
        call = Call("POST", f"/v1/workflows/{workflow_id}/cancel", repeatable=True)
        return self._c.call(call, models.Workflow)


class Schedules:
    def __init__(self, client: Client) -> None:
        self._c = client

    def create(self, task: str, args: dict[str, Any] | None = None, **fields: Any) -> models.Schedule:
        """``fields``: name, cron + timezone or interval_seconds, priority, max_retries, enabled."""
        body = {"task": task, "args": args or {}, **fields}
        return self._c.call(Call("POST", "/v1/schedules", body=body), models.Schedule)

    def get(self, schedule_id: str) -> models.Schedule:
        return self._c.call(Call("GET", f"/v1/schedules/{schedule_id}", repeatable=True), models.Schedule)

    def list(self, *, page_size: int = 100) -> Iterator[models.Schedule]:
        cursor: str | None = None
        while True:
            params = _core.clean({"limit": page_size, "cursor": cursor})
            page = self._c.call(
                Call("GET", "/v1/schedules", params=params, repeatable=True), models.SchedulePage
            )
            yield from page.items
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def update(self, schedule_id: str, **fields: Any) -> models.Schedule:
        call = Call("PATCH", f"/v1/schedules/{schedule_id}", body=fields, repeatable=True)
        return self._c.call(call, models.Schedule)

    def delete(self, schedule_id: str) -> None:
        self._c.call(Call("DELETE", f"/v1/schedules/{schedule_id}", repeatable=True))


class Webhooks:
    def __init__(self, client: Client) -> None:
        self._c = client

    def create(
        self, url: str, events: list[Literal["job.succeeded", "job.failed"]], description: str = ""
    ) -> models.WebhookCreated:
        """Register an endpoint; the answer's ``secret`` (shown once) verifies its deliveries
        (``tenantq_client.webhooks.verify_signature``)."""
        body = {"url": url, "events": events, "description": description}
        return self._c.call(Call("POST", "/v1/webhooks", body=body), models.WebhookCreated)

    def get(self, webhook_id: str) -> models.Webhook:
        return self._c.call(Call("GET", f"/v1/webhooks/{webhook_id}", repeatable=True), models.Webhook)

    def list(self) -> builtins.list[models.Webhook]:
        page = self._c.call(Call("GET", "/v1/webhooks", repeatable=True), dict)
        return [models.Webhook.model_validate(item) for item in page["items"]]

    def delete(self, webhook_id: str) -> None:
        self._c.call(Call("DELETE", f"/v1/webhooks/{webhook_id}", repeatable=True))

    def deliveries(self, webhook_id: str) -> builtins.list[models.Delivery]:
        page = self._c.call(Call("GET", f"/v1/webhooks/{webhook_id}/deliveries", repeatable=True), dict)
        return [models.Delivery.model_validate(item) for item in page["items"]]


class Invoices:
    def __init__(self, client: Client) -> None:
        self._c = client

    def get(self, invoice_id: str) -> models.Invoice:
        return self._c.call(Call("GET", f"/v1/invoices/{invoice_id}", repeatable=True), models.Invoice)

    def list(self, *, status: str | None = None, page_size: int = 24) -> Iterator[models.Invoice]:
        cursor: str | None = None
        while True:
            params = _core.clean({"status": status, "limit": page_size, "cursor": cursor})
            page = self._c.call(Call("GET", "/v1/invoices", params=params, repeatable=True), dict)
            yield from (models.Invoice.model_validate(item) for item in page["items"])
            if not page.get("next_cursor"):
                return
            cursor = page["next_cursor"]
