"""tenantq's Python SDK for tenants: ``Client`` (sync) and ``AsyncClient`` (async), on httpx.

from tenantq_client import Client

with Client(api_key="tq_...", base_url="http://127.0.0.1:8000") as tq:
    job = tq.jobs.submit_and_wait("demo.echo", {"hello": "world"})
    print(job.status, job.result)
"""

from tenantq_client._core import RetryPolicy
from tenantq_client.aio import AsyncClient
from tenantq_client.client import Client
from tenantq_client.errors import ApiError, ConnectionFailed, JobNotFinished, TenantqClientError
from tenantq_client.models import Job, JobEvent
from tenantq_client.webhooks import InvalidSignature, construct_event, verify_signature

__version__ = "0.1.0"
__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "ConnectionFailed",
    "InvalidSignature",
    "Job",
    "JobEvent",
    "JobNotFinished",
    "RetryPolicy",
    "TenantqClientError",
    "construct_event",
    "verify_signature",
]
