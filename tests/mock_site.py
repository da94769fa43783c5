"""A real HTTP server on 127.0.0.1 (random port) that serves a site's URL layout and misbehaves on purpose.

Crawler tests run real Scrapy crawls against it: pages come from a directory tree (``root``) and/or in-memory
pages (``site.page(path, body)``), and any path can be told to misbehave (``site.misbehave(path, how)``):

=================  ===================================================================================
``slow``           answers after ``delay`` seconds (default 0.5)
``404`` / ``500``  that status with a small HTML body (any ``http_<code>`` works too)
``timeout``        accepts the request and says nothing for ``delay`` seconds (default 30), then closes
``redirect_loop``  302 to ``path?loop=1`` which 302s back, for ever
``truncated``      a page cut in the middle (correct Content-Length; the HTML/JSON-LD is just incomplete)
``data_loss``      Content-Length promises more bytes than are sent, then the connection closes
``garbage``        200 with random bytes declared as text/html
``html_image``     an "image" (``image/jpeg``) whose body is an HTML error page
``huge_image``     a JPEG header followed by ``size`` bytes (default 50 MB), streamed; ``chunked=True`` omits
                   Content-Length so the client only learns the size while downloading
``corrupt_image``  a real JPEG with its scan data cut and overwritten
=================  ===================================================================================

``robots`` sets /robots.txt (default: allow everything). Every request is logged (``site.requests``: method,
path, headers), so tests can prove a path was never requested or a card was not fetched twice. Pages carry
``Last-Modified`` and honour ``If-Modified-Since`` (304), like a well-behaved web server.
"""

from __future__ import annotations

import io
import mimetypes
import os
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Page:
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    modified: float = field(default_factory=time.time)


@dataclass
class Logged:
    method: str
    path: str
    headers: dict[str, str]
    at: float


