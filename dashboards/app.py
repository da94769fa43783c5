"""``homeward dashboard``: the operator, analyst, search and shelter-review web pages, and a JSON API.

FastAPI on uvicorn: the pages are Jinja2 templates rendered by :class:`dashboards.pages.Dashboard` (which holds the
data and the rules), the API is :mod:`dashboards.api` (documented at ``/openapi.json``), uploads are parsed by
python-multipart, and the few scripts (the review buttons, the map) and Leaflet are served from
``dashboards/static``: nothing is fetched from another site unless ``dashboard.tile_url`` names a tile server.

In front of every route, :class:`dashboards.guard.Guard` checks the ``Host`` (DNS rebinding), the request's framing
and size, and a POST's ``Origin``, and adds the security headers; :mod:`dashboards.server` bounds idle connections
and how many are served at once.

**Tokens leave the URL.** A shelter's link carries its token once (``/shelter/<key>?token=…``, as ``homeward report``
prints it): the page answers with a redirect to the clean URL that sets the token as an ``HttpOnly``,
``SameSite=Lax`` cookie scoped to that shelter's path (``Secure`` over https), so the token stays out of the address
bar, the history and any ``Referer`` (``Strict`` would not be sent on the redirect after a link in an e-mail). The
operator token does the same on ``/shelters`` for the whole dashboard. API clients send tokens in a header.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from dashboards import api, i18n
from dashboards.candidates import MAX_PER_PAGE, PER_PAGE, Filters, page_link, visit_window
from dashboards.guard import Guard, wants_json
from dashboards.pages import (
    OPERATOR_COOKIE,
    TOKEN_COOKIE,
    Dashboard,
    HTTPError,
    SearchForm,
    SearchRefused,
    WatchForm,
    hit_view,
    shelter_path,
)
from dashboards.server import DashboardServer, stopped_by_signals
from engine.config import Settings

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
VISIT_COOKIE = "hw_visit"
TOKEN_DAYS = 30  # how long a browser keeps a token after its first visit


def create_app(dash: Dashboard) -> Guard:
    """The whole ASGI application: the pages, the API and the static files behind the guard."""
    app = FastAPI(
        title="Homeward dashboard",
        version="1",
        description="Lost-pet matches: photo search, shelter candidates and verdicts.",
        docs_url=None,  # Swagger UI loads its scripts from a CDN, which the CSP (rightly) refuses
        redoc_url=None,
    )
    app.include_router(api.router(dash))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _add_error_handlers(app, dash)
    _add_overview_pages(app, dash)
    _add_search_pages(app, dash)
    _add_shelter_pages(app, dash)
    _add_pair_pages(app, dash)
    return Guard(
        app,
        bound_host=dash.host,
        allowed_hosts=list(dash.settings.dashboard.allowed_hosts),
        max_upload=dash.max_upload,
        headers=dash.headers,
    )


def _add_error_handlers(app: FastAPI, dash: Dashboard) -> None:
    def answer(request: Request, status: int, message: str) -> Response:
        if wants_json(request.url.path, request.headers.raw):
            return JSONResponse({"ok": False, "error": message}, status)
        return dash.render("error.html", status, code=status, message=message)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPError)
        return answer(request, exc.status, exc.message)

    async def routing_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        message = f"no page at {request.url.path}" if exc.status_code == 404 else str(exc.detail)
        return answer(request, exc.status_code, message)

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in exc.errors())
        return answer(request, 422 if request.url.path.startswith("/api/") else 400, problems)

    async def bug(request: Request, exc: Exception) -> Response:  # logged with its trace by the server
        return PlainTextResponse(f"internal error: {type(exc).__name__}", 500)

    app.add_exception_handler(HTTPError, http_error)
    app.add_exception_handler(StarletteHTTPException, routing_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, bug)


def _remember(resp: Response, request: Request, name: str, value: str, path: str, days: int) -> None:
    resp.set_cookie(
        name, value, max_age=days * 86400, path=path, httponly=True, samesite="lax",
        secure=request.url.scheme == "https",
    )  # fmt: skip


def _clean_redirect(request: Request, path: str) -> RedirectResponse:
    """303 to ``path`` with the request's query minus ``token``."""
    query = {k: v for k, v in request.query_params.items() if k != "token"}
    return RedirectResponse(page_link(path, query), 303)


def _add_overview_pages(app: FastAPI, dash: Dashboard) -> None:
    """The home, operators' and analysts' pages, and the photos every page shows."""

    @app.get("/", include_in_schema=False)
    def home() -> Response:
        return dash.home()

    @app.get("/operators", include_in_schema=False)
    def operators() -> Response:
        return dash.operators()

    @app.get("/analysts", include_in_schema=False)
    def analysts() -> Response:
        return dash.analysts()

    @app.get("/photo/{photo_id}", include_in_schema=False)
    def photo(photo_id: str, size: str | None = None) -> Response:
        data = dash.photo(photo_id, size)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})


