"""Petango / 24Pet (PetPoint) adoptable-animal pages — the shelter side (saved pages: Seattle Animal Shelter).

Layout under ``https://ws.petango.com/webservices/adoptablesearch/``:

* list: ``wsAdoptableAnimalSearch.aspx?species=Dog|Cat&…`` whose entries are
  ``<div class="list-animal-name"><a href="wsAdoptableAnimalDetails.aspx?id=36636186&css=">Mojo</a></div>``
  (``fixtures/petango/*_name_id_subURL_list.txt`` are these fragments);
* detail: ``wsAdoptableAnimalDetails.aspx?id=N`` with labelled spans ``lbName``, ``lblID``, ``lblSpecies``,
  ``lbBreed``, ``lbAge``, ``lbSex``, ``lblSize``, ``lblColor``, ``lblSite`` (the shelter), ``lblLocation`` (kennel
  or foster), ``lbDescription``, the main ``imgAnimalPhoto`` and further photos in ``#plPhotos``.

Every detail page is an animal available for adoption: kind ``adoptable``, the shelter in ``shelter_name``.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

from parsel import Selector

from crawlers.parsers import ParseError, absolute_url, clean_text, html_selector, node_text, unique

SITE = "https://ws.petango.com/webservices/adoptablesearch/"
DETAIL_PAGE = "wsAdoptableAnimalDetails.aspx"
LIST_PAGE = "wsAdoptableAnimalSearch.aspx"
_PLACEHOLDER_RE = re.compile(r"not[-_ ]?available|no[-_ ]?photo|nophoto", re.I)


def is_card_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.path.lower().endswith(DETAIL_PAGE.lower()) and bool(parse_qs(parts.query).get("id"))


def _span(sel: Selector, *ids: str) -> str | None:
    for i in ids:
        text = node_text(sel.css(f"#{i}")[:1])
        if text:
            return text
    return None


def parse_card(text: str, url: str = SITE + DETAIL_PAGE) -> dict[str, Any]:
    sel = html_selector(text, "Petango detail page")
    source_id = _span(sel, "lblID")
    if not source_id:
        ids = parse_qs(urlsplit(url or "").query).get("id")
        source_id = ids[0] if ids and sel.css("#lbName, #lblSpecies") else None
    if not source_id:
        raise ParseError("no Petango animal found (no #lblID)")
    warnings: list[str] = []
    name = _span(sel, "lbName")
    age = _span(sel, "lbAge")
    desc_nodes = sel.css("#lbDescription")[:1]
    description = None
    if desc_nodes:
        html = desc_nodes[0].get()
        html = re.sub(r"<br\s*/?>", "\n", html, flags=re.I)
        description = node_text(Selector(text=html), sep="\n")
    photo_hrefs = [
        sel.css("#imgAnimalPhoto::attr(src)").get(),
        *sel.css("#plPhotos a[id^=lnkPhoto]::attr(href)").getall(),
    ]
    photos = [p for p in unique(absolute_url(url, h) for h in photo_hrefs) if not _PLACEHOLDER_RE.search(p)]
    og_url = sel.css('meta[property="og:url"]::attr(content)').get()
    site = _span(sel, "lblSite")
    for key, value in (("name", name), ("age_text", age), ("description", description), ("photo_urls", photos)):
        if not value:
            warnings.append(f"{key}: not given on the page")
    raw: dict[str, Any] = {
        "source_id": source_id,
        "url": absolute_url(url, og_url) or url,
        "kind": "adoptable",
        "status": "active",
        "species": _span(sel, "lblSpecies"),
        "breed": _span(sel, "lbBreed"),
        "colors": _span(sel, "lblColor"),
        "sex": _span(sel, "lbSex"),
        "age_text": age,
        "size": _span(sel, "lblSize"),
        "name": name,
        "description": clean_text(description),
        "location_text": site,
        "shelter_name": site,
        "photo_urls": photos,
    }
    if warnings:
        raw["parse_warnings"] = warnings
    return raw


def parse_catalog(text: str, url: str = SITE + LIST_PAGE) -> tuple[list[str], list[str]]:
    """A search-results page (or its list fragment) → (detail page URLs, []) — the search shows every animal."""
    if text is None or not str(text).strip():
        raise ParseError("empty Petango list page")
    sel = html_selector(text, "Petango list page")
    hrefs = (
        sel.css(".list-animal-name a::attr(href)").getall() or sel.css(f"a[href*='{DETAIL_PAGE}']::attr(href)").getall()
    )
    cards = [u for u in unique(absolute_url(url, h) for h in hrefs) if is_card_url(u)]
    if not cards and not sel.css(".list-table, .list-item, #tblSearchResults, .list-animal-name"):
        raise ParseError("no Petango animal list found")
    return cards, []
