"""The guard in front of every route (an ASGI middleware): ``Host``, request framing and body limits, ``Origin``,
and the headers every answer carries.

Order matters and is the old server's: a request naming a foreign ``Host`` is refused before anything else (a
DNS-rebinding page gets 400 and no data); a body is framed by exactly one valid ``Content-Length`` within the path's
limit and read whole before any route runs (411/400/413 otherwise, answered, never a dropped connection); only then is
a POST's ``Origin`` checked (403), so a refused POST never reaches a route. Reading the body first costs a little
memory per request (at most the path's limit) and buys one place where every limit holds, whatever the route does.

Every answer gets ``Connection: close``: one request per connection, so an idle keep-alive socket never holds one of
the server's connection slots (:mod:`dashboards.server`); a reverse proxy keeps its own client connections alive.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from dashboards.access import host_allowed, same_origin

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_FORM_BYTES = 64 * 1024
UPLOAD_PATHS = ("/search", "/api/search", "/watch")
# Paths whose POST carries its own secret and is sent by other sites on purpose: mail providers' one-click unsubscribe
# (RFC 8058) posts to the link in an alert from their servers. The token, not the Origin, authorises it.
OWN_SECRET_PATHS = ("/unsubscribe",)
SAFE_METHODS = ("GET", "HEAD")
# A cross-site page cannot send these without a CORS preflight, which this server never grants: a POST carrying one
# and neither Origin nor Referer comes from a script, not from a browser tricked by another site.
SCRIPT_HEADERS = (b"x-homeward-token", b"x-requested-with")
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,18}")


def security_headers(tile_url: str = "") -> dict[str, str]:
    """The headers every answer carries unless a route set its own: no framing, no MIME sniffing, no caching, and a
    CSP allowing only this origin (plus the tile server's, for map tiles, when ``dashboard.tile_url`` is set)."""
    tiles = f" {tile_origin(tile_url)}" if tile_url else ""
    return {
        "Referrer-Policy": "same-origin",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Content-Security-Policy": f"default-src 'self'; img-src 'self' data:{tiles}; style-src 'self' "
        "'unsafe-inline'; script-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        "Cache-Control": "no-store",
    }


def tile_origin(tile_url: str) -> str:
    """``https://{s}.tile.example.org/{z}/{x}/{y}.png`` → ``https://*.tile.example.org`` (a CSP source); a URL that
    is not http(s) with ``{z}``, ``{x}`` and ``{y}`` is a ``ValueError``."""
    parts = urllib.parse.urlsplit(tile_url)
    host = parts.netloc.replace("{s}", "*")
    if parts.scheme not in ("http", "https") or not re.fullmatch(r"(\*\.)?[A-Za-z0-9.-]+(:[0-9]{1,5})?", host):
        raise ValueError(f"dashboard.tile_url must be an http(s) URL template, got {tile_url!r}")
    if not all(f"{{{k}}}" in tile_url for k in "zxy"):
        raise ValueError(f"dashboard.tile_url needs {{z}}, {{x}} and {{y}}, got {tile_url!r}")
    return f"{parts.scheme}://{host}"


def wants_json(path: str, headers: Iterable[tuple[bytes, bytes]]) -> bool:
    got = dict(headers)
    return (
        path.startswith("/api/")
        or b"application/json" in got.get(b"accept", b"")
        or got.get(b"x-requested-with") == b"fetch"
    )


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Guard:
    """Wraps the dashboard's ASGI app; see the module docstring for what it checks and in which order."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        bound_host: str,
        allowed_hosts: list[str],
        max_upload: int,
        headers: dict[str, str],
    ) -> None:
        self.app = app
        self.bound_host = bound_host
        self.allowed_hosts = allowed_hosts
        self.max_upload = max_upload
        # Sent as spelled here (h11 writes names as given); compared lowercased.
        self.headers = [(k.encode(), v.encode()) for k, v in {**headers, "Connection": "close"}.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = self._with_headers(send)
        try:
            host = self._check_host(scope)
            if scope["method"] not in SAFE_METHODS:
                body = await self._read_body(scope, receive)
                if body is None:  # the client left mid-body
                    return
                if scope["path"] not in OWN_SECRET_PATHS:
                    self._check_origin(scope, host)
                receive = _replay(body, receive)
        except Refused as exc:
            await self._refuse(scope, send, exc)
            return
        await self.app(scope, receive, send)

    def _with_headers(self, send: Send) -> Send:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = (h for h in self.headers if h[0].lower() not in have)
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        return sending

    def _check_host(self, scope: Scope) -> str:
        hosts = [v for k, v in scope["headers"] if k == b"host"]
        if len(hosts) > 1:
            raise Refused(400, "one Host header, please")
        host = hosts[0].decode("latin-1") if hosts else ""
        if not host_allowed(host, self.bound_host, self.allowed_hosts):
            raise Refused(400, "unknown Host: this dashboard answers only its own names (dashboard.allowed_hosts)")
        return host

    def _limit(self, path: str) -> int:
        return self.max_upload + MAX_FORM_BYTES if path.rstrip("/") in UPLOAD_PATHS else MAX_FORM_BYTES

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The body, framed by exactly one valid ``Content-Length``; :class:`Refused` before anything beyond the
        limit is read. (The HTTP parser already refuses a malformed length; this holds whatever parser runs.)"""
        headers = scope["headers"]
        if any(k == b"transfer-encoding" for k, _ in headers):
            raise Refused(411, "send the body with a Content-Length (Transfer-Encoding is not supported)")
        values = {v.strip() for k, v in headers if k == b"content-length"}
        if not values:
            raise Refused(411, "a request body needs a Content-Length header")
        length = values.pop()
        if values or not _CONTENT_LENGTH.fullmatch(length):
            raise Refused(400, "Content-Length must be one non-negative integer")
        limit = self._limit(scope["path"])
        if int(length) > limit:
            raise Refused(413, f"request body too large: at most {limit:,} bytes here")
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _check_origin(self, scope: Scope, host: str) -> None:
        """A state-changing request must come from one of the dashboard's own pages (``Origin``, else ``Referer``),
        or, with neither, from a script that says so with a header a cross-site page cannot send."""
        headers = dict(scope["headers"])
        source = (headers.get(b"origin") or headers.get(b"referer") or b"").decode("latin-1")
        if not source and any(h in headers for h in SCRIPT_HEADERS):
            return
        if not source or not same_origin(source, host, self.allowed_hosts):
            raise Refused(403, "cross-origin request refused: post from the dashboard's own pages")

    async def _refuse(self, scope: Scope, send: Send, exc: Refused) -> None:
        if wants_json(scope["path"], scope["headers"]):
            body, ctype = json.dumps({"ok": False, "error": exc.message}).encode(), b"application/json"
        else:
            body, ctype = exc.message.encode() + b"\n", b"text/plain; charset=utf-8"
        headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body", "body": body if scope["method"] != "HEAD" else b""})


def _replay(body: bytes, then: Receive) -> Receive:
    """A ``receive`` that hands the already-read body to the app once, then passes on what the server says next
    (a disconnect)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return await then()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive
