"""The JSON API, documented at ``/openapi.json``: photo search, a shelter's candidates
(paged and filtered as on its review page), verdicts and a health check.

Shelter routes take the token in ``X-Homeward-Token`` (or ``Authorization: Bearer``), never in the URL. A POST needs
an ``Origin`` of the dashboard itself, or, with no ``Origin`` and no ``Referer``, the ``X-Homeward-Token`` or
``X-Requested-With`` header (:mod:`dashboards.guard`), which a cross-site page cannot send.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from pydantic import BaseModel, Field

from dashboards.candidates import MAX_PER_PAGE, PER_PAGE, Filters
from dashboards.pages import Dashboard, SearchForm, hit_view


class Listing(BaseModel):
    rank: int
    listing_id: str
    source: str | None
    name: str | None
    kind: str | None
    species: str | None
    url: str | None = Field(description="the original post (http/https only)")
    location: str | None
    event_date: dt.date | None = Field(description="when the animal was lost or found")
    posted_at: dt.datetime | None
    date: dt.date | None = Field(description="event_date, else the day it was posted")
    distance_km: float | None = Field(description="from `near`; null without a place on either side")
    score: float
    image_sim: float
    photo_id: str | None = Field(description="the listing's best-matching photo: GET /photo/{photo_id}")
    explanation: str


class SearchAnswer(BaseModel):
    model: str
    species: str = Field(description="asked for, else what the detector saw most, else 'unknown'")
    fallback_full_frame: bool = Field(description="no animal detected: searched with the whole image")
    searched_listings: int
    message: str | None = Field(description="why the results are few or none")
    results: list[Listing]


class Candidate(BaseModel):
    lost_listing_id: str
    found_listing_id: str
    score: float
    verdict: Literal["confirmed"] | None
    first_matched_at: dt.datetime | None
    distance_km: float | None
    days_apart: float | None
    explanation: str | None
    lost_source: str | None
    lost_name: str | None
    lost_species: str | None
    lost_event_date: dt.date | None
    lost_url: str | None
    lost_photo_id: str | None
    found_source: str | None
    found_kind: str | None
    found_name: str | None
    found_species: str | None
    found_event_date: dt.date | None
    found_url: str | None
    found_photo_id: str | None


class CandidatePage(BaseModel):
    shelter_key: str
    shelter_name: str
    page: int
    per_page: int
    pages: int
    total: int
    items: list[Candidate]


class VerdictIn(BaseModel):
    lost_listing_id: str
    found_listing_id: str
    verdict: Literal["confirmed", "rejected"]
    who: str | None = Field(None, max_length=80)
    note: str | None = Field(None, max_length=500, description="redacted before it is stored")


class VerdictOut(BaseModel):
    ok: bool
    verdict: str
    lost_listing_id: str
    found_listing_id: str
    at: dt.datetime


class Health(BaseModel):
    ok: bool
    exposed: bool


def router(dash: Dashboard) -> APIRouter:
    api = APIRouter()

    @api.get("/healthz", tags=["api"])
    def healthz() -> Health:
        return Health(ok=True, exposed=dash.exposed)

    @api.post("/api/search", tags=["api"])
    def search(
        photo: Annotated[UploadFile, File(description="the query photo (JPEG, PNG, WebP, GIF …)")],
        near: Annotated[str, Form(description="'lat,lon' in degrees, or a place (city, address, postcode)")] = "",
        radius_km: Annotated[str, Form(description="only listings this close to `near`")] = "",
        species: Annotated[Literal["", "dog", "cat", "other"], Form()] = "",
        k: Annotated[int, Form(ge=1, le=100)] = 12,
    ) -> SearchAnswer:
        """Listings whose photos look most like the uploaded one, best first (the page's search, as JSON)."""
        form = SearchForm(photo.file.read(), photo.filename, species, near, radius_km, str(k))
        result = dash.search(form)
        return SearchAnswer(
            model=result.model,
            species=result.species,
            fallback_full_frame=result.fallback_full_frame,
            searched_listings=result.searched_listings,
            message=result.message,
            results=[Listing(**hit_view(hit)) for hit in result.results],
        )

    @api.get("/api/shelters/{key}/candidates", tags=["api"])
    def candidates(
        key: str,
        request: Request,
        page: Annotated[int, Query(ge=1)] = 1,
        per_page: Annotated[int, Query(ge=1, le=MAX_PER_PAGE)] = PER_PAGE,
        sort: Annotated[
            Literal["best", "newest"], Query(description="best: score first; newest: first published")
        ] = "best",
        open: Annotated[bool, Query(description="only pairs nobody decided yet")] = False,
        species: str | None = None,
        source: str | None = None,
        since: Annotated[dt.datetime | None, Query(description="first published after this time")] = None,
    ) -> CandidatePage:
        """A shelter's open candidates (rejected pairs left out), undecided first, paged."""
        dash.require_shelter(key, dash.token(request))
        name = dash.shelter_name(key)
        filters = Filters(open_only=open, species=species, source=source, since=since, sort=sort)
        got = dash.candidates(key, filters, page, per_page)
        items = [Candidate(**_fields(row, Candidate)) for row in got.items]
        return CandidatePage(
            shelter_key=key, shelter_name=name, page=got.page, per_page=got.per_page, pages=got.pages,
            total=got.total, items=items,
        )  # fmt: skip

    @api.post("/api/shelters/{key}/verdicts", tags=["api"])
    def verdict(key: str, body: VerdictIn, request: Request) -> VerdictOut:
        """Confirm or reject one current candidate; a rejected pair leaves the candidates and future reports."""
        dash.require_shelter(key, dash.token(request))
        got = dash.record_verdict(key, body.lost_listing_id, body.found_listing_id, body.verdict, body.who, body.note)
        return VerdictOut(**got)

    return api


def _fields(row: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    return {name: row.get(name) for name in model.model_fields}
