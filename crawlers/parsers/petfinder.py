"""Petfinder API v2 (JSON): animals → adoptable listings, organizations → shelters.

Endpoints (relative to ``https://api.petfinder.com``):

* ``POST /v2/oauth2/token`` (client credentials) → ``{"token_type": "Bearer", "expires_in": 3600, "access_token": …}``
* ``GET /v2/animals?limit=…&page=…`` → ``{"animals": [...], "pagination": {"_links": {"next": {"href": …}}}}``
* ``GET /v2/animals/{id}`` → ``{"animal": {...}}``
* ``GET /v2/organizations?limit=…&page=…`` → ``{"organizations": [...], "pagination": …}``;
  ``GET /v2/organizations/{id}`` → ``{"organization": {...}}``

An animal becomes a listing of kind ``adoptable`` with ``shelter_id`` = its ``organization_id``; every photo's
``full`` size (else ``large``/``medium``/``small``) is kept. An organization becomes a shelter record
(``shelter_id``, ``shelter_name``, city, state, country, url).
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urljoin, urlsplit

from crawlers.parsers import ParseError, absolute_url, clean_text, unique

API = "https://api.petfinder.com"
TOKEN_PATH = "/v2/oauth2/token"
_ANIMAL_PATH_RE = re.compile(r"^/v2/animals/(\d+)/?$")
_PHOTO_SIZES = ("full", "large", "medium", "small")


def is_animal_url(url: str) -> bool:
    """``/v2/animals/{id}``: one animal (a "card")."""
    return bool(_ANIMAL_PATH_RE.match(urlsplit(url).path))


def _load(text: str | bytes, what: str) -> dict[str, Any]:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if text is None or not str(text).strip():
        raise ParseError(f"empty {what}")
    try:
        data = json.loads(str(text).lstrip("\ufeff"))
    except json.JSONDecodeError as exc:
        raise ParseError(f"truncated or invalid JSON in {what}: {exc.msg} at char {exc.pos}") from exc
    if not isinstance(data, dict):
        raise ParseError(f"{what} is not a JSON object")
    return data


def parse_token(text: str | bytes) -> tuple[str, float]:
    """The OAuth token response → ``(access_token, expires_in_seconds)``."""
    data = _load(text, "token response")
    token = data.get("access_token")
    if not token or not isinstance(token, str):
        raise ParseError("token response has no access_token")
    return token, float(data.get("expires_in") or 3600)


def _colors(colors: Any) -> list[str]:
    if not isinstance(colors, dict):
        return []
    return [str(colors[k]) for k in ("primary", "secondary", "tertiary") if colors.get(k)]


def _breed(breeds: Any) -> str | None:
    if not isinstance(breeds, dict):
        return None
    if breeds.get("unknown") and not breeds.get("primary"):
        return None
    names = [b for b in (breeds.get("primary"), breeds.get("secondary")) if b]
    if not names:
        return None
    text = " / ".join(names)
    return f"{text} Mix" if breeds.get("mixed") and "mix" not in text.lower() else text


def _address(addr: Any) -> str | None:
    if not isinstance(addr, dict):
        return None
    city = (addr.get("city") or "").strip()
    city = city.title() if city.isupper() or city.islower() else city
    parts = [city, addr.get("state"), addr.get("postcode"), addr.get("country")]
    return ", ".join(str(p).strip() for p in parts if p and str(p).strip()) or None


def parse_animal(animal: dict[str, Any], url: str = API) -> dict[str, Any]:
    """One API animal object → raw listing dict (kind ``adoptable``)."""
    if not isinstance(animal, dict) or not animal.get("id"):
        raise ParseError("animal record has no id")
    warnings: list[str] = []
    photos = []
    for photo in animal.get("photos") or []:
        if isinstance(photo, dict):
            best = next((photo[s] for s in _PHOTO_SIZES if photo.get(s)), None)
            photos.append(absolute_url(url, best))
    photos = unique(photos)
    contact = animal.get("contact") if isinstance(animal.get("contact"), dict) else {}
    contact_text = ", ".join(str(contact[k]) for k in ("email", "phone") if contact.get(k)) or None
    status = str(animal.get("status") or "adoptable").lower()
    description = clean_text(animal.get("description"))
    if not description:
        warnings.append("description: no description")
    if not photos:
        warnings.append("photo_urls: no photos")
    tags = ", ".join(str(t) for t in animal.get("tags") or [] if t)
    raw: dict[str, Any] = {
        "source_id": str(animal["id"]),
        "url": animal.get("url") or urljoin(API, f"/v2/animals/{animal['id']}"),
        "kind": "adoptable",
        "status": {"adoptable": "active", "adopted": "resolved", "found": "resolved"}.get(status, status),
        "species": animal.get("species") or animal.get("type"),
        "breed": _breed(animal.get("breeds")),
        "colors": _colors(animal.get("colors")),
        "sex": animal.get("gender"),
        "age_group": animal.get("age"),
        "size": animal.get("size"),
        "name": clean_text(animal.get("name")),
        "description": clean_text(f"{description}\nTags: {tags}") if description and tags else description,
        "location_text": _address(contact.get("address")),
        "posted_at": animal.get("published_at"),
        "event_date": animal.get("published_at"),
        "shelter_id": str(animal["organization_id"]) if animal.get("organization_id") else None,
        "photo_urls": photos,
        "contact": contact_text,
    }
    if not raw["shelter_id"]:
        warnings.append("shelter_id: animal has no organization_id")
    if warnings:
        raw["parse_warnings"] = warnings
    return raw


def next_pages(data: dict[str, Any], url: str) -> list[str]:
    """``pagination._links.next.href`` as an absolute URL (empty on the last page)."""
    pagination = data.get("pagination") if isinstance(data.get("pagination"), dict) else {}
    links = pagination.get("_links") if isinstance(pagination.get("_links"), dict) else {}
    nxt = links.get("next") if isinstance(links.get("next"), dict) else {}
    href = absolute_url(url, nxt.get("href"))
    return [href] if href else []


def parse_animals(text: str | bytes, url: str = f"{API}/v2/animals") -> tuple[list[dict[str, Any]], list[str]]:
    """An ``/v2/animals`` page → (raw listing dicts, next page URLs). A record that cannot be read is skipped."""
    data = _load(text, "animals page")
    if not isinstance(data.get("animals"), list):
        raise ParseError("JSON is not a Petfinder animals page (no 'animals' array)")
    out = [parse_animal(a, url) for a in data["animals"] if isinstance(a, dict) and a.get("id")]
    return out, next_pages(data, url)


def parse_card(text: str | bytes, url: str = API) -> dict[str, Any]:
    """``GET /v2/animals/{id}`` (``{"animal": {...}}``) → raw listing dict."""
    data = _load(text, "animal response")
    if isinstance(data.get("animal"), dict):
        return parse_animal(data["animal"], url)
    if isinstance(data.get("animals"), list):
        raise ParseError("an animals page, not one animal (use parse_animals)")
    raise ParseError("JSON is not a Petfinder animal (no 'animal' object)")


def parse_catalog(text: str | bytes, url: str = f"{API}/v2/animals") -> tuple[list[str], list[str]]:
    """List pages hold whole records, so there are no card URLs to follow: ``([], next_pages)``."""
    _, pages = parse_animals(text, url)
    return [], pages


def parse_organization(org: dict[str, Any], url: str = API) -> dict[str, Any]:
    """One API organization → shelter record."""
    if not isinstance(org, dict) or not org.get("id") or not org.get("name"):
        raise ParseError("organization record has no id or name")
    addr = org.get("address") if isinstance(org.get("address"), dict) else {}
    return {
        "shelter_id": str(org["id"]),
        "shelter_name": clean_text(org["name"]),
        "city": clean_text(addr.get("city")),
        "state": addr.get("state"),
        "country": addr.get("country"),
        "location_text": _address(addr),
        "url": org.get("url") or org.get("website"),
        "email": org.get("email"),
    }


def parse_organizations(
    text: str | bytes, url: str = f"{API}/v2/organizations"
) -> tuple[list[dict[str, Any]], list[str]]:
    """An ``/v2/organizations`` page (or ``/v2/organizations/{id}``) → (shelter records, next page URLs)."""
    data = _load(text, "organizations page")
    if isinstance(data.get("organization"), dict):
        return [parse_organization(data["organization"], url)], []
    if not isinstance(data.get("organizations"), list):
        raise ParseError("JSON is not a Petfinder organizations page (no 'organizations' array)")
    out = [parse_organization(o, url) for o in data["organizations"] if isinstance(o, dict) and o.get("id")]
    return out, next_pages(data, url)
