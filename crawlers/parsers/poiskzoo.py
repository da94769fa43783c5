"""poiskzoo.ru (Russian lost & found): the catalog (``/poteryashka``, ``/poteryashka/page-N``) and card pages
(``/<city>/<propala|najdena>-<animal>/<id>``, e.g. ``/orenburg/propala-koshka/164921``).

A card page has a heading (``h1.con_heading``: "Пропал кот Оренбург"), hidden print-form inputs (``a4id`` = card id,
``a4ob`` = "пропала кошка" / "найдена собака" / "пропало другое животное"), the city (``itemprop=addressLocality``),
one photo (``img.bd_image_small2`` with small/medium ``srcset``), the author's text (``itemprop=description``), a list
of ``<strong>Label:</strong> value`` lines ("Район где потерялся", "Адрес где нашли", "Пол животного", "Порода",
"Кличка", "Окрас", "Особые приметы") and a date (``span.bd_item_date``: "13 октября 2022", "Вчера в 22:27",
"Сегодня в 00:10"). Relative dates stay raw text; :func:`engine.normalize.normalize_listing` resolves them against
the crawl time. The site gives one date per card, used as both the event date and the posting time.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from parsel import Selector

from crawlers.parsers import (
    ParseError,
    absolute_url,
    clean_text,
    html_selector,
    iso_datetime,
    node_text,
    tile_fingerprint,
    unique,
)

SITE = "https://poiskzoo.ru"
_CARD_PATH_RE = re.compile(r"^/[\w-]+/[\w-]+/(\d+)/?$")
_ID_PATH_RE = re.compile(r"/(\d+)/?$")

#: Words of the heading / "a4ob" field that name an animal the site files under "другое животное" (other).
OTHER_ANIMALS: dict[str, str] = {
    "птица": "bird", "птицу": "bird", "птичка": "bird", "попугай": "bird", "попугайчик": "bird", "ворон": "bird",
    "ворона": "bird", "голубь": "bird", "канарейка": "bird", "сова": "bird", "кролик": "rabbit",
    "крольчиха": "rabbit", "хорек": "ferret", "хорь": "ferret", "хомяк": "hamster", "крыса": "rat",
    "шиншилла": "chinchilla", "черепаха": "turtle", "морская": "guinea pig", "ящерица": "lizard",
    "змея": "snake", "лошадь": "horse", "конь": "horse", "коза": "goat",
}  # fmt: skip
#: "Пол животного" values the site uses for "not given".
UNDEFINED_SEX = frozenset({"---", "--", "-", "не указан", "неизвестно"})


def is_card_url(url: str) -> bool:
    return bool(_CARD_PATH_RE.match(urlsplit(url).path))


def _labelled_values(sel: Selector) -> dict[str, str]:
    """``<strong>Label:</strong> value`` lines after the description → {label: value}."""
    out: dict[str, str] = {}
    for strong in sel.xpath("//div[@itemprop='description']/following-sibling::strong"):
        label = (node_text(strong) or "").rstrip(": ")
        parts: list[str] = []
        for node in strong.xpath("following-sibling::node()"):
            root = node.root
            if isinstance(root, str):
                if root.strip():
                    parts.append(root.strip())
                continue
            tag = getattr(root, "tag", None)
            if not isinstance(tag, str):  # comments, processing instructions
                continue
            if tag.lower() in ("br",):
                if parts:
                    break
                continue
            break
        if label and label not in out:
            out[label] = clean_text(" ".join(parts)) or ""
    return out


def _species(ob: str, heading: str) -> str | None:
    """The animal word: "кошка"/"собака" from ``a4ob``, else an animal named in the heading ("ворон" → "bird")."""
    from engine.normalize import normalize_species

    if normalize_species(ob, []) in ("dog", "cat"):
        return ob.split()[-1]
    words = re.findall(r"[а-яё]+", f"{heading} {ob}".lower().replace("ё", "е"))
    other = next((OTHER_ANIMALS[w] for w in words if w in OTHER_ANIMALS), None)
    if other:
        return other
    if normalize_species(heading, []) in ("dog", "cat"):
        return heading
    return ob or None


def parse_card(text: str, url: str = SITE) -> dict[str, Any]:
    sel = html_selector(text, "poiskzoo card page")
    heading = node_text(sel.css("h1.con_heading")[:1])
    source_id = (sel.css('input[name="a4id"]::attr(value)').get() or "").strip()
    canonical = sel.css('link[rel="canonical"]::attr(href)').get()
    if not source_id:
        m = _ID_PATH_RE.search(urlsplit(canonical or url or "").path)
        source_id = m.group(1) if m else ""
    if not heading or not source_id:
        raise ParseError("no poiskzoo card found (no h1.con_heading heading or no card id)")
    warnings: list[str] = []
    ob = (sel.css('input[name="a4ob"]::attr(value)').get() or "").strip()
    city = node_text(sel.css('[itemprop="addressLocality"] a')[:1]) or node_text(
        sel.css('[itemprop="addressLocality"]')[:1]
    )
    city = re.sub(r"\s*\(.*\)\s*$", "", city) if city else None
    values = _labelled_values(sel)
    address = next((v for k, v in values.items() if k.startswith(("Район где", "Адрес где", "Место"))), None)
    joined = city and address and city.lower() not in address.lower()
    location = f"{city}, {address}" if joined else address or city

    sex_raw = values.get("Пол животного")
    sex = "undefined" if sex_raw is None or sex_raw.strip().lower() in UNDEFINED_SEX else sex_raw

    desc_nodes = sel.xpath("//div[@itemprop='description']")[:1]
    description = None
    if desc_nodes:
        texts = desc_nodes[0].xpath("./text()[normalize-space()] | ./*[not(self::h1)]//text()[normalize-space()]")
        description = clean_text("\n".join(t.strip() for t in texts.getall()))
    marks = values.get("Особые приметы")
    if marks and marks.lower() not in ("нет", "-", "---"):
        description = clean_text(f"{description or ''}\nОсобые приметы: {marks}")

    photos: list[str | None] = []
    for img in sel.css("img.bd_image_small2, .img-img img"):
        srcset = img.attrib.get("srcset", "")
        best = max(((int(w), u) for u, w in re.findall(r"(\S+)\s+(\d+)w", srcset)), default=(0, img.attrib.get("src")))[
            1
        ]
        photos.append(absolute_url(url, best))
    photos_clean = [p for p in unique(photos) if "nopic" not in p]
    date_text = node_text(sel.css("span.bd_item_date")[:1])
    when = iso_datetime(date_text) or date_text
    if not date_text:
        warnings.append("event_date: no date on the page")
    raw: dict[str, Any] = {
        "source_id": source_id,
        "url": absolute_url(url, canonical) or url,
        "kind": ob or heading,
        "status": "active",
        "species": _species(ob, heading),
        "breed": values.get("Порода") or None,
        "name": values.get("Кличка") or None,
        "colors": values.get("Окрас") or None,
        "sex": sex,
        "description": description,
        "location_text": location,
        "event_date": when,
        "posted_at": when,
        "photo_urls": photos_clean,
    }
    if not description:
        warnings.append("description: no description")
    if warnings:
        raw["parse_warnings"] = warnings
    return raw


def catalog_tiles(text: str, url: str = f"{SITE}/poteryashka") -> dict[str, str]:
    """{card URL: the tile's text and thumbnail} for incremental re-crawls."""
    sel = html_selector(text, "poiskzoo catalog page")
    tiles: dict[str, str] = {}
    for tile in sel.xpath("//div[contains(@class,'pzplitkadiv')]"):
        href = tile.xpath(".//div[contains(@class,'pzplitkalink')]/a/@href").get()
        card = absolute_url(url, href)
        if card and card not in tiles:
            tiles[card] = tile_fingerprint(tile)
    return tiles


def parse_catalog(text: str, url: str = f"{SITE}/poteryashka") -> tuple[list[str], list[str]]:
    """The catalog's tiles → (card URLs, next page URL)."""
    sel = html_selector(text, "poiskzoo catalog page")
    tiles = sel.xpath("//div[contains(@class,'pzplitkadiv')]//div[contains(@class,'pzplitkalink')]/a/@href").getall()
    cards = unique(absolute_url(url, h) for h in tiles)
    nxt = [
        a.attrib.get("href")
        for a in sel.css(".pagebar a")
        if (node_text(a) or "").strip().lower().startswith(("следующая", "next"))
    ]
    pages = unique(absolute_url(url, h) for h in nxt)
    if not cards and not sel.css(".pagebar, .board_gallery"):
        raise ParseError("no poiskzoo catalog found (no card tiles and no page bar)")
    return cards, pages