def _add_search_pages(app: FastAPI, dash: Dashboard) -> None:
    """Search by photo, an owner's saved search (watch) and its unsubscribe link."""

    def search_page(status: int = 200, language: str = i18n.DEFAULT, **ctx: Any) -> Response:
        ctx.setdefault("form", {"species": "", "near": "", "radius_km": "", "k": "12"})
        ctx.setdefault("errors", [])
        ctx.setdefault("searched", False)
        ctx.setdefault("watch_form", {"email": "", "near": "", "radius_km": "10", "species": "", "language": language})
        ctx.setdefault("watch_errors", [])
        ctx.setdefault("watch_saved", None)
        return dash.render("search.html", status, form_key=dash.form_key, languages=i18n.choices(), **ctx)

    @app.get("/search", include_in_schema=False)
    def search_get(request: Request) -> Response:  # alerts default to the browser's language
        return search_page(language=i18n.negotiate(request.headers.get("accept-language")))

    @app.post("/search", include_in_schema=False)
    def search_post(
        photo: Annotated[UploadFile | None, File()] = None,
        form_key: Annotated[str, Form()] = "",
        species: Annotated[str, Form()] = "",
        near: Annotated[str, Form()] = "",
        radius_km: Annotated[str, Form()] = "",
        k: Annotated[str, Form()] = "12",
    ) -> Response:
        if not hmac.compare_digest(form_key.encode(), dash.form_key.encode()):
            raise HTTPError(403, "missing or stale form key: reload the page and try again")
        data = photo.file.read() if photo is not None else b""
        form = SearchForm(data, photo.filename if photo else None, species, near, radius_km, k or "12")
        started = time.monotonic()
        try:
            result = dash.search(form)
        except SearchRefused as exc:
            return search_page(exc.status, form=form.shown(), errors=exc.errors)
        return search_page(
            message=result.message,
            form=form.shown(),
            results=[hit_view(hit) for hit in result.results],
            searched=True,
            elapsed=time.monotonic() - started,
        )

    @app.post("/watch", include_in_schema=False)
    def watch_post(
        photo: Annotated[UploadFile | None, File()] = None,
        form_key: Annotated[str, Form()] = "",
        email: Annotated[str, Form()] = "",
        near: Annotated[str, Form()] = "",
        radius_km: Annotated[str, Form()] = "",
        species: Annotated[str, Form()] = "",
        language: Annotated[str, Form()] = "",
    ) -> Response:
        if not hmac.compare_digest(form_key.encode(), dash.form_key.encode()):
            raise HTTPError(403, "missing or stale form key: reload the page and try again")
        data = photo.file.read() if photo is not None else b""
        form = WatchForm(data, photo.filename if photo else None, email, near, radius_km, species, language)
        try:
            saved = dash.watch(form)
        except SearchRefused as exc:
            return search_page(exc.status, watch_form=form.shown(), watch_errors=exc.errors)
        return search_page(watch_saved=saved)

    # An alert's unsubscribe link carries its own secret; mail clients' one-click unsubscribe (RFC 8058) POSTs to it
    # from their servers, without an Origin (dashboards.guard lets this path through).
    @app.get("/unsubscribe", include_in_schema=False)
    def unsubscribe_page(token: str = "") -> Response:
        return dash.render("unsubscribe.html", token=token, done=None)

    @app.post("/unsubscribe", include_in_schema=False)
    def unsubscribe(token: str = "", form_token: Annotated[str, Form(alias="token")] = "") -> Response:
        done = dash.unsubscribe(token or form_token)
        return dash.render("unsubscribe.html", 200 if done else 404, token="", done=done)


def _adopt_link_token(request: Request, token: str, to: str, cookie: str, cookie_path: str) -> RedirectResponse:
    """A page opened from a link with ``?token=`` (checked by the caller): keep the token in a cookie and redirect to
    the same page without it, so it stays out of the address bar, history and referrers."""
    resp = _clean_redirect(request, to)
    _remember(resp, request, cookie, token, cookie_path, TOKEN_DAYS)
    return resp


