"""Outbound destinations (webhooks) limited to the public internet: no SSRF into the deployment.

A URL is refused when its scheme is not http(s), it carries userinfo, or its host is (or resolves
to) a loopback, link-local, private, unspecified, multicast or otherwise reserved address, in
any spelling (``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``[::1]``, ``[::ffff:127.0.0.1]``).
The check runs at submission and again at delivery, on the addresses the name resolves to then;
delivery connects to the address that was checked, so a name cannot be rebound in between.
Loopback can be allowed (``VOXAGENT_WEBHOOK_ALLOW_LOOPBACK``) for development and tests only.
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

REFUSED_PRIVATE = "refused: private address"


class DestinationRefused(ValueError):
    """The URL may not be fetched; ``str(exc)`` is safe to show to the tenant."""


@dataclass(frozen=True)
class Destination:
    scheme: str
    host: str  # as written (a name, or an address without brackets)
    port: int
    address: str  # the checked address to connect to


def _literal_address(host: str) -> IPAddress | None:
    """The address a host spells, in any form the resolver would accept, or None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:  # inet_aton accepts the legacy spellings: 2130706433, 0x7f000001, 0177.0.0.1, 127.1
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def is_public(addr: IPAddress, *, allow_loopback: bool = False) -> bool:
    if isinstance(addr, ipaddress.IPv6Address):
        mapped = addr.ipv4_mapped or addr.sixtofour
        if mapped is not None:
            return is_public(mapped, allow_loopback=allow_loopback)
    if addr.is_loopback:
        return allow_loopback
    return not (addr.is_private or addr.is_link_local or addr.is_unspecified or addr.is_multicast
                or addr.is_reserved or not addr.is_global)


def parse(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an acceptable URL shape; raises DestinationRefused otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise DestinationRefused("is not a valid URL") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise DestinationRefused("must use http or https")
    if "@" in parts.netloc or parts.username is not None or parts.password is not None:
        raise DestinationRefused("must not contain user information")
    host = parts.hostname
    if not host or any(c.isspace() for c in url):
        raise DestinationRefused("needs a host")
    return scheme, host, port or (443 if scheme == "https" else 80)


def check_url(url: str, *, allow_loopback: bool = False, resolve: bool = True) -> Destination:
    """The destination to connect to, or DestinationRefused (before any connection is made)."""
    scheme, host, port = parse(url)
    literal = _literal_address(host)
    if literal is not None:
        if not is_public(literal, allow_loopback=allow_loopback):
            raise DestinationRefused(REFUSED_PRIVATE)
        return Destination(scheme, host, port, str(literal))
    if not resolve:
        return Destination(scheme, host, port, "")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise DestinationRefused("refused: host does not resolve") from exc
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    if not addresses:
        raise DestinationRefused("refused: host does not resolve")
    # every address must be public: a name with one private address is refused as a whole
    if not all(is_public(a, allow_loopback=allow_loopback) for a in addresses):
        raise DestinationRefused(REFUSED_PRIVATE)
    return Destination(scheme, host, port, str(addresses[0]))
