"""What the dashboard shows, with no HTTP in it: the data behind every page and API answer, the access rules, verdicts
and photo search. :mod:`dashboards.app` maps URLs onto it.

* **Reads DuckDB read-only while jobs write.** The schema and views are created once at start (one short write,
  skipped when current), then every request opens a read-only connection for its queries and closes it. Within this
  process connections are serialised by a lock (DuckDB refuses a read-only and a read-write handle on one file in one
  process at the same time). A verdict is one short ``RunsDB.write()`` transaction.
* **Photos** are looked up by photo id in LanceDB ``photos`` and read from the photo store, then downscaled and
  re-encoded without metadata; the original remote URL is never fetched or linked as an image.
* **Access.** Bound to a loopback address (the default), every page is open. Bound to another address, a shelter's
  pages, its candidates in the API and its verdicts need that shelter's token (:mod:`dashboards.access`), the shelter
  index needs the operator token (``--token``), and the dashboard refuses to start with the default ``salt``. Every
  verdict posted from a page also needs the per-process form key embedded in that page.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hmac
import io
import logging
import math
import secrets
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import jinja2
from PIL import Image
from starlette.requests import Request
from starlette.responses import HTMLResponse

from dashboards import i18n
from dashboards.access import DEFAULT_SALT, check_token, is_loopback, shelter_token, split_host
from dashboards.candidates import Filters, Page, candidate_page, http_url, present
from dashboards.guard import security_headers
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
VERDICTS = ("confirmed", "rejected")
TOKEN_COOKIE = "hw_token"  # a shelter's token, scoped to that shelter's path
OPERATOR_COOKIE = "hw_operator"  # the operator token, for the whole dashboard
# Series colours of the analysts' stacked bars (by source and species), cycled.
PALETTE = ("#3f7fbf", "#d9534f", "#5cb85c", "#f0ad4e", "#8e6cc2", "#5bc0de", "#a0522d", "#999999")


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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
        undefined=jinja2.StrictUndefined,  # a field the page names but the data lacks is an error, not a blank
    )
    env.filters.update(num=_fmt_num, time=_fmt_time, ago=_fmt_ago, urlencode=urllib.parse.quote)
    env.filters["pct"] = lambda v, top=1.0: 0 if not v or not top else max(0, min(100, round(float(v) / top * 100)))
    return env


def shelter_path(key: str) -> str:
    """The one spelling of a shelter's page path (the token cookie's ``Path`` must match it byte for byte)."""
    return f"/shelter/{urllib.parse.quote(key, safe='')}"


def hit_view(hit: SearchHit) -> dict[str, Any]:
    """A search hit as pages and the API show it: a listing URL only when it is http(s) and the photo only when its id
    is one the photo route serves; ``date`` is when the animal was lost or found, else when the post went up."""
    view = asdict(hit)
    view["url"] = http_url(hit.url)
    view["photo_id"] = hit.photo_id if hit.photo_id and PHOTO_ID.match(hit.photo_id) else None
    view["date"] = hit.event_date or (hit.posted_at.date() if hit.posted_at else None)
    return view


def _is_image(data: bytes) -> bool:
    """Whether ``data`` opens as an image (header only: no pixel is decoded here)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
        return True
    except Exception:  # Pillow raises many types for garbage
        return False


@dataclass(frozen=True)
class SearchForm:
    """A photo search as typed into the page or sent to the API, as text (so the page can show it back)."""

    photo: bytes
    filename: str | None
    species: str = ""
    near: str = ""
    radius_km: str = ""
    k: str = "12"

    def shown(self) -> dict[str, str]:
        return {"species": self.species, "near": self.near, "radius_km": self.radius_km, "k": self.k}


@dataclass
class WatchForm:
    """An owner's saved search as typed into the search page: the photo, where the pet was lost, whom to e-mail."""

    photo: bytes
    filename: str | None
    email: str
    near: str
    radius_km: str
    species: str = ""
    language: str = ""

    def shown(self) -> dict[str, str]:
        return {"email": self.email, "near": self.near, "radius_km": self.radius_km, "species": self.species,
                "language": self.language}  # fmt: skip