def jpeg_bytes(size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (180, 120, 60), **save: Any) -> bytes:
    """A small real JPEG (Pillow), optionally with ``exif=`` bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def corrupt_jpeg() -> bytes:
    data = bytearray(jpeg_bytes((320, 240), (10, 200, 30)))
    cut = len(data) // 2
    return bytes(data[:cut]) + b"\x00\xff\x00" * 20  # headers intact, scan data destroyed, no EOI


class MockSite:
    """Threaded HTTP server; use as a context manager (``with MockSite(root) as site: site.url``)."""

    def __init__(
        self,
        root: str | Path | None = None,
        pages: dict[str, Any] | None = None,
        robots: str | None = "User-agent: *\nAllow: /\n",
    ) -> None:
        self.root = Path(root) if root else None
        self.pages: dict[str, Page] = {}
        self.rules: dict[str, dict[str, Any]] = {}
        self.requests: list[Logged] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        if robots is not None:
            self.page("/robots.txt", robots, content_type="text/plain")
        for path, body in (pages or {}).items():
            self.page(path, body)
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                site._handle(self)

            def do_HEAD(self) -> None:
                site._handle(self, head=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="mock-site", daemon=True)

    # -- configuration -------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def page(self, path: str, body: str | bytes, content_type: str | None = None, **kw: Any) -> None:
        """Serve ``body`` at ``path`` (replacing what was there; Last-Modified becomes now)."""
        data = body.encode() if isinstance(body, str) else body
        ctype = content_type or mimetypes.guess_type(path.split("?")[0])[0] or "text/html; charset=utf-8"
        if ctype.startswith("text/") and "charset" not in ctype:
            ctype += "; charset=utf-8"
        with self._lock:
            old = self.pages.get(path)
            modified = max(time.time(), (old.modified + 1) if old else 0)
            self.pages[path] = Page(data, ctype, modified=modified, **kw)

    def misbehave(self, path: str, how: str, **options: Any) -> None:
        with self._lock:
            self.rules[path] = {"how": how, **options}

    def behave(self, path: str) -> None:
        with self._lock:
            self.rules.pop(path, None)

    def hits(self, path: str | None = None, prefix: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (path is None or r.path == path) and (prefix is None or r.path.startswith(prefix))
            )

    def paths(self) -> list[str]:
        with self._lock:
            return [r.path for r in self.requests]

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def __enter__(self) -> MockSite:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    # -- serving -------------------------------------------------------------------------------------------------

    def _lookup(self, path: str) -> Page | None:
        with self._lock:
            page = self.pages.get(path) or self.pages.get(urlsplit(path).path)
        if page is not None:
            return page
        if self.root is None:
            return None
        rel = urlsplit(path).path.lstrip("/")
        target = (self.root / rel).resolve()
        if not str(target).startswith(str(self.root.resolve())):
            return None
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            return None
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if ctype.startswith("text/"):
            ctype += "; charset=utf-8"
        return Page(target.read_bytes(), ctype, modified=target.stat().st_mtime)

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str, head: bool = False,
              headers: dict[str, str] | None = None, length: int | None = None) -> None:  # fmt: skip
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _handle(self, h: BaseHTTPRequestHandler, head: bool = False) -> None:
        path = h.path
        with self._lock:
            self.requests.append(Logged(h.command, path, {k: v for k, v in h.headers.items()}, time.time()))
            rule = self.rules.get(path) or self.rules.get(urlsplit(path).path)
        try:
            if rule is not None and self._misbehave(h, path, rule, head):
                return
            page = self._lookup(path)
            if page is None:
                self._send(h, 404, b"<html><body>not found</body></html>", "text/html", head)
                return
            since = h.headers.get("If-Modified-Since")
            if since and page.status == 200:
                try:
                    if int(page.modified) <= parsedate_to_datetime(since).timestamp():
                        h.send_response(304)
                        h.send_header("Content-Length", "0")
                        h.end_headers()
                        return
                except (TypeError, ValueError):
                    pass
            headers = {"Last-Modified": formatdate(page.modified, usegmt=True), **page.headers}
            self._send(h, page.status, page.body, page.content_type, head, headers)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _misbehave(self, h: BaseHTTPRequestHandler, path: str, rule: dict[str, Any], head: bool) -> bool:
        how = rule["how"]
        if how == "slow":
            self._stop.wait(float(rule.get("delay", 0.5)))
            return False  # then serve normally
        if how.isdigit() or how.startswith("http_"):
            code = int(how.removeprefix("http_"))
            self._send(h, code, f"<html><body>error {code}</body></html>".encode(), "text/html", head)
            return True
        if how == "timeout":
            self._stop.wait(float(rule.get("delay", 30)))
            h.close_connection = True
            return True
        if how == "redirect_loop":
            target = path.split("?")[0] + ("" if "loop=1" in path else "?loop=1")
            h.send_response(302)
            h.send_header("Location", target)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return True
        if how == "truncated":
            page = self._lookup(path)
            body = page.body if page else b"<html><head><title>x</title></head><body><div class='card'>"
            cut = body[: max(1, int(len(body) * float(rule.get("keep", 0.4))))]
            self._send(h, 200, cut, "text/html; charset=utf-8", head)
            return True
        if how == "data_loss":
            body = b"<html><body><p>this page promises more than it sends"
            self._send(h, 200, body, "text/html; charset=utf-8", head, length=len(body) + 5000)
            h.close_connection = True
            return True
        if how == "garbage":
            self._send(h, 200, os.urandom(int(rule.get("size", 4096))), "text/html; charset=utf-8", head)
            return True
        if how == "html_image":
            body = b"<!DOCTYPE html><html><body><h1>Image not found</h1></body></html>"
            self._send(h, 200, body, "image/jpeg", head)
            return True
        if how == "corrupt_image":
            self._send(h, 200, corrupt_jpeg(), "image/jpeg", head)
            return True
        if how == "huge_image":
            size = int(rule.get("size", 50 * 1024 * 1024))
            h.send_response(200)
            h.send_header("Content-Type", "image/jpeg")
            if rule.get("chunked"):
                h.send_header("Connection", "close")
                h.close_connection = True
            else:
                h.send_header("Content-Length", str(size))
            h.end_headers()
            if head:
                return True
            sent = 0
            chunk = jpeg_bytes()[:20] + b"\x00" * (256 * 1024 - 20)
            try:
                while sent < size and not self._stop.is_set():
                    part = chunk[: size - sent]
                    h.wfile.write(part)
                    sent += len(part)
            except (BrokenPipeError, ConnectionResetError, OSError):
                pass
            return True
        raise ValueError(f"unknown misbehaviour {how!r}")


def jsonld_card_html(post: dict[str, Any], extra_body: str = "") -> str:
    import html
    import json

    data = json.dumps(post, ensure_ascii=False).replace("</", "<\\/")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(str(post.get('name')))}</title>"
        f'<script type="application/ld+json">{data}</script></head>'
        f"<body><h1>{html.escape(str(post.get('name')))}</h1>{extra_body}</body></html>"
    )


class ListingSite:
    """A small lost-and-found site published as JSON-LD cards behind paginated catalog pages, on a MockSite.

    ``/catalog/<n>.html`` list ``<a class="card" href="/pets/<id>.html">`` tiles (title and status in the tile,
    ``rel=next`` pagination), ``/pets/<id>.html`` carry one ``homeward:Listing`` JSON-LD object each, and
    ``/photos/<id>.jpg`` are real JPEGs (distinct colours, the first one with EXIF GPS/owner tags).
    """

    def __init__(self, site: MockSite, n: int = 12, per_page: int = 5, photos: bool = True) -> None:
        self.site = site
        self.per_page = per_page
        self.posts: dict[str, dict[str, Any]] = {}
        for i in range(n):
            sid = f"{'l' if i % 3 == 0 else 'f'}{100 + i}"
            post: dict[str, Any] = {
                "@context": "https://schema.org",
                "@type": "homeward:Listing",
                "identifier": sid,
                "kind": "lost" if sid[0] == "l" else "found",
                "name": f"Pet {i}",
                "species": "dog" if i % 2 == 0 else "cat",
                "breed": "mixed",
                "color": ["black", "white"] if i % 2 else ["brown"],
                "gender": "male" if i % 2 else "female",
                "description": f"Pet number {i} seen near the park; friendly, wearing a red collar. Call 555-0{i:03d}.",
                "eventDate": f"2026-10-{(i % 27) + 1:02d}",
                "datePosted": f"2026-10-{(i % 27) + 1:02d}T10:00:00Z",
                "address": {"addressLocality": "Springfield", "streetAddress": f"{i + 10} Elm Street"},
                "geo": {"latitude": 47.6 + i / 1000, "longitude": -122.3 - i / 1000},
                "image": [f"/photos/{sid}.jpg"] if photos else [],
            }
            self.posts[sid] = post
            if photos:
                self.site.page(f"/photos/{sid}.jpg", self.photo(i), content_type="image/jpeg")
        self.render()

    @staticmethod
    def photo(i: int) -> bytes:
        from PIL import Image

        exif = None
        if i == 0:
            ex = Image.Exif()
            ex[0x013B] = "Owner Name"  # Artist
            ex[0x8825] = {1: "N", 2: (47.0, 36.0, 0.0)}  # GPSInfo
            exif = ex.tobytes()
        kwargs = {"exif": exif} if exif else {}
        return jpeg_bytes((96, 64), ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256), **kwargs)

    def card_path(self, sid: str) -> str:
        return f"/pets/{sid}.html"

    def tile(self, sid: str) -> str:
        post = self.posts[sid]
        status = post.get("status", "active")
        link = f'<a class="card" href="{self.card_path(sid)}">{post["name"]}</a>'
        return f"<li>{link} <b>{post['kind']} {status}</b></li>"

    def render(self, cards: bool = True) -> None:
        ids = list(self.posts)
        pages = max(1, -(-len(ids) // self.per_page))
        for n in range(1, pages + 1):
            chunk = ids[(n - 1) * self.per_page : n * self.per_page]
            nxt = f'<link rel="next" href="/catalog/{n + 1}.html">' if n < pages else ""
            body = "".join(self.tile(s) for s in chunk)
            self.site.page(f"/catalog/{n}.html", f"<html><head>{nxt}</head><body><ul>{body}</ul></body></html>")
        if cards:
            for sid, post in self.posts.items():
                self.site.page(self.card_path(sid), jsonld_card_html(post))

    def change(self, sid: str, tile: bool = True, **fields: Any) -> None:
        """Change a card; ``tile=True`` also changes what its catalog tile shows (name/kind)."""
        self.posts[sid].update(fields)
        self.site.page(self.card_path(sid), jsonld_card_html(self.posts[sid]))
        if tile:
            self.render(cards=False)


# -- helpers for crawl tests -------------------------------------------------------------------------------------


def crawl_settings(tmp_path: Path, sources: list[dict[str, Any]], data: str = "data", **crawl: Any) -> Any:
    """Settings for a test crawl: a temp data dir, ``sources`` as the sources file, politeness delays off."""
    import yaml

    from engine.config import load_settings

    sources_file = tmp_path / "sources.yaml"
    sources_file.write_text(yaml.safe_dump({"sources": sources}))
    return load_settings(
        overrides={
            "data_dir": str(tmp_path / data),
            "ray": {"num_cpus": 2, "object_store_mb": 256},
            "crawl": {
                "sources_file": str(sources_file),
                "download_delay_s": 0,
                "autothrottle": False,
                "timeout_s": 3,
                "retry_times": 0,
                **crawl,
            },
        },
        environ={},
    )


def site_source(url: str, name: str = "mock", **extra: Any) -> dict[str, Any]:
    """A configurable-spider source entry for a ListingSite at ``url``."""
    return {
        "name": name,
        "spider": "configurable",
        "base_url": url,
        "start_paths": ["/catalog/1.html"],
        "cadence_minutes": 60,
        **extra,
    }


def listings(settings: Any) -> dict[str, dict[str, Any]]:
    from engine.storage import LanceStore

    return {r["source_id"]: r for r in LanceStore(settings.lance).read("listings").to_pylist()}


def photos(settings: Any) -> list[dict[str, Any]]:
    from engine.storage import LanceStore

    return LanceStore(settings.lance).read("photos").to_pylist()
