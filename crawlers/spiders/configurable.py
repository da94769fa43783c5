"""The configurable spider: a new site needs only an entry in the sources config, no code.

Catalog pages: card links are the ``selectors.cards`` elements (default ``a.card``; the link is their ``href``, the
catalog fingerprint of each card is what the link's parent element shows — text and images, minus view counters and
relative dates (:func:`crawlers.parsers.tile_fingerprint`) — so a changed tile makes an incremental crawl re-fetch
that card); the next page is ``selectors.next_page`` (default
``link[rel=next]::attr(href), a[rel=next]::attr(href)``). A page is a card when its URL matches
``card_url_pattern``, when it was reached through a card link, or when it has no card links but publishes a listing.

Card pages: the listing comes from the page's JSON-LD (``<script type="application/ld+json">``, ``jsonld: true``
by default; ``@graph`` and lists are searched), then ``selectors.fields`` (CSS, or XPath with an ``xpath:`` prefix)
fill or override any field, then ``defaults`` fill what is still missing, and ``id_from_url`` (a regex with one
group) supplies the ``source_id`` when the page gives none (last resort: the URL path).

JSON-LD objects used: ``@type`` ``homeward:Listing``, ``Listing``, ``Pet``, ``Animal``, ``Dog``, ``Cat``,
``Product``, ``Thing``, ``Event`` or ``Offer`` (or any object with an ``identifier`` and a ``name``/``description``/
``image``); ``WebSite``, ``WebPage``, ``BreadcrumbList``, ``Organization`` … are skipped. Field mapping
(first present wins; ``additionalProperty`` ``[{name, value}]`` entries named like a raw key count too)::

    source_id      identifier (text, number or PropertyValue.value) | sku | productID | @id
    url            url (resolved against the page)            [default: the page URL]
    kind           kind | homeward:kind | category (when it is lost/found/sighting/shelter/adoptable)
    status         status | homeward:status
    species        species | animalType | homeward:species
    breed          breed
    colors         color | colour | colors (text or list)
    sex            gender | sex
    age_text       age | ageText;   age_group: ageGroup;   size: size
    name           name;            description: description
    location_text  address (text, or PostalAddress: addressLocality, addressRegion, addressCountry — never
                   streetAddress) | location.name / location.address | contentLocation | areaServed
    lat, lon       geo.latitude / geo.longitude (also location.geo, latitude/longitude at top level)
    event_date     eventDate | dateLost | dateFound | foundDate | startDate
    posted_at      datePosted | datePublished | dateCreated | uploadDate
    photo_urls     image | photo (text, ImageObject {url|contentUrl}, or a list of either)
    shelter_id     shelter.identifier | seller.identifier | provider.identifier | offers.seller.identifier
    shelter_name   shelter.name | seller.name | provider.name | offers.seller.name
    contact        telephone | email | contactPoint.telephone/email | author.telephone/email  (hashed, never stored)
    chip           microchip | chip | chipNumber  (hashed, never stored)
    author_name    author.name (never stored)

Example entry (``sources.yaml`` or ``crawl.sources_file``)::

    - name: demo
      spider: configurable
      base_url: http://127.0.0.1:8000
      start_paths: [/catalog/1.html]
      cadence_minutes: 60
      # optional, for sites without JSON-LD:
      selectors:
        cards: "div.post a.more"
        next_page: "xpath://a[contains(., 'Next')]/@href"
        fields: {source_id: "span.post-id::text", name: "h1::text", description: "div.text ::text",
                 photo_urls: "div.gallery img::attr(src)", event_date: "time::attr(datetime)"}
      defaults: {kind: lost}
      card_url_pattern: "/post/\\d+"
      id_from_url: "/post/(\\d+)"

Run it: ``homeward crawl --source demo`` (or ``scrapy crawl configurable -a source=demo`` from ``crawlers/``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urljoin, urlsplit

from parsel import Selector
from scrapy.http import Response, TextResponse

from crawlers.items import RAW_KEYS
from crawlers.parsers import tile_fingerprint
from crawlers.spiders.base import ListingSpider

LISTING_TYPES = {"homeward:listing", "listing", "pet", "animal", "dog", "cat", "product", "thing", "event", "offer"}
SKIP_TYPES = {"website", "webpage", "breadcrumblist", "organization", "searchaction", "imageobject", "person",
              "sitenavigationelement", "collectionpage", "itemlist", "listitem", "localbusiness"}  # fmt: skip
LIST_FIELDS = ("photo_urls", "colors")
KIND_WORDS = ("lost", "found", "sighting", "shelter", "adoptable")
DEFAULT_CARDS = "a.card"
DEFAULT_NEXT = "link[rel=next]::attr(href), a[rel=next]::attr(href)"


def _types(obj: dict[str, Any]) -> set[str]:
    t = obj.get("@type")
    values = t if isinstance(t, list) else [t]
    return {str(v).lower() for v in values if v}


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, list):
        for x in node:
            yield from _walk(x)
    elif isinstance(node, dict):
        if "@graph" in node:
            yield from _walk(node["@graph"])
        yield node


def jsonld_objects(sel: Selector) -> list[dict[str, Any]]:
    """Listing-like JSON-LD objects on a page (malformed blocks are skipped)."""
    found = []
    for block in sel.xpath('//script[contains(@type, "ld+json")]/text()').getall():
        text = block.strip().removeprefix("<!--").removesuffix("-->").strip()
        text = text.removeprefix("//<![CDATA[").removesuffix("//]]>").strip()
        try:
            data = json.loads(text)
        except ValueError:
            try:
                data = json.loads(re.sub(r",\s*([}\]])", r"\1", text))
            except ValueError:
                continue
        for obj in _walk(data):
            types = _types(obj)
            if types & SKIP_TYPES and not types & LISTING_TYPES:
                continue
            if types & LISTING_TYPES or (obj.get("identifier") and (obj.get("name") or obj.get("description"))):
                found.append(obj)
    return found


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):
        for key in ("value", "name", "@value", "text"):
            if value.get(key) is not None:
                return _text(value[key])
        return None
    if isinstance(value, list):
        parts = [t for t in (_text(v) for v in value) if t]
        return ", ".join(parts) if parts else None
    text = str(value).strip()
    return text or None


def _first(obj: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        node: Any = obj
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, list) and part != key.split(".")[-1]:
                node = node[0] if node else None
        if node not in (None, "", []):
            return node
    return None


def _images(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [u for v in value for u in _images(v)]
    if isinstance(value, dict):
        url = value.get("contentUrl") or value.get("url")
        return [str(url)] if url else []
    return [str(value)]


def _address(value: Any) -> str | None:
    if isinstance(value, dict):
        parts = [_text(value.get(k)) for k in ("addressLocality", "addressRegion", "addressCountry")]
        return ", ".join(p for p in parts if p) or _text(value.get("name"))
    return _text(value)


def listing_from_jsonld(obj: dict[str, Any], page_url: str) -> dict[str, Any]:
    """The raw listing dict of one JSON-LD object (mapping in the module docstring)."""
    props = {}
    for prop in obj.get("additionalProperty") or []:
        if isinstance(prop, dict) and prop.get("name"):
            props[str(prop["name"])] = prop.get("value")
    o = {**props, **obj}
    raw: dict[str, Any] = {}
    ident = _first(o, "identifier", "sku", "productID", "@id")
    raw["source_id"] = _text(ident)
    url = _first(o, "url")
    raw["url"] = urljoin(page_url, str(url)) if isinstance(url, str) else None
    kind = _text(_first(o, "kind", "homeward:kind"))
    if kind is None:
        category = _text(_first(o, "category"))
        kind = category if category and category.lower() in KIND_WORDS else None
    raw["kind"] = kind
    raw["status"] = _text(_first(o, "status", "homeward:status"))
    raw["species"] = _text(_first(o, "species", "animalType", "homeward:species"))
    raw["breed"] = _text(_first(o, "breed"))
    colors = _first(o, "color", "colour", "colors")
    raw["colors"] = [c for c in (_text(x) for x in colors) if c] if isinstance(colors, list) else _text(colors)
    raw["sex"] = _text(_first(o, "gender", "sex"))
    raw["age_text"] = _text(_first(o, "age", "ageText"))
    raw["age_group"] = _text(_first(o, "ageGroup"))
    raw["size"] = _text(_first(o, "size"))
    raw["name"] = _text(_first(o, "name"))
    raw["description"] = _text(_first(o, "description"))
    location = _first(o, "address", "location.address", "location.name", "contentLocation", "areaServed")
    raw["location_text"] = _address(location)
    lat = _first(o, "geo.latitude", "location.geo.latitude", "latitude")
    lon = _first(o, "geo.longitude", "location.geo.longitude", "longitude")
    raw["lat"], raw["lon"] = lat, lon
    raw["event_date"] = _text(_first(o, "eventDate", "dateLost", "dateFound", "foundDate", "startDate"))
    raw["posted_at"] = _text(_first(o, "datePosted", "datePublished", "dateCreated", "uploadDate"))
    raw["photo_urls"] = [urljoin(page_url, u) for u in _images(_first(o, "image", "photo"))]
    shelter = _first(o, "shelter", "seller", "provider", "offers.seller")
    if isinstance(shelter, dict):
        raw["shelter_id"] = _text(shelter.get("identifier"))
        raw["shelter_name"] = _text(shelter.get("name"))
    contact_keys = ("telephone", "email", "contactPoint.telephone", "contactPoint.email", "author.telephone")
    raw["contact"] = _text(_first(o, *contact_keys, "author.email"))
    raw["chip"] = _text(_first(o, "microchip", "chip", "chipNumber"))
    author = o.get("author")
    raw["author_name"] = _text(author.get("name")) if isinstance(author, dict) else None
    return {k: v for k, v in raw.items() if v not in (None, "", [])}


def select(response: Any, selector: str) -> list[str]:
    """All strings a CSS (default) or ``xpath:`` selector yields on ``response``."""
    if selector.startswith("xpath:"):
        return [s for s in response.xpath(selector[6:]).getall() if s is not None]
    return [s for s in response.css(selector).getall() if s is not None]


class ConfigurableSpider(ListingSpider):
    """Config-driven spider; the source entry is passed as ``config`` (JSON) or looked up by ``source``."""

    name = "configurable"

    def __init__(self, config: str | dict[str, Any] | None = None, source: str | None = None, **kwargs: Any) -> None:
        if isinstance(config, str):
            config = json.loads(config)
        if config is None and source:
            from crawlers.sources import get_source
            from engine.config import load_settings

            config = get_source(load_settings(), source)
        self.config: dict[str, Any] = dict(config or {})
        source = source or self.config.get("name") or self.name
        self.default_base_url = kwargs.pop("default_base_url", None) or self.config.get("base_url") or ""
        kwargs.setdefault("start_paths", self.config.get("start_paths") or ["/"])
        super().__init__(source=source, **kwargs)
        selectors = self.config.get("selectors") or {}
        self.cards_selector: str = selectors.get("cards") or DEFAULT_CARDS
        self.next_selector: str = selectors.get("next_page") or DEFAULT_NEXT
        self.field_selectors: dict[str, str] = dict(selectors.get("fields") or {})
        unknown = set(self.field_selectors) - set(RAW_KEYS)
        if unknown:
            raise ValueError(f"source {self.source!r}: selectors.fields has unknown fields {sorted(unknown)}")
        self.defaults: dict[str, Any] = dict(self.config.get("defaults") or {})
        self.use_jsonld: bool = bool(self.config.get("jsonld", True))
        pattern = self.config.get("card_url_pattern")
        self.card_pattern = re.compile(pattern) if pattern else None
        id_pattern = self.config.get("id_from_url")
        self.id_pattern = re.compile(id_pattern) if id_pattern else None
        self.card_urls: set[str] = set()

    # -- dispatch ------------------------------------------------------------------------------------------------

    def is_card(self, url: str) -> bool:
        if self.card_pattern is not None:
            return bool(self.card_pattern.search(url))
        return url in self.card_urls

    def parse_listing_page(self, response: Response) -> Iterable[Any]:
        if not isinstance(response, TextResponse):
            raise TypeError(f"not a text page ({response.headers.get('Content-Type', b'').decode(errors='replace')})")
        links = list(self._card_links(response))
        for href, fingerprint in links:
            url = self.absolute(response, href)
            if url is None:
                continue
            if self.card_pattern is None:
                self.card_urls.add(url)
            request = self.card_request(response, url, fingerprint=fingerprint)
            if request is not None:
                yield request
        for href in select(response, self.next_selector):
            request = self.page_request(response, href)
            if request is not None:
                yield request
        if not links and self._has_listing(response):
            yield from self.parse_card(response)

    def _card_links(self, response: TextResponse) -> Iterator[tuple[str, str | None]]:
        selector = self.cards_selector
        nodes = response.xpath(selector[6:]) if selector.startswith("xpath:") else response.css(selector)
        for node in nodes:
            root = node.root
            if isinstance(root, str):  # ::attr(href) / text() selectors give the link itself
                yield root, None
                continue
            href = node.attrib.get("href")
            if not href:
                continue
            parent = node.xpath("..")
            yield href, tile_fingerprint(parent[0] if parent else node)

    def _has_listing(self, response: TextResponse) -> bool:
        if self.use_jsonld and jsonld_objects(response.selector):
            return True
        sid = self.field_selectors.get("source_id")
        return bool(sid and select(response, sid))

    # -- cards ---------------------------------------------------------------------------------------------------

    def parse_card(self, response: Response) -> Iterable[Any]:
        if not isinstance(response, TextResponse):
            raise TypeError("card is not a text page")
        objects = jsonld_objects(response.selector) if self.use_jsonld else []
        raws = [listing_from_jsonld(obj, response.url) for obj in objects] or [{}]
        for raw in raws:
            for key, selector in self.field_selectors.items():
                values = [v.strip() for v in select(response, selector) if v and v.strip()]
                if not values:
                    continue
                if key == "photo_urls":
                    raw[key] = [urljoin(response.url, v) for v in values]
                elif key in LIST_FIELDS:
                    raw[key] = values
                else:
                    raw[key] = " ".join(values)
            for key, value in self.defaults.items():
                raw.setdefault(key, value)
            if not raw.get("source_id"):
                raw["source_id"] = self._id_from_url(response.url)
            if len(raw) <= 1 + len(self.defaults):  # nothing but an id (and defaults) came from the page
                continue
            yield self.listing_item(raw, response)

    def _id_from_url(self, url: str) -> str:
        if self.id_pattern is not None:
            m = self.id_pattern.search(url)
            if m:
                return m.group(1)
        parts = urlsplit(url)
        path = parts.path.rstrip("/")
        return (path.rsplit("/", 1)[-1].rsplit(".", 1)[0] or path or url) + (f"?{parts.query}" if parts.query else "")
