"""The dashboard's HTTP server: uvicorn (h11) with two bounds of its own, set on its protocol class.

* ``idle_timeout_s`` (default 30 s): a connection on which the client owes bytes (a request not yet started, headers
  or a body not finished) and sends nothing for that long is closed, without an answer. uvicorn alone has no header
  or body timeout, only a keep-alive one. While the app is still answering, the connection is left alone. A client
  dripping a byte just under the timeout can still hold its connection, which is what the next bound is for.
* ``max_connections`` (default 32): connections served at once. One more is answered ``503`` with ``Retry-After``
  as soon as it connects and closed, instead of waiting (uvicorn's ``limit_concurrency`` answers only once a request
  has arrived, so idle sockets beyond the limit would still pile up). The cost: a burst beyond the cap is refused
  rather than delayed. Requests read the database one at a time anyway, so a larger cap buys little.

Every answer closes its connection (:mod:`dashboards.guard`), so a slot is held for one request only. Malformed
requests that the HTTP parser itself refuses get its 400 with the same security headers as every other answer.
Behind a reverse proxy in a hostile network, let the proxy enforce per-client limits too.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from engine.errors import HomewardError

_BUSY_TEXT = b"the dashboard is busy: try again in a few seconds\n"


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with an idle timeout, a connection cap and security headers on parser errors. The
    per-server values are class attributes of a subclass made by :class:`DashboardServer`."""

    idle_timeout_s: float = 30.0
    max_connections: int = 32
    extra_headers: list[tuple[bytes, bytes]] = []  # noqa: RUF012 - replaced per server, never mutated

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._idle: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(self._busy())
            transport.close()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        self._arm()
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = self.loop.call_later(self.idle_timeout_s, self._on_idle)

    def _on_idle(self) -> None:
        if self.transport.is_closing():
            return
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY):  # waiting on the client
            self.transport.close()
        else:  # the app is still answering
            self._arm()

    def _busy(self) -> bytes:
        head = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: 5\r\n"
        head += b"".join(b"%s: %s\r\n" % (k, v) for k, v in self.extra_headers)
        return head + b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_TEXT), _BUSY_TEXT)

    def send_400_response(self, msg: str) -> None:
        headers = [(b"content-type", b"text/plain; charset=utf-8"), *self.extra_headers]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=msg.encode("ascii")),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The caller owns the signals (:func:`stopped_by_signals`): uvicorn's own handlers re-raise the signal once
        # the server has stopped, which would turn a clean Ctrl-C into a KeyboardInterrupt.
        yield


class DashboardServer:
    """An ASGI app on a bound socket (bound at construction, so ``port=0`` is known at once, see :attr:`url`):
    :meth:`serve_forever` runs it (in any thread), :meth:`shutdown` stops it from another."""

    def __init__(
        self,
        asgi: Any,
        host: str,
        port: int,
        *,
        app: Any = None,
        headers: dict[str, str],
        forwarded_allow_ips: list[str],
        idle_timeout_s: float = 30.0,
        max_connections: int = 32,
    ) -> None:
        if idle_timeout_s <= 0 or max_connections < 1:
            raise HomewardError(
                f"idle_timeout_s must be > 0 and max_connections >= 1, got {idle_timeout_s} and {max_connections}"
            )
        self.app = app  # what serves the requests (the dashboard), for callers
        bare = host.strip("[]")
        family = socket.AF_INET6 if ":" in bare else socket.AF_INET
        try:
            self.socket = socket.create_server((bare, port), family=family)
        except OSError as exc:
            raise HomewardError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        self.server_address: tuple[str, int] = self.socket.getsockname()[:2]  # uvicorn closes the socket at the end
        protocol = type(
            "Protocol",
            (GuardedH11Protocol,),
            {
                "idle_timeout_s": idle_timeout_s,
                "max_connections": max_connections,
                "extra_headers": [(k.encode(), v.encode()) for k, v in headers.items()],
            },
        )
        config = uvicorn.Config(
            asgi,
            http=protocol,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=bool(forwarded_allow_ips),
            forwarded_allow_ips=list(forwarded_allow_ips) or None,
            timeout_graceful_shutdown=5,
        )
        self._server = _Server(config)
        self._done = threading.Event()
        self._running = False

    @property
    def url(self) -> str:
        host, port = self.server_address
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}"

    def serve_forever(self) -> None:
        self._running = True
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self._done.set()

    def stop(self) -> None:
        """Ask the serving loop to end (safe from a signal handler: sets a flag the loop polls)."""
        self._server.should_exit = True

    def shutdown(self) -> None:
        """Stop serving and wait until the serving loop has ended (answers in progress finish first, up to 5 s)."""
        self.stop()
        if self._running:
            self._done.wait()

    def server_close(self) -> None:
        self.socket.close()


@contextlib.contextmanager
def stopped_by_signals(stop: Callable[[], None]) -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM (service managers) call ``stop``. Installed explicitly rather than relying on
    KeyboardInterrupt reaching the loop: a SIGINT inherited as ignored (nohup, some supervisors) would never stop it.
    Only the main thread may install handlers; elsewhere the defaults stay."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda signum, frame: stop()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
