"""Built-in task types: ``email.send`` and ``http.request``.

Both talk to the outside world on a tenant's behalf, so both are fenced by operator configuration:
- ``email.send`` relays through the operator's SMTP server (``TENANTQ_SMTP_*``). A tenant may only use
  sender addresses in its allowed domains (``tenant.overrides["email_from_domains"]``, a list); a tenant
  without any may only send as ``TENANTQ_SMTP_DEFAULT_FROM``. Transient SMTP failures (4xx replies,
  dropped connections) are retried; a rejected recipient or sender (5xx) is final.
- ``http.request`` goes through :mod:`tenantq.core.outbound`: private, loopback, link-local and
  reserved destinations are refused unless the operator allows them, for every redirect hop too.
  Connection errors, timeouts, 429 and 5xx are retried; ``Retry-After`` is carried on the error as
  ``retry_after`` and used as the minimum delay before the next attempt.
"""

from __future__ import annotations

import email.utils
import re
import smtplib
import ssl
import time
from email.message import EmailMessage
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tenantq.core.db import unscoped_session
from tenantq.core.outbound import BlockedDestination, guarded_client
from tenantq.core.settings import get_settings
from tenantq.platform.jobs.registry import JobContext, RetryableError, task_type
from tenantq.tenants.accounts.models import Tenant

# ---------------------------------------------------------------------------------------------------
# email.send
# ---------------------------------------------------------------------------------------------------

# Deliberately simple: one @, no spaces or angle brackets, a dotted-or-plain domain. The SMTP server is
# the real judge; this only catches garbage before it is queued.
_ADDRESS = re.compile(
    r"^[^@\s<>\"(),;:]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]{1,63})*$"
)
_HEADER_UNSAFE = re.compile(r"[\r\n]")


def _address(value: str) -> str:
    """Accept ``user@example.com`` or ``Name <user@example.com>``; return it normalised."""
    if _HEADER_UNSAFE.search(value):
        raise ValueError("line breaks are not allowed in addresses")
    name, addr = email.utils.parseaddr(value)
    if not addr or not _ADDRESS.match(addr):
        raise ValueError(f"{value!r} is not an e-mail address")
    return email.utils.formataddr((name, addr)) if name else addr


def address_domain(value: str) -> str:
    return email.utils.parseaddr(value)[1].rpartition("@")[2].lower()


class EmailArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    to: list[str] = Field(min_length=1, max_length=50, description="Recipients (1-50).")
    subject: str = Field(max_length=998, description="Subject line.")
    text: str = Field(max_length=1_000_000, description="Plain-text body.")
    html: str | None = Field(default=None, max_length=1_000_000, description="Optional HTML alternative.")
    from_: str | None = Field(
        default=None,
        alias="from",
        description="Sender; its domain must be one of the tenant's allowed sender domains. "
        "Default: the operator's default sender.",
    )
    reply_to: str | None = Field(default=None, description="Optional Reply-To address.")

    @field_validator("to")
    @classmethod
    def _check_to(cls, v: list[str]) -> list[str]:
        return [_address(a) for a in v]

    @field_validator("from_", "reply_to")
    @classmethod
    def _check_one(cls, v: str | None) -> str | None:
        return None if v is None else _address(v)

    @field_validator("subject")
    @classmethod
    def _check_subject(cls, v: str) -> str:
        if _HEADER_UNSAFE.search(v):
            raise ValueError("line breaks are not allowed in the subject")
        return v


class TransientEmailError(RetryableError):
    """The relay could not take the message now (4xx, dropped connection): try again later."""


class EmailRejected(Exception):
    """The relay refused the message for good (5xx): retrying would give the same answer."""


class SenderNotAllowed(Exception):
    """The tenant asked to send from a domain it is not allowed to use."""


class EmailNotConfigured(Exception):
    """The operator has not configured an SMTP relay."""


def allowed_sender_domains(tenant: Tenant | None) -> list[str]:
    overrides = (tenant.overrides or {}) if tenant is not None else {}
    domains = overrides.get("email_from_domains") or []
    return sorted({str(d).strip().lower().lstrip("@") for d in domains if str(d).strip()})


