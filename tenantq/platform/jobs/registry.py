"""Task types: what tenants may run. The operator registers them with ``@task_type``.

Tenants never send code; they name a task type and send JSON arguments that are validated against
the type's pydantic model *before* anything is queued.
"""

from __future__ import annotations

import inspect
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from celery.exceptions import Ignore, Reject
from pydantic import BaseModel, ConfigDict, ValidationError

from tenantq.core.celery import app
from tenantq.core.settings import get_settings
from tenantq.platform.jobs import events, lifecycle
from tenantq.platform.jobs.bodyclock import BodyClock, HardTimeLimitExceeded
from tenantq.platform.jobs.messages import JobMessage

log = logging.getLogger("tenantq.jobs.registry")


class AnyArgs(BaseModel):
    """Any JSON object."""

    model_config = ConfigDict(extra="allow")


@dataclass(frozen=True)
class JobContext:
    job_id: str
    tenant_id: str
    attempt: int
    task_id: str

    def cancel_requested(self) -> bool:
        """True once the tenant asked to cancel this job: long, non-cancellable tasks may poll it
        and stop early at a safe point."""
        return lifecycle.cancel_covers(self.job_id, self.attempt)

    def progress(self, fraction: float, message: str = "") -> None:
        """Report how far this attempt got: ``fraction`` from 0 to 1 (ValueError otherwise) and a short
        message (cut to 500 characters). It shows on the job (``progress``), in its event stream and on
        the dashboard. One Redis round trip per call; a Redis error is logged, never raised."""
        try:
            events.report_progress(self.tenant_id, self.job_id, self.attempt, fraction, message)
        except redis.RedisError as exc:
            log.warning("could not report the progress of job %s: %s", self.job_id, exc)


class RetryableError(Exception):
    """Raise (or subclass) to ask for a retry regardless of the task type's retry_on."""


class ResultTooLarge(Exception):
    """The task returned more than TENANTQ_MAX_RESULT_BYTES of JSON."""


@dataclass
class TaskType:
    name: str
    func: Callable[..., Any]
    args_model: type[BaseModel]
    description: str
    # Exceptions that schedule a retry (RetryableError always does); anything else fails the attempt.
    retry_on: tuple[type[BaseException], ...] = (RetryableError,)
    max_retries: int = 0  # when the job does not say (clamped to the plan's max_retries)
    retry_backoff: float = 1.0  # seconds: first retry delay and the floor of every retry delay
    retry_backoff_max: float = 60.0  # seconds: cap of the exponential ceiling
    retry_jitter: bool = True
    # Defaults when the job does not set them (the plan's max_time_limit_s bounds and backs them).
    soft_time_limit: float | None = None
    time_limit: float | None = None
    # May a running attempt be killed (SIGTERM) on cancellation? If not it is only marked.
    cancellable: bool = True
    celery_task: Any = field(default=None, repr=False)

    def validate(self, args: dict[str, Any]) -> BaseModel:
        return self.args_model.model_validate(args)

    def json_schema(self) -> dict[str, Any]:
        return self.args_model.model_json_schema()

    def backoff(self, retries: int, base: float | None = None, cap: float | None = None) -> float:
        """Delay before retry number ``retries + 1`` (``retries`` already made in this run).

        Exponential with a cap and full jitter above a floor: uniform(base, min(cap, base * 2**retries)).
        The floor keeps a retry storm from hammering a struggling dependency at once; the jitter
        spreads many jobs that failed together.
        """
        base = self.retry_backoff if base is None else base
        cap = max(base, self.retry_backoff_max if cap is None else cap)
        ceiling = min(cap, base * (2 ** min(retries, 32)))
        return random.uniform(base, ceiling) if self.retry_jitter else ceiling


REGISTRY: dict[str, TaskType] = {}


class RetryScheduled(Ignore):
    """Ends a Celery task whose next attempt was put back on the tenant's delayed queue. The attempt
    pipeline sees it as ``retval`` with state IGNORED and can tell a retry from other ignores."""

    def __init__(self, exc: BaseException | None = None, delay: float | None = None) -> None:
        super().__init__(repr(exc) if exc is not None else "retry scheduled")
        self.exc = exc
        self.delay = delay


class NotStarted(Ignore):
    """Ends a Celery task that must not run (cancelled, or a replay of a finished attempt) before the
    task function was called: nothing ran, so nothing is billed."""


