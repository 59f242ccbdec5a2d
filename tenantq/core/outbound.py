"""Outgoing HTTP under the operator's network policy (http.request task type, completion webhooks).

Tenants choose the URLs, so without a policy they could make the platform call its own network
(cloud metadata at 169.254.169.254, Redis on localhost, internal admin services). The policy:

- only ``http`` and ``https`` URLs;
- every address the host name resolves to must be allowed, otherwise the request is refused;
- allowed means: not in ``TENANTQ_HTTP_DENY_CIDRS``; and either in ``TENANTQ_HTTP_ALLOW_CIDRS``, or
  globally routable (``ipaddress.is_global``: private, loopback, link-local, CGNAT, multicast and
  reserved ranges are not), or ``TENANTQ_HTTP_ALLOW_PRIVATE=1``;
- an IPv6 address that carries an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible
  ``::a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``, Teredo) is judged as the IPv4 it
  reaches, so ``[::127.0.0.1]`` is refused like ``127.0.0.1``; the local-use NAT64 prefix
  ``64:ff9b:1::/48`` is refused outright.

The check runs where the socket is opened (a custom httpcore network backend), and the connection goes
to the very address that was checked. So redirects (each hop opens its own connection) and DNS answers
that change between a check and the connect (DNS rebinding) cannot bypass it. Environment proxies are
ignored for the same reason.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from tenantq.core.settings import Settings, get_settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address reaches through a translation or tunnelling mechanism."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # (server, client): packets go to the client
    if ip in NAT64_WELL_KNOWN or (ip in IPV4_COMPATIBLE and int(ip) > 1):  # :: and ::1 are IPv6's own
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


class BlockedDestination(Exception):
    """The URL points at an address the operator's policy refuses. Never worth retrying.

    Deliberately not an httpx/httpcore error: httpx passes it through untouched, so callers that
    retry on connection errors do not mistake a refusal for a flaky network.
    """


@dataclass(frozen=True)
class NetworkPolicy:
    allow_private: bool = False
    allow: tuple[IPNetwork, ...] = field(default_factory=tuple)
    deny: tuple[IPNetwork, ...] = field(default_factory=tuple)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> NetworkPolicy:
        settings = settings or get_settings()
        return cls(
            allow_private=settings.http_allow_private,
            allow=tuple(ipaddress.ip_network(c, strict=False) for c in settings.http_allow_cidrs),
            deny=tuple(ipaddress.ip_network(c, strict=False) for c in settings.http_deny_cidrs),
        )

    def why_blocked(self, ip: IPAddress) -> str | None:
        """None if ``ip`` may be contacted, else a short reason."""
        if any(ip in net for net in self.deny):
            return "denied by the operator's deny list"
        if any(ip in net for net in self.allow):
            return None
        # An IPv6 address carrying an IPv4 one (::ffff:127.0.0.1, ::127.0.0.1, 64:ff9b::7f00:1,
        # 2002:7f00:1::) reaches that IPv4 host: judge that one, lists included.
        embedded = embedded_ipv4(ip)
        if embedded is not None:
            reason = self.why_blocked(embedded)
            if reason:
                return f"{reason} (embedded in {ip})"
            if isinstance(ip, ipaddress.IPv6Address) and ip.teredo is None:
                return None
            # Teredo: its relays are the IPv6 side's own business, which is judged below as before.
        if isinstance(ip, ipaddress.IPv6Address) and ip in NAT64_LOCAL_USE and not self.allow_private:
            return "local-use NAT64 address (reaches the operator's own IPv4 network)"
        if ip.is_global or self.allow_private:
            return None
        if ip.is_loopback:
            return "loopback address"
        if ip.is_unspecified:
            return "unspecified address (reaches this host)"
        if ip.is_link_local:
            return "link-local address"
        if ip.is_private:
            return "private address"
        return "reserved or non-routable address"

    def check_ips(self, host: str, ips: Iterable[IPAddress]) -> None:
        for ip in ips:
            reason = self.why_blocked(ip)
            if reason:
                raise BlockedDestination(
                    f"Refusing to connect to {host} ({ip}): {reason}. The operator's network policy only "
                    "allows public addresses."
                )


def resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
    seen: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in seen:
            seen.append(ip)
    return seen


def check_url(url: str, policy: NetworkPolicy | None = None, *, resolve_host: bool = True) -> None:
    """Validate scheme and host of ``url``; with ``resolve_host`` also every address it resolves to.

    Used when a tenant registers a URL (early, clear 422); the connect-time check still applies later.
    Raises ValueError (bad URL) or BlockedDestination.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError("Only http:// and https:// URLs are allowed.")
    if not parts.hostname:
        raise ValueError("The URL has no host.")
    if parts.username or parts.password:
        raise ValueError("Credentials in the URL are not allowed; send them in a header.")
    policy = policy or NetworkPolicy.from_settings()
    try:
        literal = ipaddress.ip_address(parts.hostname)
    except ValueError:
        literal = None
    if literal is not None:
        policy.check_ips(parts.hostname, [literal])
    elif resolve_host:
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise ValueError(f"Invalid port: {exc}") from None
        try:
            ips = resolve(parts.hostname, port)
        except httpcore.ConnectError as exc:
            raise ValueError(str(exc)) from None
        policy.check_ips(parts.hostname, ips)


class GuardedBackend(httpcore.SyncBackend):
    """Resolves the host itself, checks every address, then connects to a checked address."""

    def __init__(self, policy: NetworkPolicy) -> None:
        self.policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        ips = resolve(host, port)
        self.policy.check_ips(host, ips)
        last: Exception | None = None
        for ip in ips:
            try:
                return super().connect_tcp(
                    str(ip), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except httpcore.ConnectError as exc:  # try the next address, like getaddrinfo clients do
                last = exc
        raise last or httpcore.ConnectError(f"cannot connect to {host}:{port}")

    def connect_unix_socket(  # pragma: no cover - never configured
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise BlockedDestination("Unix sockets are not allowed.")


class GuardedTransport(httpx.HTTPTransport):
    def __init__(self, policy: NetworkPolicy | None = None) -> None:
        super().__init__(trust_env=False)
        # httpx has no public hook for the network backend; swap the pool it built for one that uses
        # ours (same defaults as httpx's: verified TLS, HTTP/1.1).
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=10,
            max_keepalive_connections=5,
            keepalive_expiry=5.0,
            network_backend=GuardedBackend(policy or NetworkPolicy.from_settings()),
        )


def guarded_client(
    *,
    timeout: float,
    follow_redirects: bool = False,
    max_redirects: int = 5,
    policy: NetworkPolicy | None = None,
) -> httpx.Client:
    """An httpx client whose every connection (including redirect hops) passes the network policy."""
    return httpx.Client(
        transport=GuardedTransport(policy),
        timeout=timeout,
        follow_redirects=follow_redirects,
        max_redirects=max_redirects,
        trust_env=False,
    )
