"""``homeward dashboard``: the operator, analyst, search and shelter-review web pages.

A small stdlib HTTP server (``http.server.ThreadingHTTPServer``) rendering Jinja2 templates, with a few lines of
vanilla JavaScript for the review buttons; no web framework, nothing fetched from the internet.

* **Reads DuckDB read-only while jobs write.** The server creates the schema and views once at start (one short
  write, skipped when current), then every request opens a read-only connection for its queries and closes it.
  Within this process connections are serialised by a lock (DuckDB refuses a read-only and a read-write handle on
  one file in one process at the same time). A verdict is one short ``RunsDB.write()`` transaction.
* **Photos** are looked up by photo id in LanceDB ``photos`` and read from the photo store, then downscaled and
  re-encoded without metadata; the original remote URL is never fetched or linked as an image.
* **Access.** Bound to a loopback address (the default), every page is open. Bound to another address, a shelter's
  pages and its verdicts need that shelter's token (:mod:`dashboards.access`), the shelter index needs the operator
  token (``--token``), and the server refuses to start with the default ``salt``. Every verdict also needs the
  per-process form key embedded in the page, so another web site cannot post verdicts through a browser.
* **Host and Origin.** Every request must name this dashboard in its ``Host`` header (the bound address, loopback
  names when bound to loopback, ``dashboard.allowed_hosts``): a DNS-rebinding page gets 400 and no data. Every POST
  (verdicts, photo uploads) must carry an ``Origin`` (else a ``Referer``) of the dashboard itself, else 403: every
  browser in use sends ``Origin`` on a POST, so a request with neither is refused too (a script adds the header).
  Pages are sent with ``Referrer-Policy: same-origin``: under ``no-referrer`` browsers send ``Origin: null`` even on a
  page's own POSTs.
* **Request limits** (:class:`DashboardServer`): a body needs one non-negative integer ``Content-Length`` within the
  path's limit (411/400/413 otherwise, answered, never a dropped connection); an idle or stalled socket is closed
  after ``idle_timeout_s``; at most ``max_connections`` connections are served at once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.parser
import email.policy
import hmac
import http.server
import io
import json
import logging
import math
import re
import secrets
import signal
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import jinja2
from PIL import Image

from dashboards.access import (
    DEFAULT_SALT,
    check_token,
    host_allowed,
    is_loopback,
    same_origin,
    shelter_token,
    split_host,
)
from dashboards.photos import PHOTO_ID, PhotoLookup
from engine import run_rows, views
from engine.config import Settings
from engine.errors import HomewardError
from engine.redact import redact_text
from engine.storage import RunsDB, StorageError

if TYPE_CHECKING:  # engine.search loads torch: imported when someone searches
    from engine.search import SearchHit, SearchResult

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).with_name("templates")
MAX_FORM_BYTES = 64 * 1024
VERDICTS = ("confirmed", "rejected")
SAFE_METHODS = ("GET", "HEAD")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
DEFAULT_HEADERS = {
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
}


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    client: str = ""

    def wants_json(self) -> bool:
        return "application/json" in self.headers.get("accept", "") or self.headers.get("x-requested-with") == "fetch"


def _fmt_num(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _fmt_time(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M")
    return str(value)


def _fmt_ago(value: Any) -> str:
    if not isinstance(value, dt.datetime):
        return "never"
    secs = (dt.datetime.now(dt.UTC) - value).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if secs >= size:
            return f"{secs / size:.0f} {unit} ago"
    return "just now"


def _jinja() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.ChainableUndefined,
    )
    env.filters.update(num=_fmt_num, time=_fmt_time, ago=_fmt_ago, urlencode=urllib.parse.quote)
    env.filters["pct"] = lambda v, top=1.0: 0 if not v or not top else max(0, min(100, round(float(v) / top * 100)))
    return env


def _hit_view(hit: SearchHit) -> dict[str, Any]:
    """A search hit as the page shows it: a listing URL only when it is http(s) (a crawled page may carry any
    scheme) and the photo only when its id is one the photo route serves."""
    view = asdict(hit)
    view["url"] = hit.url if hit.url and hit.url.lower().startswith(("http://", "https://")) else None
    view["_photo"] = hit.photo_id if hit.photo_id and PHOTO_ID.match(hit.photo_id) else None
    return view


def _is_image(data: bytes) -> bool:
    """Whether ``data`` opens as an image (header only: no pixel is decoded here)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
        return True
    except Exception:  # Pillow raises many types for garbage
        return False


