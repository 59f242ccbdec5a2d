"""HTTP routes for workflows: parse, call the service, return a schema."""

from __future__ import annotations

from fastapi import APIRouter

from tenantq.core.dependencies import SessionDep
from tenantq.core.openapi import errors
from tenantq.platform.workflows import service
from tenantq.platform.workflows.repository import WorkflowRepository
from tenantq.platform.workflows.schemas import WorkflowCreate, WorkflowOut
from tenantq.tenants.access.dependencies import JobsRead, JobsWrite

router = APIRouter(prefix="/v1", tags=["workflows"])


@router.post(
    "/workflows",
    response_model=WorkflowOut,
    status_code=202,
    summary="Start a workflow",
    description="Runs the steps in order, each as a job of yours on your queue. A step is one task or a "
    "`group` of tasks run in parallel. From the second step on, each task gets the previous step's result "
    "as the argument `input` (a list of results, in group order, after a group) if its task type takes "
    "it. A failed or cancelled "
    "step stops the workflow; `error` then says which step and why.",
    responses=errors(
        402, 503, s503="The queue is unavailable (code `queue_unavailable`); nothing was started."
    ),
)
def create_workflow(body: WorkflowCreate, ctx: JobsWrite, session: SessionDep) -> WorkflowOut:
    wf = service.create_workflow(session, ctx.tenant, body)
    return service.workflow_out(session, wf)


@router.get("/workflows/{workflow_id}", response_model=WorkflowOut, summary="Get a workflow and its steps")
def get_workflow(workflow_id: str, ctx: JobsRead, session: SessionDep) -> WorkflowOut:
    return service.workflow_out(session, WorkflowRepository(session, ctx.tenant_id).get(workflow_id))


@router.post(
    "/workflows/{workflow_id}/cancel",
    response_model=WorkflowOut,
    summary="Cancel a workflow",
    description="Stops the chain (no further step starts) and cancels the current step's unfinished jobs "
    "as `POST /v1/jobs/{id}/cancel` would. A finished workflow is returned unchanged.",
)
def cancel_workflow(workflow_id: str, ctx: JobsWrite, session: SessionDep) -> WorkflowOut:
    wf = service.cancel_workflow(session, ctx.tenant_id, workflow_id)
    return service.workflow_out(session, wf)
