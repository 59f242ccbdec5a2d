"""The task body's own clock: a tenant's time limits and its metered time cover the task function only.

The task wrapper (``registry``) runs the task function inside :class:`BodyClock`. The clock

- starts the wall and CPU measurement just before the function and stops it just after, so the usage
  the attempt is billed for (``compute_ms``, ``wall_ms``) is the tenant's code, not tenantq's start and
  finish bookkeeping (start guard, status SQL, metering, metrics) around it;
- enforces the job's ``soft_time_limit`` and ``time_limit`` on the function alone, with a ``SIGALRM``
  interval timer in the pool process: at the soft limit the function gets ``SoftTimeLimitExceeded``
  (it may catch it to clean up), at the hard limit :class:`HardTimeLimitExceeded` (a Celery
  ``TimeLimitExceeded``), which ends the attempt as failed. Neither can fire while the platform writes
  a job's status, so a limit can no longer cut a status update or its SQL connection in half.

Code that swallows the hard stop, or is stuck in C where no signal handler runs, is still killed by
the pool: the message carries Celery's hard limit as ``time_limit`` + ``time_limit_grace_seconds``
(``messages.message_for_attempt``), and the worker's main process records that kill
(``lifecycle.attempt_killed``).

The timers need the main thread (Python runs signal handlers there): Celery's prefork and solo pools
run tasks in it. Elsewhere (a thread pool) the clock measures but arms nothing, and only Celery's
hard limit applies. A task function must not use ``SIGALRM`` itself.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType, TracebackType
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded


class HardTimeLimitExceeded(TimeLimitExceeded):
    """Raised in the task function when it reaches the job's hard time limit."""


def _secs(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


class BodyClock:
    """Times one call of a task function and stops it at its limits (see the module docstring)."""

    def __init__(self, soft: float | None = None, hard: float | None = None) -> None:
        self.soft = soft or None
        self.hard = hard or None
        self.wall_s = 0.0
        self.cpu_s = 0.0
        self._mono = 0.0
        self._cpu = 0.0
        self._hard_at: float | None = None
        self._stage = "idle"  # idle -> soft (soft timer armed) / hard (hard timer armed) -> done
        self._previous: Any = None
        self._armed = False

    # -- the timer ------------------------------------------------------------------------------------

    def _on_alarm(self, _signum: int, _frame: FrameType | None) -> None:
        if self._stage == "soft":
            if self._hard_at is not None:
                self._stage = "hard"
                signal.setitimer(signal.ITIMER_REAL, max(0.001, self._hard_at - time.monotonic()))
            else:
                self._stage = "done"
            raise SoftTimeLimitExceeded(f"soft time limit of {_secs(self.soft or 0)}s exceeded")
        if self._stage == "hard":
            self._stage = "done"
            raise HardTimeLimitExceeded(self.hard)

    def _arm(self, start: float) -> None:
        first = self.soft if self.soft is not None else self.hard
        if first is None or threading.current_thread() is not threading.main_thread():
            return
        self._hard_at = start + self.hard if self.hard is not None else None
        self._stage = "soft" if self.soft is not None else "hard"
        self._previous = signal.signal(signal.SIGALRM, self._on_alarm)
        self._armed = True
        signal.setitimer(signal.ITIMER_REAL, first)

    def _disarm(self) -> None:
        if not self._armed:
            return
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._previous if self._previous is not None else signal.SIG_DFL)
        self._armed = False

    # -- the measured call ------------------------------------------------------------------------------

    def __enter__(self) -> BodyClock:
        start = time.monotonic()
        self._arm(start)
        self._mono, self._cpu = time.monotonic(), time.process_time()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stage = "done"  # first: a timer firing from here on raises nothing
        wall, cpu = time.monotonic(), time.process_time()
        self._disarm()
        self.wall_s = max(0.0, wall - self._mono)
        self.cpu_s = max(0.0, cpu - self._cpu)

    @property
    def wall_ms(self) -> int:
        return round(self.wall_s * 1000)

    @property
    def cpu_ms(self) -> int:
        return round(self.cpu_s * 1000)