def _add_shelter_pages(app: FastAPI, dash: Dashboard) -> None:
    """The shelter index and a shelter's review page."""

    @app.get("/shelters", include_in_schema=False)
    def shelter_index(request: Request, token: str | None = None) -> Response:
        if token and dash.exposed:
            dash.require_operator(token)
            return _adopt_link_token(request, token, "/shelters", OPERATOR_COOKIE, "/")
        dash.require_operator(dash.token(request))
        return dash.render("shelters.html", shelters=dash.shelters())

    @app.get("/shelter/{key}", include_in_schema=False)
    def shelter_page(
        key: str,
        request: Request,
        token: str | None = None,
        page: Annotated[int, Query(ge=1)] = 1,
        per_page: Annotated[int, Query(ge=1, le=MAX_PER_PAGE)] = PER_PAGE,
        sort: Literal["best", "newest"] = "best",
        open: bool = False,
        new: bool = False,
        species: str = "",
        source: str = "",
    ) -> Response:
        path = shelter_path(key)
        if token and dash.exposed:
            dash.require_shelter(key, token)
            return _adopt_link_token(request, token, path, TOKEN_COOKIE, path)
        dash.require_shelter(key, dash.token(request))
        name = dash.shelter_name(key)
        since, visit = visit_window(request.cookies.get(VISIT_COOKIE), dt.datetime.now(dt.UTC))
        filters = Filters(open, species or None, source or None, since if new else None, sort)
        got = dash.candidates(key, filters, page, per_page)
        query = {"sort": sort if sort != "best" else None, "open": open and 1, "new": new and 1, "species": species,
                 "source": source, "per_page": per_page if per_page != PER_PAGE else None}  # fmt: skip
        resp = dash.render(
            "shelter.html",
            key=key,
            path=path,
            name=name,
            got=got,
            since=since,
            query=query,
            link=lambda **changes: page_link(path, {**query, "page": got.page}, **changes),
            form_key=dash.form_key,
            run=dash.latest_run(),
        )
        _remember(resp, request, VISIT_COOKIE, visit, path, 365)
        return resp


def _add_pair_pages(app: FastAPI, dash: Dashboard) -> None:
    """A candidate pair's page with its map, and the shelter's verdict on it."""

    @app.get("/shelter/{key}/pair", include_in_schema=False)
    def pair_page(key: str, request: Request, lost: str, found: str, token: str | None = None) -> Response:
        if token and dash.exposed:  # a report e-mail's link: as on the shelter page
            dash.require_shelter(key, token)
            return _adopt_link_token(request, token, f"{shelter_path(key)}/pair", TOKEN_COOKIE, shelter_path(key))
        dash.require_shelter(key, dash.token(request))
        pair = dash.pair(key, lost, found)
        points = {
            side: [pair[f"{side}_lat"], pair[f"{side}_lon"]]
            for side in ("lost", "found")
            if pair[f"{side}_lat"] is not None and pair[f"{side}_lon"] is not None
        }
        settings = dash.settings.dashboard
        map_data = {"points": points, "distance_km": pair["distance_km"], "tile_url": settings.tile_url,
                    "attribution": settings.tile_attribution}  # fmt: skip
        return dash.render(
            "pair.html", key=key, path=shelter_path(key), name=pair["shelter_name"], r=pair, map_data=map_data,
            form_key=dash.form_key,
        )  # fmt: skip

    @app.post("/shelter/{key}/feedback", include_in_schema=False)
    def feedback(
        key: str,
        request: Request,
        form_key: Annotated[str, Form()] = "",
        token: Annotated[str | None, Form()] = None,
        lost_listing_id: Annotated[str, Form()] = "",
        found_listing_id: Annotated[str, Form()] = "",
        verdict: Annotated[str | None, Form()] = None,
        who: Annotated[str | None, Form()] = None,
        note: Annotated[str | None, Form()] = None,
    ) -> Response:
        given_key = request.headers.get("x-homeward-form") or form_key
        if not hmac.compare_digest(given_key.encode(), dash.form_key.encode()):
            raise HTTPError(403, "missing or stale form key: reload the page and try again")
        dash.require_shelter(key, dash.token(request, token))
        payload = dash.record_verdict(key, lost_listing_id, found_listing_id, verdict, who, note)
        if wants_json(request.url.path, request.headers.raw):
            return JSONResponse({**payload, "at": payload["at"].isoformat()})
        resp = RedirectResponse(shelter_path(key), 303)
        if token and dash.exposed:
            _remember(resp, request, TOKEN_COOKIE, token, shelter_path(key), TOKEN_DAYS)
        return resp


def make_server(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    token: str | None = None,
    search_fn: Callable[..., Any] | None = None,
    idle_timeout_s: float = 30.0,
    max_connections: int = 32,
) -> DashboardServer:
    """A ready server (bound, not yet serving); ``port=0`` picks a free port (see ``server.url``). ``idle_timeout_s``
    and ``max_connections``: see :mod:`dashboards.server`."""
    host = host or settings.dashboard.host
    port = settings.dashboard.port if port is None else port
    dash = Dashboard(settings, host=host, token=token, search_fn=search_fn)
    server = DashboardServer(
        create_app(dash),
        host,
        port,
        app=dash,
        headers=dash.headers,
        forwarded_allow_ips=list(settings.dashboard.forwarded_allow_ips),
        idle_timeout_s=idle_timeout_s,
        max_connections=max_connections,
    )
    return server


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
    with stopped_by_signals(server.stop):  # before the URL is shown: a stop from then on is always a clean one
        exposed = server.app.exposed
        log.info("Homeward dashboard on %s (%s)", server.url, "tokens required" if exposed else "loopback")
        print(f"Homeward dashboard: {server.url}  (Ctrl-C to stop)", flush=True)
        try:
            server.serve_forever()
        finally:
            server.server_close()
    return {"url": server.url, "served_s": round(time.monotonic() - started, 1), "exposed": server.app.exposed}