class Dashboard:
    """The dashboard's state (settings, stores, the form key) and the logic of its pages and API answers."""

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
        try:
            self.headers = security_headers(settings.dashboard.tile_url)
        except ValueError as exc:
            raise HomewardError(str(exc)) from exc
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

    def q(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        with self.read() as con:
            return views.rows(con, sql, params)

    def render(self, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        ctx.setdefault("exposed", self.exposed)
        ctx.setdefault("page", template.removesuffix(".html"))
        return HTMLResponse(self.env.get_template(template).render(**ctx), status)

    # --- access ------------------------------------------------------------------------------------------------
    def token(self, req: Request, given: str | None = None) -> str | None:
        """The token a request carries: ``X-Homeward-Token`` or ``Authorization: Bearer`` (API clients), a form
        field or the query string (``given``; a first visit), else the cookies a first visit set."""
        auth = req.headers.get("authorization", "")
        bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        return (
            req.headers.get("x-homeward-token")
            or bearer
            or given
            or req.cookies.get(TOKEN_COOKIE)
            or req.cookies.get(OPERATOR_COOKIE)
        )

    def is_operator(self, token: str | None) -> bool:
        return bool(self.operator_token and token and hmac.compare_digest(token.encode(), self.operator_token.encode()))

    def require_shelter(self, key: str, token: str | None) -> None:
        if self.exposed and not check_token(self.settings, key, token, self.operator_token):
            raise HTTPError(403, "this shelter's pages need its token: open the link with ?token=… from the operator")

    def require_operator(self, token: str | None) -> None:
        if self.exposed and not self.is_operator(token):
            raise HTTPError(403, "the shelter index needs the operator token (homeward dashboard --token)")

    # --- pages -------------------------------------------------------------------------------------------------
    def home(self) -> HTMLResponse:
        figures = {
            "open": self.q("SELECT count(*) AS n FROM open_candidates")[0]["n"],
            "week": self.q("SELECT count(DISTINCT lost_listing_id) AS n FROM matches_this_week")[0]["n"],
            "reunions": self.q("SELECT count(*) AS n, median(days_to_reunion) AS d FROM time_to_reunion")[0],
            "stale": self.q(
                "SELECT count(*) AS n FROM crawl_health WHERE last_status <> 'ok' OR last_success IS NULL "
                "OR lag_hours > 48"
            )[0]["n"],
            "run": self.latest_run(),
        }
        return self.render("home.html", f=figures)

    def latest_run(self) -> dict[str, Any] | None:
        return (self.q("SELECT run_id, finished FROM latest_match_run") or [None])[0]

    def operators(self) -> HTMLResponse:
        return self.render(
            "operators.html",
            health=self.q("SELECT * FROM crawl_health ORDER BY source"),
            crawls=self.q(
                "SELECT run_id, source, started, finished, status, pages, items, new_items, errors, duration_s, "
                "CASE WHEN duration_s > 0 THEN items / duration_s END AS items_per_s, message "
                "FROM crawl_runs ORDER BY started DESC LIMIT 50"
            ),
            jobs=self.q("SELECT * FROM job_throughput ORDER BY started DESC LIMIT 50"),
            rounds=self.q(
                "SELECT r.round_id, r.started, r.finished, r.status, r.changed_listings, r.latency_s, r.match_run_id, "
                "r.message, (SELECT string_agg(s.step || ':' || s.status, ', ' ORDER BY s.started) FROM loop_steps s "
                "WHERE s.round_id = r.round_id AND s.source = '') AS steps "
                "FROM loop_rounds r ORDER BY r.started DESC LIMIT 10"
            ),
            alerts=self.q(
                "SELECT subject, kind, raised, message, emailed_to FROM loop_alerts ORDER BY raised DESC LIMIT 10"
            ),
        )

    def analysts(self) -> HTMLResponse:
        by_week = self.q(
            "SELECT date_trunc('week', day) AS week, source, coalesce(species, 'unknown') AS species, "
            "sum(listings)::BIGINT AS n FROM listings_over_time GROUP BY ALL ORDER BY week, source, species"
        )
        names = sorted({f"{r['source']} · {r['species']}" for r in by_week})
        colour = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
        weeks: dict[Any, dict[str, int]] = {}
        for r in by_week:
            weeks.setdefault(r["week"], {})[f"{r['source']} · {r['species']}"] = r["n"]
        scores = self.q("SELECT * FROM score_distribution ORDER BY bin")
        return self.render(
            "analysts.html",
            weeks=[{"week": w, "series": s, "total": sum(s.values())} for w, s in sorted(weeks.items())],
            series=[{"name": n, "colour": colour[n]} for n in names],
            totals=self.q(
                "SELECT source, kind, species, sum(listings)::BIGINT AS n FROM listings_over_time GROUP BY ALL "
                "ORDER BY source, kind, species"
            ),
            scores=scores,
            max_bin=max([s["pairs"] for s in scores] or [1]),
            max_week=max([sum(s.values()) for s in weeks.values()] or [1]),
            reunions=self.q("SELECT * FROM time_to_reunion ORDER BY confirmed_at DESC"),
            stats=self.q(
                "SELECT count(*) AS n, median(days_to_reunion) AS med_reunion, median(days_to_match) AS med_match, "
                "avg(days_to_match) AS mean_match FROM time_to_reunion"
            )[0],
            sources=self.q("SELECT * FROM source_yield ORDER BY confirmed_pairs DESC, matched_listings DESC"),
        )

    def shelters(self) -> list[dict[str, Any]]:
        rows = self.q(
            "SELECT shelter_key, any_value(shelter_name) AS shelter_name, count(*) AS candidates, "
            "count(*) FILTER (WHERE verdict = 'confirmed') AS confirmed, max(score) AS best "
            "FROM open_candidates GROUP BY shelter_key ORDER BY best DESC"
        )
        for r in rows:
            r["token"] = shelter_token(self.settings, r["shelter_key"]) if self.exposed else None
            r["path"] = shelter_path(r["shelter_key"])
        return rows

    def shelter_name(self, key: str) -> str:
        """The shelter's human name; :class:`HTTPError` 404 when no listing names the shelter."""
        named = self.q(
            "SELECT coalesce(shelter_name, shelter_id, source) AS name FROM listings "
            "WHERE shelter_key(source, shelter_id) = $1 ORDER BY shelter_name NULLS LAST LIMIT 1",
            [key],
        )
        if not named:
            raise HTTPError(404, f"no shelter {key!r} in the listings")
        return named[0]["name"]

    def candidates(self, key: str, filters: Filters, page: int, per_page: int) -> Page:
        return candidate_page(self.q, key, filters, page, per_page)

    def pair(self, key: str, lost: str, found: str) -> dict[str, Any]:
        """One open candidate of ``key`` with both listings' coordinates; 404 when it is not one."""
        rows = self.q(
            "SELECT c.*, h.first_matched_at, l.lat AS lost_lat, l.lon AS lost_lon, f.lat AS found_lat, "
            "f.lon AS found_lon FROM open_candidates c JOIN match_history h USING (lost_listing_id, found_listing_id) "
            "LEFT JOIN listings l ON l.listing_id = c.lost_listing_id "
            "LEFT JOIN listings f ON f.listing_id = c.found_listing_id "
            "WHERE c.shelter_key = $1 AND c.lost_listing_id = $2 AND c.found_listing_id = $3",
            [key, lost, found],
        )
        if not rows:
            raise HTTPError(404, "that pair is not an open candidate of this shelter")
        return present(rows[0])

    def record_verdict(
        self, key: str, lost: str, found: str, verdict: str | None, who: str | None, note: str | None
    ) -> dict[str, Any]:
        """Write one verdict for a current candidate of ``key`` (the caller has checked access)."""
        if verdict not in VERDICTS:
            raise HTTPError(400, f"verdict must be one of {', '.join(VERDICTS)}")
        who = (who or "").strip()[:80] or f"dashboard:{key}"
        # Notes are free text typed by staff: the same redaction as stored posts (no phone, e-mail, chip number).
        note = redact_text((note or "").strip()[:500]) or None
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
        return {"ok": True, "verdict": verdict, "lost_listing_id": lost, "found_listing_id": found, "at": at}

    def photo(self, photo_id: str, size: str | None) -> bytes:
        if not PHOTO_ID.match(photo_id):
            raise HTTPError(404, "no such photo")
        try:
            side = max(64, min(1024, int(size or "320")))
        except ValueError:
            side = 320
        data = self.photos.thumbnail(photo_id, side)
        if data is None:
            raise HTTPError(404, "photo not in the photo store")
        return data

    # --- search ------------------------------------------------------------------------------------------------
    def search_fn(self) -> Callable[..., SearchResult]:
        if self._search_fn is None:
            from engine.search import search_image  # loads torch and the scoring stack: only when someone searches

            self._search_fn = search_image
        return self._search_fn

    def search(self, form: SearchForm) -> SearchResult:
        """Run a photo search; :class:`HTTPError` 400 (every problem of the form at once) or 422 (the engine
        refused the photo) for bad input, 500 for the engine's own failure (never shown as "nothing found")."""
        errors = []
        if not form.photo:
            errors.append("choose a photo to upload")
        near = form.near.strip() or None
        where = None
        if near:
            from engine.places import near as place_of  # the gazetteer loads on the first place typed, not at start

            try:
                where = place_of(near)
            except HomewardError as exc:
                errors.append(f"place: {exc}")
        try:
            radius = float(form.radius_km) if form.radius_km.strip() else None
            k = max(1, min(100, int(form.k or "12")))
        except ValueError:
            errors.append("radius and number of results must be numbers")
            radius, k = None, 12
        if radius is not None and not near:
            errors.append("a radius needs a place")
        if form.species not in ("", "dog", "cat", "other"):
            errors.append("species must be dog, cat or other")
        fn = self.search_fn()
        if form.photo and not _is_image(form.photo):
            errors.append("that file is not a photo Homeward can read (JPEG, PNG, WebP, GIF …)")
        if errors:
            raise SearchRefused(400, errors)
        from engine.search import decode_query

        try:
            image = decode_query(form.photo, form.filename or "the upload")
            return fn(self.settings, image, species=form.species or None, near=where, radius_km=radius, k=k)
        except HomewardError as exc:
            raise SearchRefused(422, [str(exc)]) from exc
        except Exception as exc:  # the search engine's bug must not look like "nothing found"
            log.exception("photo search failed")
            raise SearchRefused(500, [f"search failed: {type(exc).__name__}: {exc}"]) from exc

    def watch(self, form: WatchForm) -> dict[str, Any]:
        """Save an owner's search (:func:`engine.watches.new_watch`, then :func:`engine.watches.save`);
        :class:`SearchRefused` 400 with every problem of the form, 422 when the engine refuses it (an address, a
        place, a photo it cannot use)."""
        errors = []
        if not form.photo:
            errors.append("choose a photo of your pet")
        elif not _is_image(form.photo):
            errors.append("that file is not a photo Homeward can read (JPEG, PNG, WebP, GIF …)")
        if not form.email.strip():
            errors.append("give the e-mail address the alerts go to")
        if not form.near.strip():
            errors.append("give the place where your pet was lost")
        try:
            radius = float(form.radius_km or "0")
        except ValueError:
            radius = 0.0
        if not 0 < radius <= 1000:
            errors.append("radius must be a number of km between 0 and 1000")
        if form.species not in ("", "dog", "cat"):
            errors.append("species must be dog or cat")
        if form.language and i18n.missing(form.language):
            errors.append(f"alerts can be in {', '.join(name for _, name in i18n.choices())}")
        if errors:
            raise SearchRefused(400, errors)
        from engine import watches
        from engine.search import decode_query

        try:
            image = decode_query(form.photo, form.filename or "the upload")
            pending = watches.new_watch(
                self.settings, image, near=form.near, radius_km=radius, email=form.email,
                species=form.species or None, language=form.language or None,
            )  # fmt: skip
            with self.db_lock:  # only the insert: page reads need not wait for the models
                return watches.save(self.settings, pending)
        except HomewardError as exc:
            raise SearchRefused(422, [str(exc)]) from exc

    def unsubscribe(self, token: str) -> bool:
        """End the watch an alert's unsubscribe link names; False when the token names no active watch."""
        from engine import watches

        with self.db_lock:
            return watches.unsubscribe(self.settings, token)


class SearchRefused(HTTPError):
    """A search that could not run, with every reason (the page lists them on the form)."""

    def __init__(self, status: int, errors: list[str]) -> None:
        super().__init__(status, "; ".join(errors))
        self.errors = errors
