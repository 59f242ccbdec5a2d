"""``tenantq jobs``: a tenant's commands, over HTTP with the Python SDK (``clients/python``).

Unlike the operator commands, these never touch the database or Redis: they talk to a running API as
the tenant whose key they are given (``--key`` or ``$TENANTQ_API_KEY``; ``--url`` or ``$TENANTQ_URL``,
default http://127.0.0.1:8000). The SDK, httpx and rich are imported inside each command, so
``tenantq --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from tenantq.cli.common import JsonOut

if TYPE_CHECKING:
    from tenantq_client import Client, Job

app = typer.Typer(
    help="A tenant's jobs over the API: submit, get, wait, list (needs an API key).",
    no_args_is_help=True,
)

Key = Annotated[
    str | None,
    typer.Option("--key", envvar="TENANTQ_API_KEY", help="The tenant's API key.", show_default=False),
]
Url = Annotated[
    str,
    typer.Option("--url", envvar="TENANTQ_URL", help="The tenantq API."),
]
DEFAULT_URL = "http://127.0.0.1:8000"
FINISHED_OK = "succeeded"


def _fail(as_json: bool, code: str, message: str, details: Any = None, exit_code: int = 1) -> NoReturn:
    if as_json:
        typer.echo(json.dumps({"error": {"code": code, "message": message, "details": details}}))
    else:
        typer.echo(f"error: {message}", err=True)
    raise typer.Exit(exit_code)


def _client(key: str | None, url: str, as_json: bool) -> Client:
    if not key:
        _fail(as_json, "no_api_key", "no API key: pass --key or set TENANTQ_API_KEY", exit_code=2)
    try:
        from tenantq_client import Client
    except ImportError:
        _fail(as_json, "sdk_missing", "the tenant SDK is not installed: pip install -e clients/python")
    return Client(api_key=key, base_url=url)


def _run(as_json: bool, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call the SDK; its errors become one line (or one JSON error), exit code 1."""
    from tenantq_client import ApiError, ConnectionFailed, JobNotFinished

    try:
        return fn(*args, **kwargs)
    except ApiError as exc:
        _fail(as_json, exc.code, exc.message, exc.details)
    except ConnectionFailed as exc:
        _fail(as_json, "connection_failed", str(exc))
    except JobNotFinished as exc:
        raise exc from None


def _dump(job: Job) -> dict[str, Any]:
    return job.model_dump(mode="json")


def _line(job: Job) -> str:
    text = f"{job.id}  {job.status:<9}  {job.task}"
    if job.progress is not None and job.status == "running":
        text += f"  {round(job.progress.fraction * 100)}% {job.progress.message}".rstrip()
    if job.status == "failed" and job.error:
        text += f"  {job.error.splitlines()[0]}"
    return text


def _parse_args(raw: str | None, as_json: bool) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        _fail(as_json, "invalid_args", f"--args is not JSON: {exc}", exit_code=2)
    if not isinstance(value, dict):
        _fail(as_json, "invalid_args", "--args must be a JSON object", exit_code=2)
    return value


@app.command()
def submit(
    task: Annotated[str, typer.Argument(help="A registered task type, e.g. demo.echo.")],
    args: Annotated[str | None, typer.Option("--args", help="Arguments as a JSON object.")] = None,
    priority: Annotated[int | None, typer.Option(help="0 (least urgent) to 9.")] = None,
    countdown: Annotated[float | None, typer.Option(help="Seconds before it may run.")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Same key, same job (default: a fresh one per call).")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for it to finish (as `jobs wait`).")] = False,
    key: Key = None,
    url: Url = DEFAULT_URL,
    as_json: JsonOut = False,
) -> None:
    """Submit a job; prints its id and status (the job as JSON with --json)."""
    arguments = _parse_args(args, as_json)
    with _client(key, url, as_json) as client:
        job = _run(
            as_json,
            client.jobs.submit,
            task,
            arguments,
            priority=priority,
            countdown=countdown,
            idempotency_key=idempotency_key,
        )
        if wait:
            _wait_and_report(client, [job.id], None, as_json)
            return
    typer.echo(json.dumps(_dump(job)) if as_json else _line(job))


@app.command()
def get(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    wait: Annotated[
        float | None,
        typer.Option(help="Long-poll: answer when it finishes or after this many seconds (<= 60)."),
    ] = None,
    key: Key = None,
    url: Url = DEFAULT_URL,
    as_json: JsonOut = False,
) -> None:
    """Show a job: status, progress, result or error."""
    with _client(key, url, as_json) as client:
        job = _run(as_json, client.jobs.get, job_id, wait=wait)
    if as_json:
        typer.echo(json.dumps(_dump(job)))
        return
    typer.echo(_line(job))
    if job.status == FINISHED_OK:
        typer.echo(json.dumps(job.result, indent=2))
    elif job.error:
        typer.echo(job.error)


