"""Request and response bodies of the workflows API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import ConfigDict, Field, StrictFloat, StrictInt

from tenantq.core.text_checks import SafeRequest, SafeResponse
from tenantq.platform.jobs.schemas import JobStatus, TaskName

MAX_STEPS = 50
MAX_GROUP = 50


class StepTask(SafeRequest):
    model_config = ConfigDict(extra="forbid")

    task: TaskName
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="Arguments. From the second step on, the previous step's result is added under the key "
        "`input` (a list of results, in group order, after a group), so the key is reserved; task types "
        "whose arguments have no `input` field and accept no extra keys run without it.",
    )
    priority: StrictInt = Field(default=5, ge=0, le=9)
    max_retries: StrictInt | None = Field(default=None, ge=0, le=100)
    soft_time_limit: StrictFloat | None = Field(default=None, gt=0)
    time_limit: StrictFloat | None = Field(default=None, gt=0)


class StepGroup(SafeRequest):
    model_config = ConfigDict(extra="forbid")

    group: list[StepTask] = Field(
        min_length=1,
        max_length=MAX_GROUP,
        description="Tasks run in parallel; the step succeeds when all of them do.",
    )


class WorkflowCreate(SafeRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "steps": [
                        {"task": "demo.echo", "args": {"order": 1042}},
                        {"group": [{"task": "demo.echo"}, {"task": "demo.echo", "priority": 7}]},
                    ]
                }
            ]
        },
    )

    steps: list[StepTask | StepGroup] = Field(
        min_length=1,
        max_length=MAX_STEPS,
        description="Run in order: a step starts when the previous one succeeded, with its result as "
        "`input`.",
    )


WorkflowStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
StepStatus = Literal[
    "pending", "skipped", "queued", "running", "retrying", "succeeded", "failed", "cancelled"
]


class StepJobOut(SafeResponse):
    id: str
    task: str
    status: JobStatus
    error: str | None = None


class StepOut(SafeResponse):
    index: int
    kind: Literal["task", "group"]
    tasks: list[str]
    status: StepStatus = Field(
        description="pending: not reached yet; skipped: never reached because the "
        "workflow stopped earlier; otherwise from its jobs."
    )
    jobs: list[StepJobOut]


class WorkflowOut(SafeResponse):
    id: str
    status: WorkflowStatus
    current_step: int
    failed_step: int | None = Field(
        default=None, description="The step that stopped the workflow, if one did."
    )
    error: str | None = Field(
        default=None, description="Why the workflow stopped: which step and job, and its error."
    )
    result: Any = Field(
        default=None, description="The last step's result (a list for a group) once succeeded."
    )
    created_at: datetime
    finished_at: datetime | None = None
    steps: list[StepOut]
