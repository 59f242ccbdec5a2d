"""``TenantScheduler``: a Celery beat scheduler that also runs the tenants' schedules from SQL.

``celery -A tenantq.worker beat -S tenantq.platform.schedules.beat:TenantScheduler`` (what
``tenantq beat`` and ``tenantq up`` run). Static ``beat_schedule`` entries still work as with Celery's
default in-memory scheduler; on top of that, every tick:

1. reads the enabled schedules that are due (``next_run_at <= now``) from SQL, so creating, editing,
   disabling or deleting a schedule through the API takes effect at the next read, without a restart;
2. claims each due time with a conditional UPDATE and, if the claim won, submits the job through the
   jobs service (see :mod:`tenantq.platform.schedules.service` for the exactly-once argument);
3. sleeps until the earliest next due time, but never longer than ``TENANTQ_SCHEDULE_POLL_SECONDS``
   (default 1 s) so that edits are picked up quickly.

Firing happens in beat itself: it is one SQL claim and one job submission per firing (milliseconds),
and doing it here avoids a second hop through a Celery task that could be lost between the claim and
the submission. Running two beats is safe (each due time fires once); it is how beat is made highly
available. Redis keys: none of its own (the jobs it creates use the jobs service's keys).
"""

from __future__ import annotations

from celery.beat import Scheduler
from celery.utils.log import get_logger

from tenantq.core.db import dispose_engine, session_factory, utcnow
from tenantq.core.settings import get_settings
from tenantq.platform.schedules.service import fire_due, next_due_at

# A child of the "celery" logger: beat configures that one, so these lines reach its log.
log = get_logger(__name__)

# Never sleep less than this between two reads, even when a schedule is overdue and keeps failing.
MIN_SLEEP = 0.02


class TenantScheduler(Scheduler):
    #: Per-tenant schedules live in SQL; nothing to persist in a local shelve file.
    persistence = None

    def __init__(self, *args, **kwargs):
        # Before super().__init__: it calls setup_schedule(), which reads it.
        self.poll_seconds = get_settings().schedule_poll_seconds
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        # beat may have been forked/daemonised after import: never reuse a parent's DB connections.
        dispose_engine()
        super().setup_schedule()
        log.info("tenant schedules: reading from SQL every %.2fs at most", self.poll_seconds)

    def tick(self, *args, **kwargs) -> float:
        static_wait = super().tick(*args, **kwargs)
        tenant_wait = self.tick_tenant_schedules()
        return max(MIN_SLEEP, min(static_wait, tenant_wait))

    def tick_tenant_schedules(self) -> float:
        """Fire what is due; return how long to sleep before the next read."""
        try:
            session = session_factory()()
            try:
                for firing in fire_due(session):
                    log.info(
                        "fired schedule %s due %s -> job %s%s",
                        firing.schedule_id,
                        firing.due.isoformat(),
                        firing.job_id,
                        f" (refused: {firing.error})" if firing.error else "",
                    )
                upcoming = next_due_at(session)
            finally:
                session.close()
        except Exception:  # the database being away must not kill beat
            log.exception("tenant schedules: read/fire failed; retrying")
            return min(5.0, self.poll_seconds * 2)
        if upcoming is None:
            return self.poll_seconds
        return min(self.poll_seconds, max(0.0, (upcoming - utcnow()).total_seconds()))

    @property
    def info(self) -> str:
        return f"tenant schedules from SQL (poll {self.poll_seconds:g}s)"
