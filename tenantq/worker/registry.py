"""Task types: what tenants may run. The operator registers them with ``@task_type``.

Tenants never send code; they name a task type and send JSON arguments that are validated against
the type's pydantic model *before* anything is queued.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery.exceptions import Ignore
from pydantic import BaseModel, ConfigDict, ValidationError

from tenantq.worker.celery_app import app


class AnyArgs(BaseModel):
    """Any JSON object."""

    model_config = ConfigDict(extra="allow")


@dataclass(frozen=True)
class JobContext:
    job_id: str
    tenant_id: str
    attempt: int
    task_id: str


@dataclass
class TaskType:
    name: str
    func: Callable[..., Any]
    args_model: type[BaseModel]
    description: str
    retry_on: tuple[type[BaseException], ...] = ()
    retry_backoff: float = 1.0
    retry_backoff_max: float = 60.0
    cancellable: bool = True
    celery_task: Any = field(default=None, repr=False)

    def validate(self, args: dict[str, Any]) -> BaseModel:
        return self.args_model.model_validate(args)

    def json_schema(self) -> dict[str, Any]:
        return self.args_model.model_json_schema()

    def backoff(self, retries: int) -> float:
        """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**retries))."""
        return random.uniform(0, min(self.retry_backoff_max, self.retry_backoff * (2**retries)))


REGISTRY: dict[str, TaskType] = {}


class RetryableError(Exception):
    """Raise (or subclass) to ask for a retry regardless of the task type's retry_on."""


def task_type(
    name: str,
    *,
    args: type[BaseModel] | None = None,
    description: str = "",
    retry_on: tuple[type[BaseException], ...] = (),
    retry_backoff: float = 1.0,
    retry_backoff_max: float = 60.0,
    cancellable: bool = True,
) -> Callable[[Callable[..., Any]], TaskType]:
    """Register a task type. The function receives the validated args model and a JobContext."""

    def decorate(func: Callable[..., Any]) -> TaskType:
        if name in REGISTRY:
            raise ValueError(f"task type {name!r} registered twice")
        spec = TaskType(
            name=name,
            func=func,
            args_model=args or AnyArgs,
            description=description or (inspect.getdoc(func) or "").strip(),
            retry_on=tuple(retry_on) + (RetryableError,),
            retry_backoff=retry_backoff,
            retry_backoff_max=retry_backoff_max,
            cancellable=cancellable,
        )

        def run(self, job: dict[str, Any], args: dict[str, Any]) -> Any:
            if getattr(self.request, "tq_skip", None):  # set by limits.start_guard: duplicate or no slot
                raise Ignore()
            try:
                model = spec.args_model.model_validate(args)
            except ValidationError as exc:  # the API validated already; this guards replays
                raise ValueError(f"invalid arguments: {exc}") from None
            ctx = JobContext(
                job_id=job["id"],
                tenant_id=job["tenant_id"],
                attempt=int(job.get("attempt_base", 0)) + self.request.retries + 1,
                task_id=self.request.id,
            )
            try:
                result = spec.func(model, ctx)
            except spec.retry_on as exc:
                max_retries = int(job.get("max_retries", 0))
                if self.request.retries < max_retries:
                    raise self.retry(exc=exc, countdown=spec.backoff(self.request.retries), max_retries=max_retries)
                raise
            if isinstance(result, BaseModel):
                result = result.model_dump(mode="json")
            return result

        run.__name__ = name.replace(".", "_")
        spec.celery_task = app.task(name=name, bind=True)(run)
        REGISTRY[name] = spec
        return spec

    return decorate


def get_task_type(name: str) -> TaskType | None:
    load_task_types()
    return REGISTRY.get(name)


def all_task_types() -> list[TaskType]:
    load_task_types()
    return [REGISTRY[k] for k in sorted(REGISTRY)]


_loaded = False


def load_task_types() -> None:
    """Import the modules that register task types (built-ins + demo)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import tenantq.worker.demo  # noqa: F401