def resolve_sender(requested: str | None, tenant: Tenant | None, default_from: str) -> str:
    """Apply the tenant's sender rules; returns the From header to use."""
    if requested is None:
        return default_from
    domains = allowed_sender_domains(tenant)
    if not domains:
        if email.utils.parseaddr(requested)[1].lower() == email.utils.parseaddr(default_from)[1].lower():
            return requested
        raise SenderNotAllowed(
            f"This tenant has no allowed sender domains; it may only send as {default_from!r} "
            "(omit 'from'). Ask the operator to allow your domain."
        )
    domain = address_domain(requested)
    if domain not in domains:
        raise SenderNotAllowed(
            f"Sender domain {domain!r} is not allowed for this tenant; allowed: {domains}."
        )
    return requested


def _is_transient(code: int) -> bool:
    return 400 <= code < 500


def _smtp_error(exc: smtplib.SMTPException) -> Exception:
    """Classify an SMTP error as transient (retry) or final."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _msg in exc.recipients.values()]
        detail = {
            rcpt: f"{code} {msg.decode(errors='replace') if isinstance(msg, bytes) else msg}"
            for rcpt, (code, msg) in exc.recipients.items()
        }
        if any(_is_transient(c) for c in codes):
            return TransientEmailError(f"recipients temporarily refused: {detail}")
        return EmailRejected(f"all recipients refused: {detail}")
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return TransientEmailError(f"SMTP server disconnected: {exc}")
    if isinstance(exc, smtplib.SMTPResponseException):
        msg = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
        text = f"SMTP {exc.smtp_code} {msg}"
        return TransientEmailError(text) if _is_transient(exc.smtp_code) else EmailRejected(text)
    return TransientEmailError(f"SMTP error: {exc}")


def build_message(args: EmailArgs, sender: str, ctx: JobContext) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(args.to)
    msg["Subject"] = args.subject
    msg["Date"] = email.utils.formatdate(localtime=False)
    # Derived from the job id: a retried attempt sends the same Message-ID, so receivers can dedupe.
    msg["Message-ID"] = f"<{ctx.job_id}@{address_domain(sender) or 'tenantq'}>"
    if args.reply_to:
        msg["Reply-To"] = args.reply_to
    msg["X-Tenantq-Job"] = ctx.job_id
    msg.set_content(args.text)
    if args.html is not None:
        msg.add_alternative(args.html, subtype="html")
    return msg


@task_type(
    "email.send",
    args=EmailArgs,
    description="Send an e-mail through the operator's SMTP relay. Retried on transient SMTP errors "
    "(4xx, connection problems), never on a rejected recipient or sender (5xx).",
    retry_on=(TransientEmailError,),
    retry_backoff=5.0,
    retry_backoff_max=600.0,
)
def send_email(args: EmailArgs, ctx: JobContext) -> dict[str, Any]:
    settings = get_settings()
    if not settings.smtp_host:
        raise EmailNotConfigured("No SMTP relay is configured (TENANTQ_SMTP_HOST); e-mail cannot be sent.")
    with unscoped_session() as session:
        tenant = session.get(Tenant, ctx.tenant_id)
        sender = resolve_sender(args.from_, tenant, settings.smtp_default_from)
    msg = build_message(args, sender, ctx)
    try:
        if settings.smtp_ssl:
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                settings.smtp_host,
                settings.smtp_port,
                timeout=settings.smtp_timeout_seconds,
                context=ssl.create_default_context(),
            )
        else:
            client = smtplib.SMTP(
                settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout_seconds
            )
        with client:
            if settings.smtp_starttls and not settings.smtp_ssl:
                client.starttls(context=ssl.create_default_context())
            if settings.smtp_username:
                client.login(settings.smtp_username, settings.smtp_password or "")
            refused = client.send_message(msg)
    except smtplib.SMTPException as exc:
        raise _smtp_error(exc) from None
    except (TimeoutError, OSError) as exc:
        raise TransientEmailError(f"cannot reach the SMTP relay: {exc}") from None
    accepted = [a for a in args.to if email.utils.parseaddr(a)[1] not in refused]
    # Some recipients refused but others accepted: the message went out, so this is not retried (a
    # retry would send it twice to the accepted ones); the refusals are reported in the result.
    return {
        "message_id": msg["Message-ID"],
        "from": sender,
        "accepted": accepted,
        "refused": {
            rcpt: f"{code} {m.decode(errors='replace') if isinstance(m, bytes) else m}"
            for rcpt, (code, m) in refused.items()
        },
    }


# ---------------------------------------------------------------------------------------------------
# http.request
# ---------------------------------------------------------------------------------------------------

RESULT_HEADERS = (
    "content-type",
    "content-length",
    "content-encoding",
    "location",
    "retry-after",
    "etag",
    "last-modified",
    "date",
    "cache-control",
)
MAX_RETRY_AFTER_S = 3600.0
# Hop-by-hop or transport headers the client controls; a tenant setting them would only break things.
FORBIDDEN_REQUEST_HEADERS = {
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "proxy-authorization",
    "proxy-connection",
}


class HttpArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    url: str = Field(min_length=8, max_length=4096, description="http:// or https:// URL.")
    headers: dict[str, str] = Field(default_factory=dict, max_length=64, description="Request headers.")
    body: str | None = Field(default=None, max_length=1_000_000, description="Raw request body (text).")
    json_: Any = Field(default=None, alias="json", description="JSON request body (instead of 'body').")
    timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Seconds for the whole exchange (capped by the operator's maximum).",
    )
    follow_redirects: bool = Field(
        default=True, description="Follow up to 5 redirects (each hop is checked)."
    )

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("only http:// and https:// URLs are allowed")
        try:
            parsed = httpx.URL(v)
        except httpx.InvalidURL as exc:
            raise ValueError(f"invalid URL: {exc}") from None
        if not parsed.host:
            raise ValueError("the URL has no host")
        return v

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if _HEADER_UNSAFE.search(name) or _HEADER_UNSAFE.search(value) or not name.strip():
                raise ValueError(f"invalid header {name!r}")
            if name.lower() in FORBIDDEN_REQUEST_HEADERS:
                raise ValueError(f"header {name!r} is set by the client and may not be given")
        return v

    @model_validator(mode="after")
    def _one_body(self) -> HttpArgs:
        if self.body is not None and self.json_ is not None:
            raise ValueError("give either 'body' or 'json', not both")
        return self


class HttpRetryableError(RetryableError):
    """Connection error, timeout, 429 or 5xx. ``retry_after`` (seconds) is the server's wish, if any."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class HttpStatusError(Exception):
    """A 4xx answer other than 429: the request itself is wrong, retrying would not help."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), bounded; None if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    seconds: float | None
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (now if now is not None else time.time())
    return max(0.0, min(MAX_RETRY_AFTER_S, seconds))


def _read_bounded(response: httpx.Response, limit: int, deadline: float) -> tuple[bytes, bool]:
    """Read at most ``limit`` bytes, and give up at ``deadline`` (httpx's timeouts are per read, so a
    server dripping bytes could otherwise hold the worker far beyond the job's timeout)."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:limit], True
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout("the response body did not arrive within the timeout")
    return b"".join(chunks), False


@task_type(
    "http.request",
    args=HttpArgs,
    description="Call an HTTP(S) URL. Retried on connection errors, timeouts, 429 and 5xx (Retry-After is "
    "the minimum delay); the result holds the status, selected headers and the body (truncated). Private "
    "and loopback addresses are refused unless the operator allows them.",
    retry_on=(HttpRetryableError,),
    retry_backoff=2.0,
    retry_backoff_max=300.0,
)
def http_request(args: HttpArgs, ctx: JobContext) -> dict[str, Any]:
    settings = get_settings()
    timeout = min(args.timeout, settings.http_max_timeout_seconds)
    limit = settings.http_max_response_bytes
    headers = {"user-agent": "tenantq-http/1", **args.headers}
    started = time.monotonic()
    try:
        with guarded_client(timeout=timeout, follow_redirects=args.follow_redirects) as client:
            request = client.build_request(
                args.method,
                args.url,
                headers=headers,
                content=args.body.encode() if args.body is not None else None,
                json=args.json_ if args.json_ is not None else None,
            )
            response = client.send(request, stream=True)
            try:
                body, truncated = _read_bounded(response, limit, started + timeout)
            finally:
                response.close()
    except BlockedDestination:
        raise
    except httpx.TooManyRedirects as exc:
        raise HttpStatusError(f"too many redirects: {exc}") from None
    except (httpx.TransportError, OSError) as exc:
        raise HttpRetryableError(f"{type(exc).__name__}: {exc or 'connection failed'}") from None
    status = response.status_code
    if status == 429 or status >= 500:
        raise HttpRetryableError(
            f"HTTP {status} from {args.url}",
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )
    if 400 <= status < 500:
        snippet = body[:500].decode(response.encoding or "utf-8", errors="replace")
        raise HttpStatusError(f"HTTP {status} from {args.url}: {snippet}")
    return {
        "status_code": status,
        "url": str(response.url),
        "headers": {k: v for k, v in response.headers.items() if k.lower() in RESULT_HEADERS},
        "body": body.decode(response.encoding or "utf-8", errors="replace"),
        "truncated": truncated,
        "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
    }
