"""The Celery worker runtime. ``celery -A tenantq.worker worker`` finds ``app`` here."""

from tenantq.worker.main import app

celery = app

__all__ = ["app", "celery"]
