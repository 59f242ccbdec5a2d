"""Security headers on every API response.

- ``X-Content-Type-Options: nosniff`` on every response: a browser must never read a JSON error that
  echoes user input as HTML or script.
- ``Cache-Control: no-store`` on JSON responses that set no caching policy themselves: they carry one
  tenant's data, which no shared or browser cache should keep.
- ``Strict-Transport-Security`` when ``TENANTQ_HSTS_SECONDS`` is above 0 and the request arrived over
  https (the scheme uvicorn reports, which honours ``X-Forwarded-Proto`` only from trusted proxies).
  Off by default: HSTS pins a whole host name to https for that long, a choice for the operator.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tenantq.core.settings import get_settings


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hsts = get_settings().hsts_seconds if scope.get("scheme") == "https" else 0

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[tuple[bytes, bytes]] = list(message.get("headers", []))
                present = {name.lower(): value for name, value in headers}
                if b"x-content-type-options" not in present:
                    headers.append((b"x-content-type-options", b"nosniff"))
                if _is_json(present.get(b"content-type", b"")) and b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                if hsts and b"strict-transport-security" not in present:
                    headers.append((b"strict-transport-security", f"max-age={hsts}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
