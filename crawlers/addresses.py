"""Which network addresses a crawl may reach: the pure logic behind :class:`crawlers.middlewares.AddressGuard`, and
the :class:`BlockedAddress` a refused request fails with (here, below the guard and the spiders that both use it).

A crawl fetches URLs that strangers wrote (card links, redirects, photo URLs), so without a guard a hostile page
makes the crawler request ``http://127.0.0.1:8265/`` (the Ray dashboard), ``http://169.254.169.254/`` (cloud
metadata) or an intranet admin page and store the answer as a listing (server-side request forgery). The guard
refuses every address that is not on the public internet:

* loopback, private (RFC 1918, ``fc00::/7``), link-local, multicast, reserved, unspecified and every other
  non-global range (carrier-grade NAT ``100.64.0.0/10``, documentation, benchmarking …), judged by the stdlib
  :mod:`ipaddress`;
* IPv4 hidden inside IPv6 is judged as the IPv4 it reaches: IPv4-mapped ``::ffff:127.0.0.1``, IPv4-compatible
  ``::127.0.0.1``, NAT64 ``64:ff9b::7f00:1``, 6to4 ``2002:7f00:1::`` and Teredo;
* IPv4 spelled the way the C resolver (``inet_aton``) also reads it: ``2130706433``, ``0x7f.1``, ``0177.0.0.1``,
  ``127.1`` — so a literal never slips past as "a name that does not resolve";
* ``localhost`` and every ``*.localhost`` name (RFC 6761), before any DNS lookup.

What the operator named is exempt: :class:`Allowance` holds ``host`` or ``host:port`` entries (a source's own
``base_url``, operator start URLs, ``crawl.allow_hosts``); a request to one of them is not checked, so a mirror,
the demo and the tests can serve on 127.0.0.1. The exemption is per host (and port when given), never per
address: a hostile page that links to ``127.0.0.1:8265`` while the mirror is ``127.0.0.1:8000`` is still refused.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from scrapy.exceptions import IgnoreRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: The reason a refused request is recorded under (``errors_by_reason``, ``photos.error``).
BLOCKED_REASON = "blocked_address"


class BlockedAddress(IgnoreRequest):
    """A request to an address the crawl must not reach (reason ``blocked_address``)."""


DEFAULT_PORTS = {"http": 80, "https": 443}

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
#: What ``inet_aton`` accepts: 1 to 4 dot-separated parts, each decimal, octal (leading 0) or hex (0x).
_INET_ATON = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}$", re.IGNORECASE)


def normalize_host(host: str) -> str:
    """Lower case, no brackets, no trailing dot; an IP literal in any spelling becomes its canonical form."""
    host = host.strip().strip("[]").rstrip(".").lower()
    ip = parse_ip(host)
    return str(ip) if ip is not None else host


def parse_ip(host: str) -> IPAddress | None:
    """The address ``host`` denotes literally (any spelling ``inet_aton`` accepts, IPv6 with an optional zone),
    or ``None`` for a name."""
    host = host.strip().strip("[]").rstrip(".")
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if _INET_ATON.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def is_localhost_name(host: str) -> bool:
    host = host.strip().rstrip(".").lower()
    return host == "localhost" or host.endswith(".localhost") or host == "localhost.localdomain"


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client's own (obfuscated) address; the server part is a public relay
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def blocked_because(ip: IPAddress) -> str | None:
    """Why the crawler must not connect to ``ip`` (``"loopback"``, ``"private"`` …), or ``None`` when it is a
    public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            why = blocked_because(inner)
            if why is not None or ip.ipv4_mapped is not None or ip in _IPV4_COMPATIBLE:
                return why  # mapped/compatible addresses *are* the IPv4 they carry
    for kind in ("unspecified", "loopback", "link_local", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    if not ip.is_global:
        return "not globally routable"
    return None


def host_port(url: str) -> tuple[str, int]:
    """The normalised host and the port a request to ``url`` connects to; ``ValueError`` when there is none."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise ValueError(f"no host in {url[:200]!r}")
    port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    if port is None:
        raise ValueError(f"no port for scheme {parts.scheme!r}")
    return normalize_host(host), port


def literal_verdict(host: str) -> tuple[bool, str | None]:
    """For a normalised host: ``(decided, why_blocked)``. Decided when ``host`` is an IP literal or a localhost
    name (no DNS needed); a name that must be resolved first gives ``(False, None)``."""
    if is_localhost_name(host):
        return True, "localhost name"
    ip = parse_ip(host)
    if ip is None:
        return False, None
    return True, blocked_because(ip)


@dataclass(frozen=True)
class Allowance:
    """Hosts (any port) and ``(host, port)`` pairs that are exempt from the address check."""

    hosts: frozenset[str] = frozenset()
    host_ports: frozenset[tuple[str, int]] = frozenset()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allowance:
        """From ``host``, ``host:port``, ``[v6]:port`` or URL entries (a URL allows its host and effective port).
        ``ValueError`` names an entry that is none of these."""
        hosts: set[str] = set()
        pairs: set[tuple[str, int]] = set()
        for raw in entries:
            entry = str(raw).strip()
            if not entry:
                continue
            try:
                if "://" in entry:
                    pairs.add(host_port(entry))
                    continue
                parts = urlsplit(f"//{entry}")
                if not parts.hostname or parts.path or parts.query or parts.username:
                    raise ValueError("not a host or host:port")
                host = normalize_host(parts.hostname)
                if parts.port is None:
                    hosts.add(host)
                else:
                    pairs.add((host, parts.port))
            except ValueError as exc:
                raise ValueError(f"allowed host {entry!r}: {exc}") from None
        return cls(frozenset(hosts), frozenset(pairs))

    def __or__(self, other: Allowance) -> Allowance:
        return Allowance(self.hosts | other.hosts, self.host_ports | other.host_ports)

    def allows(self, host: str, port: int) -> bool:
        return host in self.hosts or (host, port) in self.host_ports
