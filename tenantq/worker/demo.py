"""Demo task types used by the docs, the tests and the benchmarks."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tenantq.platform.jobs.registry import AnyArgs, JobContext, RetryableError, task_type


@task_type("demo.echo", args=AnyArgs, description="Returns its arguments unchanged.")
def echo(args: AnyArgs, ctx: JobContext) -> dict[str, Any]:
    return args.model_dump(mode="json")


class SleepArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(ge=0, le=3600, description="How long to sleep.")


@task_type("demo.sleep", args=SleepArgs, description="Sleeps for the given number of seconds.")
def sleep(args: SleepArgs, ctx: JobContext) -> dict[str, Any]:
    time.sleep(args.seconds)
    return {"slept": args.seconds}


class StepsArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = Field(default=5, ge=1, le=1000, description="How many steps.")
    seconds: float = Field(default=0.2, ge=0, le=60, description="How long each step sleeps.")


@task_type(
    "demo.steps",
    args=StepsArgs,
    description="Sleeps step by step, reporting its progress after each step (ctx.progress).",
)
def steps(args: StepsArgs, ctx: JobContext) -> dict[str, Any]:
    for done in range(1, args.steps + 1):
        time.sleep(args.seconds)
        ctx.progress(done / args.steps, f"step {done} of {args.steps}")
    return {"steps": args.steps}


class CpuArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ms: int = Field(ge=0, le=3_600_000, description="Milliseconds of CPU to burn.")


@task_type("demo.cpu", args=CpuArgs, description="Burns CPU for the given number of milliseconds.")
def cpu(args: CpuArgs, ctx: JobContext) -> dict[str, Any]:
    deadline = time.process_time() + args.ms / 1000
    n = 0
    while time.process_time() < deadline:
        n += 1
    return {"ms": args.ms, "iterations": n}


class FlakyArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    failures: int = Field(ge=0, le=100, description="Attempts that fail before one succeeds.")


class FlakyError(RetryableError):
    pass


@task_type(
    "demo.flaky",
    args=FlakyArgs,
    description="Fails the first N attempts, then succeeds.",
    retry_backoff=0.2,
    retry_backoff_max=2.0,
)
def flaky(args: FlakyArgs, ctx: JobContext) -> dict[str, Any]:
    if ctx.attempt <= args.failures:
        raise FlakyError(f"attempt {ctx.attempt} fails on purpose ({args.failures} planned failures)")
    return {"attempt": ctx.attempt}


class FailArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str = Field(default="demo.fail always fails", max_length=1000)


@task_type("demo.fail", args=FailArgs, description="Always raises an error.")
def fail(args: FailArgs, ctx: JobContext) -> None:
    raise RuntimeError(args.message)


@task_type(
    "demo.sleep_uninterruptible",
    args=SleepArgs,
    cancellable=False,
    description="Sleeps like demo.sleep but cannot be killed by a cancellation: it checks for a "
    "cancellation request every 0.1 s and stops early at that safe point.",
)
def sleep_uninterruptible(args: SleepArgs, ctx: JobContext) -> dict[str, Any]:
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        if ctx.cancel_requested():
            return {"slept": round(args.seconds - (deadline - time.monotonic()), 3), "stopped_early": True}
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
    return {"slept": args.seconds, "stopped_early": False}
