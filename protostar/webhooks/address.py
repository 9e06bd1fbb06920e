"""Where a webhook may go: http or https to a host whose every address is public (no SSRF into the cluster).

A URL is checked when it is registered (``422``) and again at every delivery, against the addresses its host
resolves to then; the delivery connects to the address that was checked (``Target.ip``), never resolving the
name a second time, so a DNS answer that changes between the check and the connection (DNS rebinding) cannot
point it inside. Refused: loopback, link-local, private (RFC 1918, ULA), shared (CGNAT), multicast, unspecified,
reserved and every other non-global address, IPv4-mapped IPv6 addresses included, unless
``PROTOSTAR_WEBHOOKS_ALLOW_PRIVATE`` is set.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from protostar.errors import ValidationFailed

MAX_URL_LENGTH = 2000
SCHEMES = {"http": 80, "https": 443}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefused(ValidationFailed):
    """The URL may not be called; the message says why in the caller's words (no resolver text)."""


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str  # as in the URL (the TLS server name and the Host header)
    port: int
    ip: str  # the checked address the delivery connects to


def parse(url: str) -> SplitResult:
    """The URL's parts if it is one a webhook may have; raises ``AddressRefused``."""
    if len(url) > MAX_URL_LENGTH:
        raise AddressRefused(f"url is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError as exc:
        raise AddressRefused("url is not a valid URL") from exc
    if parts.scheme not in SCHEMES:
        raise AddressRefused("url must be http or https")
    if not parts.hostname:
        raise AddressRefused("url has no host")
    if parts.username is not None or parts.password is not None:
        raise AddressRefused("url may not carry credentials; authenticate the request by its signature")
    return parts


def blocked(ip: IPAddress) -> bool:
    """Whether ``ip`` is inside some network rather than on the public internet."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_loopback
        or ip.is_link_local
        or ip.is_private
        or ip.is_multicast
        or ip.is_unspecified
        or ip.is_reserved
        or not ip.is_global
    )


def resolve(host: str, port: int) -> list[IPAddress]:
    """The addresses ``host`` resolves to (an IP literal: itself); raises ``AddressRefused``."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise AddressRefused("url's host does not resolve") from exc
    found: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if ip not in found:
            found.append(ip)
    if not found:
        raise AddressRefused("url's host does not resolve")
    return found


def check(url: str, *, allow_private: bool) -> Target:
    """The address to call for ``url``: resolved now, every address checked; raises ``AddressRefused``."""
    parts = parse(url)
    host = parts.hostname or ""
    port = parts.port or SCHEMES[parts.scheme]
    addresses = resolve(host, port)
    if not allow_private and any(blocked(ip) for ip in addresses):
        raise AddressRefused(
            "url's host resolves to a loopback, link-local, private or reserved address, which webhooks may not "
            "call (an operator may allow it with PROTOSTAR_WEBHOOKS_ALLOW_PRIVATE)"
        )
    return Target(url=url, scheme=parts.scheme, host=host, port=port, ip=str(addresses[0]))