def _run_attempt(task: Any, spec: TaskType, message: JobMessage) -> Any:
    """The body of every tenantq task: cancellation gate, validation, the function, retry policy,
    result bound. Status bookkeeping happens in the worker's attempt pipeline and, for the outcomes
    that end the Celery task with ``Ignore`` (retry scheduled, cancelled before start), in ``lifecycle``.

    The function alone runs under the job's time limits and is what the attempt is metered for: the
    :class:`BodyClock` is left on the request as ``tq_body`` for the pipeline's metering step.
    """
    ctx = JobContext(
        job_id=message.id, tenant_id=message.tenant_id, attempt=message.attempt, task_id=task.request.id
    )
    # A cancelled attempt may already have been handed to Celery: it must not run.
    if not lifecycle.may_start(message, getattr(task.request, "tq_cancelled", None)):
        raise NotStarted()
    try:
        model = spec.args_model.model_validate(message.args)
    except ValidationError as exc:  # the API validated already; this guards replays and workflow inputs
        raise ValueError(f"invalid arguments: {exc}") from None
    clock = BodyClock(message.soft_time_limit, message.time_limit)
    task.request.tq_body = clock
    try:
        with clock:
            result = spec.func(model, ctx)
    except HardTimeLimitExceeded:
        raise  # as the pool's kill would: never retried, whatever retry_on says
    except spec.retry_on as exc:
        retries_made = message.retries_made
        if retries_made < message.max_retries and not lifecycle.cancel_covers(ctx.job_id, ctx.attempt):
            delay = spec.backoff(retries_made, message.retry_backoff, message.retry_backoff_max)
            # An error may carry the server's wish (``retry_after``, e.g. HTTP Retry-After) as a floor.
            delay = max(delay, float(getattr(exc, "retry_after", 0) or 0))
            # Back through tenantq's own delayed queue, so fairness, rate and concurrency limits
            # apply to the retry like to any other attempt.
            if lifecycle.schedule_retry(message, exc, delay):
                raise RetryScheduled(exc, delay) from None
        raise
    if isinstance(result, BaseModel):
        result = result.model_dump(mode="json")
    _check_result_size(result)
    return result


def _check_result_size(result: Any) -> None:
    try:
        size = len(json.dumps(result, separators=(",", ":")).encode())
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the task returned a result that is not JSON: {exc}") from None
    limit = get_settings().max_result_bytes
    if size > limit:
        raise ResultTooLarge(f"result is {size} bytes, larger than the limit of {limit} bytes")


def task_type(
    name: str,
    *,
    args: type[BaseModel] | None = None,
    description: str = "",
    retry_on: tuple[type[BaseException], ...] = (),
    max_retries: int = 0,
    retry_backoff: float = 1.0,
    retry_backoff_max: float = 60.0,
    retry_jitter: bool = True,
    soft_time_limit: float | None = None,
    time_limit: float | None = None,
    cancellable: bool = True,
) -> Callable[[Callable[..., Any]], TaskType]:
    """Register a task type. The function receives the validated args model and a JobContext.

    ``retry_on`` lists the exceptions worth retrying (transient ones); every other exception fails
    the attempt at once, whatever the job's max_retries. ``max_retries`` is the default for jobs that
    do not set it (clamped to the plan's bound); ``retry_backoff``/``retry_backoff_max`` shape the
    delays (see ``TaskType.backoff``); ``soft_time_limit``/``time_limit`` are default limits in seconds;
    ``cancellable=False`` keeps a running attempt from being killed by a cancellation.
    """

    def decorate(func: Callable[..., Any]) -> TaskType:
        if name in REGISTRY:
            raise ValueError(f"task type {name!r} registered twice")
        spec = TaskType(
            name=name,
            func=func,
            args_model=args or AnyArgs,
            description=description or (inspect.getdoc(func) or "").strip(),
            retry_on=(*retry_on, RetryableError),
            max_retries=max_retries,
            retry_backoff=retry_backoff,
            retry_backoff_max=retry_backoff_max,
            retry_jitter=retry_jitter,
            soft_time_limit=soft_time_limit,
            time_limit=time_limit,
            cancellable=cancellable,
        )

        def run(self: Any, job: dict[str, Any], args: dict[str, Any]) -> Any:
            # The worker's attempt pipeline parsed ``job`` and ``args`` at prerun and says here whether
            # this delivery may run (not a duplicate, a slot held, the job still on this attempt).
            message = getattr(self.request, "tq_message", None)
            skip = getattr(self.request, "tq_skip", None)
            if skip == "requeue":  # held back, and could not be sent back for later: the broker keeps it
                raise Reject("held back while its first delivery runs", requeue=True)
            if message is None or skip:
                raise NotStarted()
            return _run_attempt(self, spec, message)

        run.__name__ = name.replace(".", "_")
        # A job's result and status live in SQL, written by the attempt pipeline: nothing reads
        # Celery's result backend for task types, so no STARTED/SUCCESS writes (each a GET and a SET).
        # Task events (Flower, ``celery inspect``) are unaffected.
        spec.celery_task = app.task(name=name, bind=True, ignore_result=True, track_started=False)(run)
        REGISTRY[name] = spec
        return spec

    return decorate


def get_task_type(name: str) -> TaskType | None:
    return REGISTRY.get(name)


def all_task_types() -> list[TaskType]:
    return [REGISTRY[k] for k in sorted(REGISTRY)]