@app.command("list")
def list_jobs(
    status: Annotated[
        str | None, typer.Option(help="Only jobs in this status (failed: dead letters).")
    ] = None,
    task: Annotated[str | None, typer.Option(help="Only jobs of this task type.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many jobs, newest first.")] = 20,
    key: Key = None,
    url: Url = DEFAULT_URL,
    as_json: JsonOut = False,
) -> None:
    """List jobs, newest first (fetched page by page up to --limit)."""
    from itertools import islice

    with _client(key, url, as_json) as client:
        jobs = _run(
            as_json,
            lambda: list(
                islice(client.jobs.list(status=status, task=task, page_size=min(limit, 500)), limit)
            ),
        )
    if as_json:
        typer.echo(json.dumps({"items": [_dump(j) for j in jobs]}))
        return
    for job in jobs:
        typer.echo(_line(job))
    if not jobs:
        typer.echo("no jobs", err=True)


@app.command()
def wait(
    job_ids: Annotated[list[str], typer.Argument(help="One job id, or several (a batch).")],
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds (exit 3).")] = None,
    key: Key = None,
    url: Url = DEFAULT_URL,
    as_json: JsonOut = False,
) -> None:
    """Wait until the jobs finish, with a live progress bar on a terminal.

    One job: its own progress (ctx.progress). Several: how many finished, and each one's progress.
    Exit 0 if every job succeeded, 1 if one failed or was cancelled, 3 on --timeout."""
    with _client(key, url, as_json) as client:
        _wait_and_report(client, job_ids, timeout, as_json)


def _wait_and_report(client: Client, job_ids: list[str], timeout: float | None, as_json: bool) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tenantq_client import JobNotFinished

    show = sys.stdout.isatty() and not as_json
    bar = _Bars(job_ids) if show else None
    jobs: dict[str, Job] = {}
    unfinished: list[str] = []

    def one(job_id: str) -> None:
        try:
            jobs[job_id] = _run(
                as_json,
                client.jobs.wait,
                job_id,
                timeout=timeout,
                on_event=bar.event if bar else None,
            )
        except JobNotFinished as exc:
            jobs[job_id] = exc.job
            unfinished.append(job_id)
        if bar:
            bar.finished(jobs[job_id])

    with bar or _Nothing(), ThreadPoolExecutor(max_workers=min(16, len(job_ids))) as pool:
        for future in [pool.submit(one, job_id) for job_id in job_ids]:
            future.result()
    ordered = [jobs[j] for j in job_ids]
    if as_json:
        payload = _dump(ordered[0]) if len(ordered) == 1 else {"items": [_dump(j) for j in ordered]}
        typer.echo(json.dumps(payload))
    else:
        for job in ordered:
            typer.echo(_line(job))
    if unfinished:
        raise typer.Exit(3)
    if any(job.status != FINISHED_OK for job in ordered):
        raise typer.Exit(1)


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class _Bars:
    """rich progress bars: the job's own progress for one job; jobs finished (and one line per job's
    progress, up to a screenful) for several."""

    def __init__(self, job_ids: list[str]) -> None:
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

        self.single = len(job_ids) == 1
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            transient=False,
        )
        self.total = None if self.single else self.progress.add_task("jobs", total=len(job_ids), note="")
        shown = job_ids[:10]
        self.rows = {j: self.progress.add_task(j[:8], total=1.0, note="waiting") for j in shown}

    def __enter__(self) -> _Bars:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def event(self, event: Any) -> None:
        if event.kind == "progress" and event.progress.id in self.rows:
            p = event.progress
            self.progress.update(self.rows[p.id], completed=p.fraction, note=p.message)
        elif event.kind == "status" and event.status.id in self.rows:
            self.progress.update(self.rows[event.status.id], note=event.status.status)
        elif event.kind == "job" and event.job is not None and event.job.id in self.rows:
            job = event.job
            fraction = job.progress.fraction if job.progress is not None else 0.0
            self.progress.update(self.rows[job.id], completed=fraction, note=job.status)

    def finished(self, job: Job) -> None:
        if job.id in self.rows:
            done = 1.0 if job.status == FINISHED_OK else None
            self.progress.update(self.rows[job.id], completed=done, note=job.status)
        if self.total is not None:
            self.progress.advance(self.total)
