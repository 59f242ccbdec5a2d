"""The task body's clock: limits and metered time cover the task function alone."""

from __future__ import annotations

import contextlib
import signal
import time

import pytest
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from tenantq.platform.jobs.bodyclock import BodyClock, HardTimeLimitExceeded


def burn(seconds: float) -> None:
    deadline = time.process_time() + seconds
    while time.process_time() < deadline:
        pass


def test_measures_the_body_alone():
    burn(0.05)  # before: not counted
    with BodyClock() as clock:
        burn(0.05)
    burn(0.05)  # after: not counted
    assert 45 <= clock.cpu_ms <= 80
    assert clock.wall_ms >= clock.cpu_ms - 5


def test_an_empty_body_costs_nothing():
    with BodyClock(soft=5.0, hard=10.0) as clock:
        pass
    assert clock.cpu_ms <= 1 and clock.wall_ms <= 1


def test_hard_limit_stops_a_sleeping_body():
    started = time.monotonic()
    with pytest.raises(HardTimeLimitExceeded) as info, BodyClock(hard=0.2):
        time.sleep(5)
    assert isinstance(info.value, TimeLimitExceeded)
    assert time.monotonic() - started < 2


def test_soft_limit_first_then_the_hard_one_if_the_body_goes_on():
    events = []

    def body() -> None:
        try:
            time.sleep(5)
        except SoftTimeLimitExceeded:
            events.append("soft")
            time.sleep(5)  # ignores the soft limit: the hard one still comes

    with pytest.raises(HardTimeLimitExceeded), BodyClock(soft=0.1, hard=0.3):
        body()
    assert events == ["soft"]


def test_a_body_that_cleans_up_after_the_soft_limit_ends_normally():
    with BodyClock(soft=0.1, hard=5.0) as clock, contextlib.suppress(SoftTimeLimitExceeded):
        time.sleep(5)
    assert 0.05 < clock.wall_s < 2


def test_nothing_fires_after_the_body_and_the_previous_handler_is_back():
    previous = signal.getsignal(signal.SIGALRM)
    with BodyClock(soft=0.1, hard=0.2):
        pass
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is previous
    time.sleep(0.3)  # a stray alarm would raise here
