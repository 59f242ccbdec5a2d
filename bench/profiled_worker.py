"""tenantq's Celery app with a cProfile per pool process (``python -m bench.overhead --profile``).

Each pool process starts a profiler when it is forked and dumps it to ``$TQ_BENCH_PROFILE_DIR/<pid>.prof``
when it shuts down, so the figures cover the tasks and every signal receiver around them.
"""

from __future__ import annotations

import cProfile
import os
from typing import Any

from celery import signals

from tenantq.worker import app, celery  # noqa: F401  (celery -A bench.profiled_worker finds app)

_profiler: cProfile.Profile | None = None


@signals.worker_process_init.connect
def _start(**_: Any) -> None:
    global _profiler
    _profiler = cProfile.Profile()
    _profiler.enable()


@signals.worker_process_shutdown.connect
def _dump(**_: Any) -> None:
    if _profiler is not None:
        _profiler.disable()
        _profiler.dump_stats(os.path.join(os.environ["TQ_BENCH_PROFILE_DIR"], f"{os.getpid()}.prof"))
