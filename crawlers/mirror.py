"""A local HTTP mirror: serves a folder of saved or generated pages on 127.0.0.1 for demos and benchmarks.

Crawls in Homeward's own demo, tests and benchmarks never touch the live web; they crawl a real HTTP server on the
loopback interface instead, so Scrapy's full download path (robots.txt, throttling, retries) is exercised.
"""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class Mirror:
    """Serve ``root`` on ``http://127.0.0.1:<port>/`` from a daemon thread; use as a context manager."""

    def __init__(self, root: str | Path, port: int = 0) -> None:
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="homeward-mirror", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Mirror:
        self.thread.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
