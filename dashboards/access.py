"""Who may use the dashboard: per-shelter tokens, and the Host and Origin checks.

**Tokens.** A shelter's token is derived, not stored: ``HMAC-SHA256(settings.salt, "homeward-dashboard:" +
shelter_key)``, first 24 hex characters. ``shelter_key`` is the key of the SQL macro ``shelter_key`` in
``views.sql``: ``source:shelter_id`` (``petango:SEAS``) — a shelter id is text from a crawled page, so it only names a
shelter within the source that listed it — or the bare ``source`` for found posts without a shelter id. So:

* ``homeward report`` prints each report's token in its JSON (``reports[].token``); the operator hands it to the
  shelter with its report; the shelter opens ``/shelter/<shelter_key>?token=<token>``;
* changing ``salt`` revokes every token at once (and changes the contact hashes: choose it once, keep it secret);
* the dashboard refuses to bind a non-loopback address while ``salt`` is the public default, since anyone could then
  derive every token.

An operator token (``homeward dashboard --token T``) opens every shelter view and the shelter index.

**Host.** A DNS-rebinding page (``evil.example`` re-pointed at 127.0.0.1) is same-origin with the dashboard in the
browser's eyes, but its requests carry ``Host: evil.example``; :func:`host_allowed` accepts only the names this
dashboard is reached by. **Origin.** A state-changing request must come from a page of the dashboard itself
(:func:`same_origin`), checked on the ``Origin`` header, else the ``Referer``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import urllib.parse
from collections.abc import Iterable

from engine.config import Settings

DEFAULT_SALT = Settings().salt
_HOST_HEADER = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:[0-9]{1,5})?")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def shelter_token(settings: Settings, shelter_key: str) -> str:
    msg = f"homeward-dashboard:{shelter_key}".encode()
    return hmac.new(settings.salt.encode(), msg, hashlib.sha256).hexdigest()[:24]


def check_token(settings: Settings, shelter_key: str, given: str | None, operator_token: str | None = None) -> bool:
    """Whether ``given`` opens ``shelter_key``'s views (its own token, or the operator token)."""
    if not given:
        return False
    if operator_token and hmac.compare_digest(given.encode(), operator_token.encode()):
        return True
    return hmac.compare_digest(given.encode(), shelter_token(settings, shelter_key).encode())


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    ip = _ip(host)
    return ip is not None and ip.is_loopback


def split_host(value: str) -> tuple[str, int | None] | None:
    """``"Example.org:8501"`` → ``("example.org", 8501)``, ``"[::1]"`` → ``("::1", None)``; None when malformed."""
    m = _HOST_HEADER.fullmatch(value.strip())
    if not m:
        return None
    name = m.group(1).strip("[]").lower().rstrip(".")
    port = int(m.group(2)[1:]) if m.group(2) else None
    return (name, port) if name and (port is None or port < 65536) else None


def host_allowed(host_header: str | None, bound: str, allowed_hosts: Iterable[str] = ()) -> bool:
    """Whether a request's ``Host`` names this dashboard: the bound address; any loopback name or address when bound
    to loopback; any IP address (and localhost) when bound to every interface (``0.0.0.0``/``::``: a browser that
    typed an address talks to that address, and rebinding needs a name); else only ``dashboard.allowed_hosts``.
    The port is not compared (a reverse proxy may forward its own)."""
    got = split_host(host_header or "")
    if got is None:
        return False
    name = got[0]
    names = {bound.strip("[]").lower()}
    names.update(parsed[0] for parsed in map(split_host, allowed_hosts) if parsed)
    if name in names:
        return True
    bound_ip = _ip(bound)
    if is_loopback(bound):
        return is_loopback(name)
    if bound in ("", "*") or (bound_ip is not None and bound_ip.is_unspecified):
        return is_loopback(name) or _ip(name) is not None
    return False


def same_origin(url: str, host_header: str, allowed_hosts: Iterable[str] = ()) -> bool:
    """Whether ``url`` (an ``Origin`` or ``Referer`` value) is the dashboard's own origin: an http(s) URL on the host
    and port of the request's ``Host``, or on a name of ``dashboard.allowed_hosts`` (behind a proxy that rewrites
    ``Host``; an entry with a port must match it too). ``Origin: null`` (sandboxed frames, ``data:`` pages) never is.
    The scheme is not compared: behind a TLS proxy the dashboard cannot know it, and one host and port is one server.
    A missing port is the scheme's default on both sides."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return False
    scheme, name = parts.scheme.lower(), (parts.hostname or "").rstrip(".")
    if scheme not in _DEFAULT_PORTS or not name:
        return False
    port = port or _DEFAULT_PORTS[scheme]
    host = split_host(host_header)
    if host is not None and (host[0], host[1] or _DEFAULT_PORTS[scheme]) == (name, port):
        return True
    entries = (e for e in map(split_host, allowed_hosts) if e)
    return any(entry_name == name and entry_port in (None, port) for entry_name, entry_port in entries)
