"""tenantq: a multi-tenant background job platform built on Celery."""

__version__ = "0.1.0"
