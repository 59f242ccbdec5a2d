"""Load shedding: one API process works on at most ``api_max_inflight`` requests at once.

Without a bound, an overloaded process accepts every connection and queues the requests on its thread
pool and its connection pool, where they wait until their clients give up (and then still run: a POST
whose client timed out still creates its job). Worse, a request that checked out a database connection
in one dependency could wait for a thread to run its route while the threads are all held by requests
waiting for a connection.

Here a request either gets one of ``api_max_inflight`` turns within ``api_overload_wait_seconds`` or is
answered at once with 503 ``overloaded`` and ``Retry-After``, before any work (body, auth, database).
With ``api_max_inflight`` at most the connection pool (``db_pool_size + db_max_overflow``) and below the
request thread pool (40 threads), an admitted request never waits for a connection nor for a thread.

Probes and scrapes (``/healthz``, ``/readyz``, ``/metrics``) are never shed: an overloaded process is
alive, and the operator needs its metrics most then.

Waits (``GET /v1/jobs/{id}?wait=``, ``GET /v1/jobs/{id}/events``) take no turn: they spend seconds to
minutes asleep on the job event hub, holding neither a thread nor a connection, and eight of them would
otherwise shut every other request out. They are bounded apart (``api_max_waits``); past it a wait is
answered 503 ``overloaded`` at once.
"""

from __future__ import annotations

import asyncio
import logging
import re
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from tenantq.core.errors import ServiceUnavailable
from tenantq.core.http_errors import OVERLOADED_RETRY_AFTER, error_response
from tenantq.core.metrics import rejection

log = logging.getLogger("tenantq.load")

EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_JOB_PATH = re.compile(r"^/v1/jobs/[^/]+(/events)?$")


def is_wait(scope: Scope) -> bool:
    """A long-poll or an event stream of one job (see the module docstring)."""
    path = scope.get("path", "")
    if scope.get("method") != "GET" or not _JOB_PATH.match(path):
        return False
    if path.endswith("/events"):
        return True
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return any(v not in ("", "0") for v in query.get("wait", []))


class LoadShedder:
    """Pure ASGI middleware: a request holds its turn until its response is sent."""

    def __init__(
        self, app: ASGIApp, *, max_inflight: int, wait_seconds: float, max_waits: int = 2000
    ) -> None:
        self.app = app
        self.max_inflight = max_inflight
        self.max_waits = max_waits
        self.waits = 0
        self.wait_seconds = wait_seconds
        self._turns: asyncio.Semaphore | None = None
        self.inflight = 0
        self.shed = 0

    def _semaphore(self) -> asyncio.Semaphore:
        if self._turns is None:  # created on the server's event loop, at the first request
            self._turns = asyncio.Semaphore(self.max_inflight)
        return self._turns

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        if is_wait(scope):
            await self._wait(scope, receive, send)
            return
        turns = self._semaphore()
        try:
            if turns.locked():  # every turn taken (or others already waiting): wait a little, in line
                await asyncio.wait_for(turns.acquire(), timeout=self.wait_seconds)
            else:
                await turns.acquire()  # a turn is free: taken without suspending
        except TimeoutError:
            await self._refuse(scope, receive, send, {"max_inflight": self.max_inflight})
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1
            turns.release()

    async def _wait(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.waits >= self.max_waits:
            await self._refuse(scope, receive, send, {"max_waits": self.max_waits})
            return
        self.waits += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.waits -= 1

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, details: dict[str, int]) -> None:
        self.shed += 1
        rejection(None, "overloaded", 503)
        refused = ServiceUnavailable(
            "The server is overloaded; retry after the delay in Retry-After.",
            code="overloaded",
            details=details,
            headers={"Retry-After": OVERLOADED_RETRY_AFTER},
        )
        await error_response(refused)(scope, receive, send)