def _parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """``multipart/form-data`` → name → (filename, bytes), with the stdlib e-mail parser (``cgi`` is gone)."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not msg.is_multipart():
        raise HTTPError(400, "expected a multipart/form-data upload")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        fields[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return fields


class Dashboard:
    """The application: routes a :class:`Request` to a page and returns a :class:`Response` (no sockets here)."""

    def __init__(
        self,
        settings: Settings,
        *,
        host: str,
        token: str | None = None,
        search_fn: Callable[..., SearchResult] | None = None,
    ) -> None:
        self.settings = settings
        self.host = host
        self.exposed = not is_loopback(host)
        self.operator_token = token
        if self.exposed and settings.salt == DEFAULT_SALT:
            raise HomewardError(
                f"refusing to serve on {host}: shelter tokens derive from `salt`, which is still the public default; "
                "set your own (HOMEWARD_SALT or --set salt=...) or bind 127.0.0.1"
            )
        bad = [h for h in settings.dashboard.allowed_hosts if split_host(h) is None]
        if bad:
            raise HomewardError(f"dashboard.allowed_hosts: not a host name: {', '.join(map(repr, bad))}")
        self.runs = RunsDB(settings.duckdb, busy_timeout_s=10.0)
        views.ensure_views(self.runs)
        self.photos = PhotoLookup(settings)
        self.form_key = secrets.token_urlsafe(18)
        self.db_lock = threading.RLock()
        self.env = _jinja()
        self._search_fn = search_fn
        self.max_upload = int(settings.crawl.max_image_mb * 1024 * 1024)

    # --- data access -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self.db_lock:
            try:
                with self.runs.read() as con:
                    yield con
            except StorageError as exc:
                raise HTTPError(503, f"the database is busy (a job is writing); try again in a moment ({exc})") from exc

    def q(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        with self.read() as con:
            return views.rows(con, sql, params)

    # --- plumbing ----------------------------------------------------------------------------------------------
    def render(self, template: str, status: int = 200, **ctx: Any) -> Response:
        ctx.setdefault("exposed", self.exposed)
        ctx.setdefault("page", template.removesuffix(".html"))
        html = self.env.get_template(template).render(**ctx)
        return Response(status, html.encode("utf-8"))

    def json(self, payload: Any, status: int = 200) -> Response:
        return Response(status, json.dumps(payload, default=str).encode(), "application/json")

    def handle(self, req: Request) -> Response:
        try:
            self.check_origin(req)
            resp = self.route(req)
        except HTTPError as exc:
            if req.wants_json() or req.path.startswith("/api/"):
                resp = self.json({"ok": False, "error": exc.message}, exc.status)
            else:
                resp = self.render("error.html", exc.status, code=exc.status, message=exc.message)
        except Exception as exc:  # a bug must not kill the server thread; it is logged with its trace
            log.exception("error serving %s %s", req.method, req.path)
            resp = Response(500, f"internal error: {type(exc).__name__}".encode(), "text/plain; charset=utf-8")
        return with_default_headers(resp)

    def route(self, req: Request) -> Response:
        path = req.path.rstrip("/") or "/"
        get = req.method in ("GET", "HEAD")
        if get and path == "/":
            return self.home()
        if get and path == "/operators":
            return self.operators()
        if get and path == "/analysts":
            return self.analysts()
        if path == "/search":
            return self.search_page(req) if get else self.search_post(req)
        if get and path == "/shelters":
            return self.shelter_index(req)
        if get and path == "/healthz":
            return self.json({"ok": True, "exposed": self.exposed})
        if get and path.startswith("/photo/"):
            return self.photo(path.removeprefix("/photo/"), req)
        m = re.fullmatch(r"/shelter/([^/]+)(/feedback)?", path)
        if m:
            key = urllib.parse.unquote(m.group(1))
            if m.group(2):
                if req.method != "POST":
                    raise HTTPError(405, "verdicts are POSTed")
                return self.feedback(key, req)
            if get:
                return self.shelter_page(key, req)
        raise HTTPError(404, f"no page at {req.path}")

    # --- access ------------------------------------------------------------------------------------------------
    def check_origin(self, req: Request) -> None:
        """Refuse a request whose ``Host`` is not this dashboard (400), and a state-changing one that does not come
        from one of its own pages (403), before anything is read or written."""
        allowed = self.settings.dashboard.allowed_hosts
        host = req.headers.get("host", "")
        if not host_allowed(host, self.host, allowed):
            raise HTTPError(400, "unknown Host: this dashboard answers only its own names (dashboard.allowed_hosts)")
        if req.method in SAFE_METHODS:
            return
        source = req.headers.get("origin") or req.headers.get("referer")
        if not source or not same_origin(source, host, allowed):
            raise HTTPError(403, "cross-origin request refused: post from the dashboard's own pages")

    def _token(self, req: Request, form: dict[str, str] | None = None) -> str | None:
        auth = req.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return (form or {}).get("token") or req.query.get("token")

    def require_shelter(self, key: str, req: Request, form: dict[str, str] | None = None) -> None:
        if not self.exposed:
            return
        if not check_token(self.settings, key, self._token(req, form), self.operator_token):
            raise HTTPError(403, "this shelter's pages need its token: open the link with ?token=… from the operator")

    # --- pages -------------------------------------------------------------------------------------------------
    def home(self) -> Response:
        figures = {
            "open": self.q("SELECT count(*) AS n FROM open_candidates")[0]["n"],
            "week": self.q("SELECT count(DISTINCT lost_listing_id) AS n FROM matches_this_week")[0]["n"],
            "reunions": self.q("SELECT count(*) AS n, median(days_to_reunion) AS d FROM time_to_reunion")[0],
            "stale": self.q(
                "SELECT count(*) AS n FROM crawl_health WHERE last_status <> 'ok' OR last_success IS NULL "
                "OR lag_hours > 48"
            )[0]["n"],
            "run": (self.q("SELECT run_id, finished FROM latest_match_run") or [None])[0],
        }
        return self.render("home.html", f=figures)

    def operators(self) -> Response:
        return self.render(
            "operators.html",
            health=self.q("SELECT * FROM crawl_health ORDER BY source"),
            crawls=self.q(
                "SELECT run_id, source, started, finished, status, pages, items, new_items, errors, duration_s, "
                "CASE WHEN duration_s > 0 THEN items / duration_s END AS items_per_s, message "
                "FROM crawl_runs ORDER BY started DESC LIMIT 50"
            ),
            jobs=self.q("SELECT * FROM job_throughput ORDER BY started DESC LIMIT 50"),
        )

    def analysts(self) -> Response:
        by_week = self.q(
            "SELECT date_trunc('week', day) AS week, kind, sum(listings)::BIGINT AS n FROM listings_over_time "
            "GROUP BY ALL ORDER BY week, kind"
        )
        weeks: dict[Any, dict[str, int]] = {}
        for r in by_week:
            weeks.setdefault(r["week"], {})[r["kind"]] = r["n"]
        totals = self.q(
            "SELECT source, kind, species, sum(listings)::BIGINT AS n FROM listings_over_time GROUP BY ALL "
            "ORDER BY source, kind, species"
        )
        scores = self.q("SELECT * FROM score_distribution ORDER BY bin")
        reunions = self.q("SELECT * FROM time_to_reunion ORDER BY confirmed_at DESC")
        stats = self.q(
            "SELECT count(*) AS n, median(days_to_reunion) AS med_reunion, median(days_to_match) AS med_match, "
            "avg(days_to_match) AS mean_match FROM time_to_reunion"
        )[0]
        return self.render(
            "analysts.html",
            weeks=[{"week": w, "kinds": k, "total": sum(k.values())} for w, k in sorted(weeks.items())],
            kinds=sorted({r["kind"] for r in by_week}),
            totals=totals,
            scores=scores,
            max_bin=max([s["pairs"] for s in scores] or [1]),
            max_week=max([sum(k.values()) for k in weeks.values()] or [1]),
            reunions=reunions,
            stats=stats,
            sources=self.q("SELECT * FROM source_yield ORDER BY confirmed_pairs DESC, matched_listings DESC"),
        )

    def shelter_index(self, req: Request) -> Response:
        if self.exposed and not (
            self.operator_token and hmac.compare_digest((self._token(req) or "").encode(), self.operator_token.encode())
        ):
            raise HTTPError(403, "the shelter index needs the operator token (homeward dashboard --token)")
        rows = self.q(
            "SELECT shelter_key, any_value(shelter_name) AS shelter_name, count(*) AS candidates, "
            "count(*) FILTER (WHERE verdict = 'confirmed') AS confirmed, max(score) AS best "
            "FROM open_candidates GROUP BY shelter_key ORDER BY best DESC"
        )
        for r in rows:
            r["token"] = shelter_token(self.settings, r["shelter_key"]) if self.exposed else None
        return self.render("shelters.html", shelters=rows)

    def shelter_page(self, key: str, req: Request) -> Response:
        self.require_shelter(key, req)
        rows = self.q(
            "SELECT * FROM open_candidates WHERE shelter_key = $1 ORDER BY verdict NULLS FIRST, score DESC, "
            "lost_listing_id, found_listing_id",
            [key],
        )
        name = rows[0]["shelter_name"] if rows else key
        if not rows and not self.q("SELECT 1 FROM listings WHERE shelter_key(source, shelter_id) = $1 LIMIT 1", [key]):
            raise HTTPError(404, f"no shelter {key!r} in the listings")
        for r in rows:
            for side in ("lost", "found"):
                if not r.get(f"{side}_photo_id"):
                    ids = r.get(f"{side}_photo_ids") or []
                    r[f"{side}_photo_id"] = ids[0] if ids else None
                url = r.get(f"{side}_url")
                r[f"{side}_url"] = url if url and url.lower().startswith(("http://", "https://")) else None
        token = self._token(req) if self.exposed else None
        run = (self.q("SELECT run_id, finished FROM latest_match_run") or [None])[0]
        return self.render("shelter.html", key=key, name=name, rows=rows, token=token, form_key=self.form_key, run=run)

    def feedback(self, key: str, req: Request) -> Response:
        if len(req.body) > MAX_FORM_BYTES:
            raise HTTPError(413, "form too large")
        ctype = req.headers.get("content-type", "")
        if ctype.startswith("application/json"):
            try:
                form = {k: str(v) for k, v in json.loads(req.body or b"{}").items() if v is not None}
            except (ValueError, AttributeError) as exc:
                raise HTTPError(400, f"bad JSON: {exc}") from exc
        else:
            form = {k: v[-1] for k, v in urllib.parse.parse_qs(req.body.decode("utf-8", "replace")).items()}
        given_key = req.headers.get("x-homeward-form") or form.get("form_key") or ""
        if not hmac.compare_digest(given_key.encode(), self.form_key.encode()):
            raise HTTPError(403, "missing or stale form key: reload the page and try again")
        self.require_shelter(key, req, form)
        lost, found, verdict = form.get("lost_listing_id", ""), form.get("found_listing_id", ""), form.get("verdict")
        if verdict not in VERDICTS:
            raise HTTPError(400, f"verdict must be one of {', '.join(VERDICTS)}")
        who = (form.get("who") or "").strip()[:80] or f"dashboard:{key}"
        # Notes are free text typed by staff: the same redaction as stored posts (no phone, e-mail, chip number).
        note = redact_text((form.get("note") or "").strip()[:500]) or None
        known = self.q(
            "SELECT 1 FROM latest_matches WHERE lost_listing_id = $1 AND found_listing_id = $2 AND shelter_key = $3",
            [lost, found, key],
        )
        if not known:
            raise HTTPError(404, "that pair is not a current candidate of this shelter")
        at = dt.datetime.now(dt.UTC)
        with self.db_lock:
            try:
                with self.runs.write() as con:
                    run_rows.add_feedback(con, lost, found, verdict, who, at, note)
            except StorageError as exc:
                raise HTTPError(503, f"the database is busy; your verdict was NOT saved, try again ({exc})") from exc
        log.info("verdict %s for %s × %s by %s (shelter %s)", verdict, lost, found, who, key)
        payload = {"ok": True, "verdict": verdict, "lost_listing_id": lost, "found_listing_id": found, "at": at}
        if req.wants_json():
            return self.json(payload)
        back = f"/shelter/{urllib.parse.quote(key, safe='')}"
        if self.exposed and form.get("token"):
            back += "?token=" + urllib.parse.quote(form["token"])
        return Response(303, b"", headers={"Location": back})

    def photo(self, photo_id: str, req: Request) -> Response:
        if not PHOTO_ID.match(photo_id):
            raise HTTPError(404, "no such photo")
        try:
            size = max(64, min(1024, int(req.query.get("size", "320"))))
        except ValueError:
            size = 320
        data = self.photos.thumbnail(photo_id, size)
        if data is None:
            raise HTTPError(404, "photo not in the photo store")
        return Response(200, data, "image/jpeg", {"Cache-Control": "private, max-age=86400"})

    # --- search ------------------------------------------------------------------------------------------------
    def search_fn(self) -> Callable[..., SearchResult]:
        if self._search_fn is None:
            from engine.search import search_image  # loads torch and the scoring stack: only when someone searches

            self._search_fn = search_image
        return self._search_fn

    def search_page(self, req: Request, status: int = 200, **ctx: Any) -> Response:
        ctx.setdefault("form", {"species": "", "near": "", "radius_km": "", "k": "12"})
        return self.render("search.html", status, form_key=self.form_key, **ctx)

    def search_post(self, req: Request) -> Response:
        if req.method != "POST":
            raise HTTPError(405, "use the form")
        ctype = req.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise HTTPError(400, "upload the photo as multipart/form-data")
        fields = _parse_multipart(ctype, req.body)
        text = {k: v[1].decode("utf-8", "replace").strip() for k, v in fields.items() if v[0] is None}
        if not hmac.compare_digest(text.get("form_key", "").encode(), self.form_key.encode()):
            raise HTTPError(403, "missing or stale form key: reload the page and try again")
        filename, photo = fields.get("photo", (None, b""))
        form = {
            "species": text.get("species", ""),
            "near": text.get("near", ""),
            "radius_km": text.get("radius_km", ""),
            "k": text.get("k", "12") or "12",
        }
        errors = []
        if not photo:
            errors.append("choose a photo to upload")
        near = form["near"] or None
        if near and not re.fullmatch(r"\s*-?\d+(\.\d+)?\s*,\s*-?\d+(\.\d+)?\s*", near):
            errors.append("place must be 'lat,lon', e.g. 47.61,-122.33")
        try:
            radius = float(form["radius_km"]) if form["radius_km"] else None
            k = max(1, min(100, int(form["k"])))
        except ValueError:
            errors.append("radius and number of results must be numbers")
            radius, k = None, 12
        if radius is not None and not near:
            errors.append("a radius needs a place")
        species = form["species"] if form["species"] in ("dog", "cat", "other") else None
        fn = self.search_fn()
        if photo and not _is_image(photo):
            errors.append("that file is not a photo Homeward can read (JPEG, PNG, WebP, GIF …)")
        if errors:
            return self.search_page(req, 400, form=form, errors=errors)
        started = time.monotonic()
        try:
            from engine.search import decode_query, parse_near

            image = decode_query(photo, filename or "the upload")
            result = fn(self.settings, image, species=species, near=parse_near(near), radius_km=radius, k=k)
        except HomewardError as exc:
            return self.search_page(req, 422, form=form, errors=[str(exc)])
        except Exception as exc:  # the search engine's bug must not look like "nothing found"
            log.exception("photo search failed")
            return self.search_page(req, 500, form=form, errors=[f"search failed: {type(exc).__name__}: {exc}"])
        items = [_hit_view(hit) for hit in result.results]
        return self.search_page(
            req, message=result.message, form=form, results=items, searched=True, elapsed=time.monotonic() - started
        )


# --- HTTP server ---------------------------------------------------------------------------------------------------


def with_default_headers(resp: Response) -> Response:
    """Add the security headers every answer carries (no framing, no MIME sniffing, CSP, no caching) unless set."""
    for name, value in DEFAULT_HEADERS.items():
        resp.headers.setdefault(name, value)
    return resp


class _Handler(http.server.BaseHTTPRequestHandler):
    """One connection, one request (HTTP/1.0: no keep-alive, so a slot is held for one request only). ``timeout``
    (the server's ``idle_timeout_s``) is the socket timeout: ``BaseHTTPRequestHandler`` closes the connection when a
    request line, a header or the body stalls that long."""

    server_version = "Homeward"
    sys_version = ""
    app: Dashboard  # set on the subclass made per server

    def _body_limit(self, path: str) -> int:
        return self.app.max_upload + MAX_FORM_BYTES if path.rstrip("/") == "/search" else MAX_FORM_BYTES

    def _read_body(self, path: str) -> bytes:
        """The request body, framed by exactly one valid ``Content-Length``; :class:`HTTPError` otherwise, before
        anything beyond the limit is read. Several ``Host`` headers are refused here too (which one would count?)."""
        if len(self.headers.get_all("Host") or []) > 1:
            raise HTTPError(400, "one Host header, please")
        if self.headers.get("Transfer-Encoding"):
            raise HTTPError(411, "send the body with a Content-Length (Transfer-Encoding is not supported)")
        values = {v.strip() for v in self.headers.get_all("Content-Length") or []}
        if not values:
            if self.command in SAFE_METHODS:
                return b""
            raise HTTPError(411, "a request body needs a Content-Length header")
        length = values.pop()
        if values or not _CONTENT_LENGTH.fullmatch(length):
            raise HTTPError(400, "Content-Length must be one non-negative integer")
        limit = self._body_limit(path)
        if int(length) > limit:
            raise HTTPError(413, f"request body too large: at most {limit:,} bytes here")
        body = self.rfile.read(int(length))
        if len(body) < int(length):
            raise HTTPError(400, "the request body ended before its Content-Length")
        return body

    def _drain(self) -> None:
        """Lingering close: half-close, then read and drop what the client still sends (at most 1 MiB, 2 s), since
        closing a socket with unread input resets the connection and the client may lose the answer before reading
        it."""
        deadline, left = time.monotonic() + 2.0, 1 << 20
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(0.5)
            while left > 0 and time.monotonic() < deadline:
                chunk = self.connection.recv(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)

    def _send(self, method: str, resp: Response) -> None:
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(resp.body)))
        for k, v in resp.headers.items():
            self.send_header(k, v)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(resp.body)

    def _serve(self, method: str) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        try:
            body = self._read_body(parsed.path)
        except HTTPError as exc:
            # The unread body would be taken for the next request: answer, then close.
            resp = Response(exc.status, exc.message.encode(), "text/plain; charset=utf-8", {"Connection": "close"})
            self._send(method, with_default_headers(resp))
            self._drain()
            return
        req = Request(
            method=method,
            path=parsed.path,
            query={k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query).items()},
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            client=self.client_address[0],
        )
        self._send(method, self.app.handle(req))

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_POST(self) -> None:
        self._serve("POST")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.client_address[0], format % args)


_BUSY_TEXT = b"the dashboard is busy: try again in a few seconds\n"
BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: 5\r\n"
    + b"".join(f"{k}: {v}\r\n".encode() for k, v in DEFAULT_HEADERS.items())
    + b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_TEXT), _BUSY_TEXT)
)


class DashboardServer(http.server.ThreadingHTTPServer):
    """A thread per connection, with two bounds.

    * ``idle_timeout_s`` (socket timeout, default 30 s): a client that opens a connection and sends nothing, or stops
      mid-request, is disconnected after that long, so idle sockets do not pile up. A slow upload keeps going as long
      as every read makes progress; a client dripping a byte just under the timeout can still hold its connection,
      which is what the next bound is for.
    * ``max_connections`` (default 32): connections served at once. One more is answered ``503`` with
      ``Retry-After`` straight from the accepting thread and closed, instead of queueing (a queue would let idle
      sockets delay everyone and would hold up ``shutdown``). The cost: a burst beyond the cap is refused rather than
      delayed, and the 503 is best effort (a client that already sent its request may see a reset instead). Requests
      read the database one at a time anyway (:attr:`Dashboard.db_lock`), so a larger cap buys little.

    Behind a reverse proxy (nginx, Caddy) in a hostile network, let the proxy enforce per-client limits too.
    """

    daemon_threads = True

    def __init__(
        self, app: Dashboard, host: str, port: int, *, idle_timeout_s: float = 30.0, max_connections: int = 32
    ) -> None:
        if idle_timeout_s <= 0 or max_connections < 1:
            raise HomewardError(
                f"idle_timeout_s must be > 0 and max_connections >= 1, got {idle_timeout_s} and {max_connections}"
            )
        handler = type("Handler", (_Handler,), {"app": app, "timeout": idle_timeout_s})
        self.app = app
        self.slots = threading.BoundedSemaphore(max_connections)
        super().__init__((host, port), handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.settimeout(1.0)
                request.sendall(BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # the thread did not start: its slot is free again
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}"


def make_server(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    token: str | None = None,
    search_fn: Callable[..., SearchResult] | None = None,
    idle_timeout_s: float = 30.0,
    max_connections: int = 32,
) -> DashboardServer:
    """A ready server (not yet serving); ``port=0`` picks a free port (see ``server.url``). ``idle_timeout_s`` and
    ``max_connections``: see :class:`DashboardServer`."""
    host = host or settings.dashboard.host
    port = settings.dashboard.port if port is None else port
    app = Dashboard(settings, host=host, token=token, search_fn=search_fn)
    try:
        return DashboardServer(app, host, port, idle_timeout_s=idle_timeout_s, max_connections=max_connections)
    except OSError as exc:
        raise HomewardError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def dashboard(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """Serve the dashboard until interrupted (Ctrl-C).

    Args:
        host: address to bind (default dashboard.host, 127.0.0.1); any non-loopback address turns on tokens.
        port: port to listen on (default dashboard.port, 8501; 0 picks a free one).
        token: operator token: opens every shelter's pages and the shelter index when exposed.
    """
    server = make_server(settings, host=host, port=port, token=token)
    started = time.monotonic()
    with _stopped_by_signals(server):  # before the URL is shown: a stop from then on is always a clean one
        log.info("Homeward dashboard on %s (%s)", server.url, "tokens required" if server.app.exposed else "loopback")
        print(f"Homeward dashboard: {server.url}  (Ctrl-C to stop)", flush=True)
        try:
            server.serve_forever(poll_interval=0.5)
        finally:
            server.server_close()
    return {"url": server.url, "served_s": round(time.monotonic() - started, 1), "exposed": server.app.exposed}


@contextlib.contextmanager
def _stopped_by_signals(server: DashboardServer) -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM (service managers) stop the server: ``shutdown()`` from a helper thread, since it
    waits for the serving loop. Installed explicitly rather than relying on KeyboardInterrupt reaching the loop: a
    SIGINT inherited as ignored (nohup, some supervisors) would never stop it, and one full test run saw Ctrl-C do
    nothing. Only the main thread may install handlers; elsewhere the defaults stay."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, name="dashboard-stop", daemon=True).start()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
