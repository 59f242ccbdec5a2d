"""Tenant-scoped data access for workflows (the only way the API reads them). The worker's completion
path advances workflows of every tenant by id, in its own unscoped session."""

from __future__ import annotations

from tenantq.core.repository import TenantRepository
from tenantq.platform.workflows.models import Workflow


class WorkflowRepository(TenantRepository[Workflow]):
    model = Workflow
    not_found = "Workflow not found."
