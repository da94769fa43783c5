"""A shelter's open candidates, a page at a time, filtered: what the review page and the JSON API both show.

One SQL query per page over ``open_candidates`` (with each pair's ``first_matched_at`` from ``match_history``), plus
one count: a shelter with thousands of candidates costs the same per page as one with ten. Undecided pairs come
first, then the order asked for: ``best`` (score, then newest) or ``newest`` (first published, then score). Paging
is by page number rather than by cursor: verdicts change the set between pages, and a page number stays meaningful
for a person who jumps to page 7; the cost is that a pair decided meanwhile can shift its neighbours by one.

"New since the last visit" is a time kept by the reviewer's browser (:func:`visit_window`), not a table: each
reviewer has their own last visit, and nothing is written for a page view.
"""

from __future__ import annotations

import datetime as dt
import math
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from dashboards.photos import PHOTO_ID

SORTS = {
    "best": "c.score DESC, h.first_matched_at DESC",
    "newest": "h.first_matched_at DESC, c.score DESC",
}
SPECIES = ("dog", "cat", "other")
PER_PAGE = 20
MAX_PER_PAGE = 100
VISIT_GAP = dt.timedelta(minutes=30)  # a page view after this much quiet starts a new visit


@dataclass(frozen=True)
class Filters:
    open_only: bool = False  # only pairs nobody decided yet (confirmed ones are hidden too)
    species: str | None = None  # either side's species
    source: str | None = None  # either side's source
    since: dt.datetime | None = None  # first published after this time
    sort: str = "best"

    def __post_init__(self) -> None:
        if self.sort not in SORTS:
            raise ValueError(f"sort must be one of {', '.join(SORTS)}, got {self.sort!r}")


@dataclass
class Page:
    items: list[dict[str, Any]]
    total: int
    page: int
    per_page: int
    sources: list[str] = field(default_factory=list)  # the shelter's sources, for the filter's choices

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))


def candidate_page(q: Any, key: str, filters: Filters, page: int = 1, per_page: int = PER_PAGE) -> Page:
    """Page ``page`` (from 1) of ``key``'s open candidates; ``q(sql, params)`` runs a read query returning dicts."""
    page, per_page = max(1, page), max(1, min(MAX_PER_PAGE, per_page))
    where, params = ["c.shelter_key = $key"], {"key": key}
    if filters.open_only:
        where.append("c.verdict IS NULL")
    if filters.species:
        where.append("$species IN (c.lost_species, c.found_species)")
        params["species"] = filters.species
    if filters.source:
        where.append("$source IN (c.lost_source, c.found_source)")
        params["source"] = filters.source
    if filters.since:
        where.append("h.first_matched_at > $since")
        params["since"] = filters.since
    base = (
        "FROM open_candidates c JOIN match_history h USING (lost_listing_id, found_listing_id) "
        f"WHERE {' AND '.join(where)}"
    )
    total = q(f"SELECT count(*) AS n {base}", params)[0]["n"]
    items = q(
        f"SELECT c.*, h.first_matched_at {base} ORDER BY c.verdict IS NOT NULL, {SORTS[filters.sort]}, "
        f"c.lost_listing_id, c.found_listing_id LIMIT {per_page} OFFSET {(page - 1) * per_page}",
        params,
    )
    for row in items:
        present(row)
    sources = q(
        "SELECT DISTINCT s FROM (SELECT unnest([lost_source, found_source]) AS s FROM open_candidates "
        "WHERE shelter_key = $key) WHERE s IS NOT NULL ORDER BY s",
        {"key": key},
    )
    return Page(items, total, page, per_page, [r["s"] for r in sources])


def present(row: dict[str, Any]) -> dict[str, Any]:
    """A candidate row as pages and the API show it: one photo per side (the best-matching, else the first) and only
    when its id is one the photo route serves, and listing URLs only when they are http(s) (a crawled page may carry
    any scheme)."""
    for side in ("lost", "found"):
        photo = row.get(f"{side}_photo_id") or next(iter(row.get(f"{side}_photo_ids") or []), None)
        row[f"{side}_photo_id"] = photo if photo and PHOTO_ID.match(photo) else None
        row[f"{side}_url"] = http_url(row.get(f"{side}_url"))
    return row


def http_url(url: str | None) -> str | None:
    return url if url and url.lower().startswith(("http://", "https://")) else None


def visit_window(cookie: str | None, now: dt.datetime) -> tuple[dt.datetime | None, str]:
    """``(previous visit, new cookie value)`` from the visit cookie ``"<previous>-<last>"`` (epoch seconds).

    Page views less than :data:`VISIT_GAP` apart are one visit, so paging and filtering within a visit keep the same
    "new since" time; a view after a longer quiet makes the last view the previous visit. No (or a garbled) cookie:
    no previous visit, everything is new."""
    prev = last = None
    with_parts = (cookie or "").split("-")
    if len(with_parts) == 2 and all(p.isdigit() for p in with_parts):
        prev, last = (int(p) or None for p in with_parts)
    stamp = int(now.timestamp())
    if last is not None and stamp - last > VISIT_GAP.total_seconds():
        prev = last
    since = dt.datetime.fromtimestamp(prev, dt.UTC) if prev else None
    return since, f"{prev or 0}-{stamp}"


def page_link(path: str, query: dict[str, Any], **changes: Any) -> str:
    """``path`` with ``query`` updated by ``changes`` (``None`` drops a key): the pager's and filters' links."""
    merged = {k: v for k, v in {**query, **changes}.items() if v not in (None, "", False)}
    return path + ("?" + urllib.parse.urlencode(merged) if merged else "")
