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
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from tenantq.core.errors import ServiceUnavailable
from tenantq.core.http_errors import OVERLOADED_RETRY_AFTER, error_response
from tenantq.core.metrics import rejection

log = logging.getLogger("tenantq.load")

EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class LoadShedder:
    """Pure ASGI middleware: a request holds its turn until its response is sent."""

    def __init__(self, app: ASGIApp, *, max_inflight: int, wait_seconds: float) -> None:
        self.app = app
        self.max_inflight = max_inflight
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
        turns = self._semaphore()
        try:
            if turns.locked():  # every turn taken (or others already waiting): wait a little, in line
                await asyncio.wait_for(turns.acquire(), timeout=self.wait_seconds)
            else:
                await turns.acquire()  # a turn is free: taken without suspending
        except TimeoutError:
            self.shed += 1
            rejection(None, "overloaded", 503)
            refused = ServiceUnavailable(
                "The server is overloaded; retry after the delay in Retry-After.",
                code="overloaded",
                details={"max_inflight": self.max_inflight},
                headers={"Retry-After": OVERLOADED_RETRY_AFTER},
            )
            await error_response(refused)(scope, receive, send)
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1
            turns.release()
