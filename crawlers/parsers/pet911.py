"""pet911.ru (Russian lost & found): card pages, catalog pages and the 2020 JSON API.

Card ids are ``rl<digits>`` (lost) and ``rf<digits>`` (found); the last path segment of a card URL is the id
(``/moskva/lost/cat/rl784284``, 2024; ``/Москва/пропала/кошка/rl537378``, 2022; the same Cyrillic form in 2021).

Page designs handled (saved pages in ``fixtures/pet911/data``):

* **2022-04 … 2024-01** (``20220430``, ``20220628``, ``20240114``): a ``.card`` with ``.card-info`` title/value
  rows ("Номер объявления", "Пол питомца", "Порода питомца", "Добавлено", "Пропал(а)"/"Найден(а)", "Имя хозяина"/
  "Имя нашедшего"), ``.card__descr``, ``.card-map__address``, a slider of ``a.js-card-slide`` photos and, when the
  pet went home, a ``.card-notice__title`` ("питомец нашелся.", "Питомцу найден новый дом.").
* **2021** (``2021``): ``section#view-pet`` with ``.p-art``, ``.p-animal``, ``.p-date``, ``.p-sex``, ``.p-author``,
  ``.p-address``, ``.p-description``, ``a[data-lightbox=pet]`` photos and a ``.section-subtitle`` when resolved.
  Some saved 2021 pages are UTF-8 read as cp1252; :func:`crawlers.parsers.fix_mojibake` repairs them.
* **2020 JSON API** (``fixtures/pet911_api/2020``): ``{"pet": {...}}`` from ``POST /api/view-pet`` and
  ``{"pets": [...], "total": N}`` lists, with numeric codes for animal/sex/type.

Coordinates come from the page's ``initMap({lat: …, lng: …})`` script.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import unquote, urlsplit

from parsel import Selector

from crawlers.parsers import (
    ParseError,
    absolute_url,
    clean_text,
    color_phrase,
    fix_mojibake,
    html_selector,
    iso_date,
    iso_datetime,
    node_text,
    tile_fingerprint,
    unique,
)

SITE = "https://pet911.ru"
CARD_ID_RE = re.compile(r"^r[lf]\d+$")
_CARD_ID_IN_URL_RE = re.compile(r"/(r[lf]\d+)/?(?:[?#].*)?$")
_LATLON_RE = re.compile(r"initMap\s*\(.*?\blat\b\s*:?\s*(-?\d+(?:\.\d+)?)\s*,\s*lng\b\s*:?\s*(-?\d+(?:\.\d+)?)", re.S)
_NO_PHOTO_RE = re.compile(r"no[-_]photo", re.I)
_MSK = timezone(timedelta(hours=3))

#: Card id prefix → kind.
KIND_BY_PREFIX = {"rl": "lost", "rf": "found"}
#: Words in breadcrumb links / URL segments → species.
SPECIES_BY_SLUG = {
    "cat": "cat", "cats": "cat", "lost-cats": "cat", "found-cats": "cat", "кошка": "cat", "кот": "cat",
    "dog": "dog", "dogs": "dog", "lost-dogs": "dog", "found-dogs": "dog", "собака": "dog",
}  # fmt: skip
#: 2020 API codes.
API_ANIMAL = {"1": "dog", "2": "cat"}
API_SEX = {"1": "unknown", "2": "male", "3": "female"}
API_TYPE = {"1": "lost", "2": "found"}
API_STATUS = {"1": "active"}


def is_card_url(url: str) -> bool:
    """A pet911 card page: its last path segment is a card id."""
    return bool(_CARD_ID_IN_URL_RE.search(unquote(urlsplit(url).path)))


def card_id_from_url(url: str) -> str | None:
    m = _CARD_ID_IN_URL_RE.search(unquote(urlsplit(url or "").path))
    return m.group(1) if m else None


# ------------------------------------------------------------------------------------------------------ cards


def parse_card(text: str, url: str = SITE) -> dict[str, Any]:
    """One pet911 card (any page design, or a 2020 API ``{"pet": …}`` body) → raw listing dict."""
    if text is None or not str(text).strip():
        raise ParseError("empty page")
    stripped = str(text).lstrip("\ufeff").lstrip()
    if stripped[:1] in "{[":
        return parse_api_card(stripped, url)
    sel = html_selector(fix_mojibake(stripped), "pet911 card page")
    if sel.css(".card .card-information, .card-information .card-info"):
        return _parse_card_2022(sel, stripped, url)
    if sel.css("section#view-pet"):
        return _parse_card_2021(sel, stripped, url)
    raise ParseError("no pet911 card found (neither a .card-information block nor section#view-pet)")


def _species_from(*candidates: str | None) -> str | None:
    from engine.normalize import normalize_species

    for cand in candidates:
        if not cand:
            continue
        for token in re.split(r"[/\s,.:]+", unquote(cand).lower()):
            if token in SPECIES_BY_SLUG:
                return SPECIES_BY_SLUG[token]
        got = normalize_species(cand, [])
        if got in ("dog", "cat", "other"):
            return got
    return None


def _latlon(html: str) -> tuple[float | None, float | None]:
    m = _LATLON_RE.search(html)
    if not m:
        return None, None
    return float(m.group(1)), float(m.group(2))


def _canonical(sel: Selector, url: str) -> str:
    """The card's own URL on pet911: og:url where it carries the id (the 2022 pages' canonical link names the wrong
    species), else the canonical link, else ``url``."""
    for href in [
        *sel.css('meta[property="og:url"]::attr(content)').getall()[:1],
        *sel.css('link[rel="canonical"]::attr(href)').getall(),
    ]:
        if card_id_from_url(href):
            return href
    return url


def _finish(raw: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    for key, why in (
        ("species", "no species on the page"),
        ("description", "no description"),
        ("event_date", "no event date"),
    ):
        if not raw.get(key):
            warnings.append(f"{key}: {why}")
    if warnings:
        raw["parse_warnings"] = warnings
    return raw


def _parse_card_2022(sel: Selector, html: str, url: str) -> dict[str, Any]:
    warnings: list[str] = []
    card = sel.css(".card") or [sel]
    info: dict[str, str] = {}
    for row in sel.css(".card-information .card-info"):
        title = node_text(row.css(".card-info__title"))
        value = node_text(row.css(".card-info__value"))
        if title:
            info[title.rstrip(":")] = value or ""
    source_id = (info.get("Номер объявления") or "").strip() or card_id_from_url(url)
    if not source_id:
        raise ParseError("no card id found")
    if not CARD_ID_RE.match(source_id):
        warnings.append(f"source_id: unexpected card id {source_id!r}")

    h1 = node_text(sel.css(".card__title h1")[:1]) or node_text(sel.css("h1")[:1])
    canonical = _canonical(sel, url)
    crumbs = " ".join(sel.css(".breadcrumbs a::attr(href), .breadcrumbs__item::attr(href)").getall())
    og_urls = " ".join(sel.css('meta[property="og:url"]::attr(content)').getall()[:1])
    species = _species_from(crumbs, h1, og_urls)

    event_key = next((k for k in info if k.startswith(("Пропал", "Найден"))), None)
    author = info.get("Имя хозяина") or info.get("Имя нашедшего")
    notice = node_text(sel.css(".card-notice__title")[:1])
    body_class = sel.css("body::attr(class)").get() or ""
    status = notice or ("resolved" if "pet-find" in body_class.split() else "active")

    photos = [
        absolute_url(url, h)
        for h in card[0]
        .css(".card-slider a.js-card-slide::attr(href), .swiper-wrapper a.js-card-slide::attr(href)")
        .getall()
    ]
    photos = [p for p in unique(photos) if not _NO_PHOTO_RE.search(p)]
    description = node_text(card[0].css(".card__descr")[:1], sep="\n")
    location = node_text(sel.css(".card-map__address")[:1]) or node_text(sel.css(".card-address__info")[:1])
    lat, lon = _latlon(html)
    raw: dict[str, Any] = {
        "source_id": source_id,
        "url": absolute_url(url, canonical) or url,
        "kind": KIND_BY_PREFIX.get(source_id[:2]) or h1,
        "status": status,
        "species": species,
        "breed": info.get("Порода питомца") or None,
        "sex": info.get("Пол питомца") or None,
        "description": description,
        "colors": color_phrase(description),
        "location_text": location,
        "lat": lat,
        "lon": lon,
        "event_date": iso_date(info.get(event_key)) if event_key else None,
        "posted_at": iso_datetime(info.get("Добавлено")),
        "photo_urls": photos,
        "author_name": author or None,
        "name": None,
    }
    return _finish(raw, warnings)


def _parse_card_2021(sel: Selector, html: str, url: str) -> dict[str, Any]:
    warnings: list[str] = []
    view = sel.css("section#view-pet")[0]
    source_id = (node_text(view.css(".p-art .text")[:1]) or "").strip() or card_id_from_url(url)
    if not source_id:
        raise ParseError("no card id found")
    if not CARD_ID_RE.match(source_id):
        warnings.append(f"source_id: unexpected card id {source_id!r}")
    h1 = node_text(view.css("h1")[:1])
    animal = node_text(view.css(".only-mobile .p-animal")[:1]) or node_text(view.css(".p-animal")[:1])
    species = _species_from(animal, h1)

    dates: dict[str, str] = {}
    for node in view.css(".only-mobile .p-date") or view.css(".p-date"):
        text = node_text(node) or ""
        label, _, value = text.partition(":")
        dates[label.strip()] = value.strip()
    event_key = next((k for k in dates if k.startswith("Дата")), None)
    sex = node_text(view.css(".p-sex .text")[:1])
    photos = [absolute_url(url, h) for h in view.css("a[data-lightbox='pet']::attr(href)").getall()]
    photos = [p for p in unique(photos) if not _NO_PHOTO_RE.search(p)]
    description = node_text(view.css(".p-description")[:1], sep="\n")
    subtitle = node_text(view.css(".section-subtitle")[:1])
    lat, lon = _latlon(html)
    raw: dict[str, Any] = {
        "source_id": source_id,
        "url": absolute_url(url, _canonical(sel, url)) or url,
        "kind": KIND_BY_PREFIX.get(source_id[:2]) or h1,
        "status": subtitle or "active",
        "species": species,
        "sex": sex,
        "description": description,
        "colors": color_phrase(description),
        "location_text": node_text(view.css(".p-address .text")[:1]),
        "lat": lat,
        "lon": lon,
        "event_date": iso_date(dates.get(event_key)) if event_key else None,
        "posted_at": iso_datetime(dates.get("Добавлено")),
        "photo_urls": photos,
        "author_name": node_text(view.css(".p-author .text")[:1]),
    }
    return _finish(raw, warnings)


# ---------------------------------------------------------------------------------------------------- catalog


def parse_catalog(text: str, url: str = f"{SITE}/catalog") -> tuple[list[str], list[str]]:
    """A catalog or search-results page (any design) → (card URLs, next page URL) — absolute, de-duplicated.

    Only the page after the current one is returned as "next": the site shows links to pages 2–5 and the last
    page, and walking them one by one keeps a crawl resumable and lets it stop when cards stop being new.
    """
    sel = html_selector(fix_mojibake(str(text)), "pet911 catalog page")
    scopes = sel.css(".catalog-item, .pet[data-art], .catalog__items, #listViewPets") or [sel]
    cards: list[str] = []
    for scope in scopes:
        for href in scope.css("a::attr(href)").getall():
            full = absolute_url(url, href)
            if full and is_card_url(full) and full not in cards:
                cards.append(full)
    pages = _next_page(sel, url)
    if not cards and not pages and not sel.css(".catalog__items, #listViewPets, .pagination"):
        raise ParseError("no pet911 catalog found (no card links and no pagination)")
    return cards, pages


def catalog_tiles(text: str, url: str = f"{SITE}/catalog") -> dict[str, str]:
    """{card URL: what its catalog tile shows} — title, excerpt, date, status badge ("Хозяин найден") and thumbnail.

    An incremental crawl re-fetches a stored card when its tile changes (a lost pet marked found, a new photo).
    """
    sel = html_selector(fix_mojibake(str(text)), "pet911 catalog page")
    tiles: dict[str, str] = {}
    for tile in sel.css(".catalog-item, .pet[data-art]"):
        hrefs = [absolute_url(url, h) for h in tile.css("a::attr(href)").getall()]
        card = next((h for h in hrefs if h and is_card_url(h)), None)
        if card and card not in tiles:
            tiles[card] = tile_fingerprint(tile)
    return tiles


def _next_page(sel: Selector, url: str) -> list[str]:
    active = sel.css(".pagination .pagination__active, .pagination li.active")
    current = None
    for node in active:
        digits = re.sub(r"\D", "", node_text(node) or "")
        if digits:
            current = int(digits)
            break
    if current is None:
        nxt = sel.css(".pagination li.next a::attr(href)").get()
        return [u for u in [absolute_url(url, nxt)] if u]
    for a in sel.css(".pagination a"):
        label = re.sub(r"\D", "", node_text(a) or "")
        if label and int(label) == current + 1:
            href = absolute_url(url, a.attrib.get("href"))
            return [href] if href else []
    return []


# --------------------------------------------------------------------------------------------------- 2020 API


def _load_json(text: str) -> Any:
    try:
        return json.loads(str(text).lstrip("\ufeff"))
    except json.JSONDecodeError as exc:
        raise ParseError(f"truncated or invalid JSON: {exc.msg} at char {exc.pos}") from exc


def _epoch_iso(value: Any, local_date: bool = False) -> str | None:
    try:
        ts = int(str(value))
    except (TypeError, ValueError):
        return None
    dt = datetime.fromtimestamp(ts, _MSK)  # the site's dates are Moscow-time midnights
    return dt.date().isoformat() if local_date else dt.astimezone(UTC).isoformat()


def _api_pet(pet: dict[str, Any], url: str) -> dict[str, Any]:
    warnings: list[str] = []
    source_id = str(pet.get("art") or "").strip()
    if not source_id:
        raise ParseError("no card id (art) in the API record")
    base = f"{urlsplit(url).scheme or 'https'}://{urlsplit(url).netloc or 'pet911.ru'}"
    photos = unique(absolute_url(base, "/images" + str(p.get("url"))) for p in pet.get("photos") or [] if p.get("url"))
    status_code = str(pet.get("status") or "")
    breed = (pet.get("petBreed") or {}).get("name") if isinstance(pet.get("petBreed"), dict) else None
    if breed in ("Неизвестно", "Другая"):
        breed = None
    author = (pet.get("author") or {}).get("username") if isinstance(pet.get("author"), dict) else None
    contact = (pet.get("author") or {}).get("phone") if isinstance(pet.get("author"), dict) else None
    location = (pet.get("location") or {}).get("name") if isinstance(pet.get("location"), dict) else None
    species = API_ANIMAL.get(str(pet.get("animal")))
    if species is None:
        warnings.append(f"species: unknown API animal code {pet.get('animal')!r}")
    raw: dict[str, Any] = {
        "source_id": source_id,
        "url": f"{base}/{source_id}",
        "kind": API_TYPE.get(str(pet.get("type"))) or KIND_BY_PREFIX.get(source_id[:2]),
        "status": API_STATUS.get(status_code, f"pet911 status code {status_code}" if status_code else None),
        "species": species,
        "sex": API_SEX.get(str(pet.get("sex"))),
        "breed": breed,
        "name": clean_text(pet.get("nickname")),
        "description": clean_text(pet.get("description")),
        "colors": color_phrase(pet.get("description")),
        "location_text": clean_text(pet.get("address")) or location,
        "lat": float(pet["latitude"]) if pet.get("latitude") else None,
        "lon": float(pet["longitude"]) if pet.get("longitude") else None,
        "event_date": _epoch_iso(pet.get("date"), local_date=True),
        "posted_at": _epoch_iso(pet.get("created_at")),
        "photo_urls": photos,
        "author_name": author or None,
        "contact": contact or clean_text(pet.get("contact_info")),
    }
    return _finish(raw, warnings)


def parse_api_card(text: str, url: str = SITE) -> dict[str, Any]:
    """A 2020 API ``{"pet": {...}}`` body (``POST /api/view-pet``) → raw listing dict."""
    data = _load_json(text)
    if isinstance(data, dict) and isinstance(data.get("pet"), dict):
        return _api_pet(data["pet"], url)
    if isinstance(data, dict) and isinstance(data.get("pets"), list):
        raise ParseError("an API card list, not a card (use parse_api_cards)")
    raise ParseError("JSON is not a pet911 API card (no 'pet' object)")


def parse_api_cards(text: str, url: str = SITE) -> list[dict[str, Any]]:
    """A 2020 API ``{"pets": [...]}`` list → raw listing dicts (records without an id are skipped)."""
    data = _load_json(text)
    if not isinstance(data, dict) or not isinstance(data.get("pets"), list):
        raise ParseError("JSON is not a pet911 API card list (no 'pets' array)")
    out = []
    for pet in data["pets"]:
        if isinstance(pet, dict) and pet.get("art"):
            out.append(_api_pet(pet, url))
    return out
