"""PetHarbor stray-intake pages (``http://www.petharbor.com/pet.asp?uaid=<SHELTER>.<ANIMAL_ID>``).

The page describes the animal in sentences (saved page: Austin Animal Center, ``ASTN.A726220``)::

    This CAT - ID#A726220
    I am a brown tabby, spayed female, who looks like a  Domestic Shorthair mix.
    I am estimated to be 1 year and 6 months old.
    I have been at the shelter since May 08, 2016.
    For more information about this animal, call: <a href=site.asp?ID=ASTN>Austin Animal Center</a> at (512) 978-0500

and shows one photo, ``get_image.asp?RES=Detail&ID=<ANIMAL_ID>&LOCATION=<SHELTER>``. A stray at the shelter is
kind ``shelter``; the intake date is the event date.

Search-result pages (``results.asp``) link animals as ``pet.asp?uaid=…``; :func:`parse_catalog` collects them and the
"next page" link.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

from crawlers.parsers import ParseError, absolute_url, clean_text, html_selector, iso_date, node_text, unique

SITE = "http://www.petharbor.com"
_UAID_RE = re.compile(r"uaid=([A-Za-z0-9]+)\.([A-Za-z0-9]+)", re.I)
_THIS_RE = re.compile(r"This\s+([A-Za-z ]+?)\s*-\s*ID#\s*([A-Za-z0-9]+)", re.I)
_LOOKS_RE = re.compile(r"I am an? (.+?), (.+?), who looks like an?\s+(.+?)\.", re.I | re.S)
_AGE_RE = re.compile(r"estimated to be (.+?) old", re.I)
_SINCE_RE = re.compile(r"at the shelter since ([A-Za-z]+\.? \d{1,2},? \d{4})", re.I)
_FOUND_RE = re.compile(r"(?:found|picked up) (?:at|near|on|in) (.+?)(?:\.|$)", re.I)
_PHONE_RE = re.compile(r"\(?\d{3}\)?[\s.-]*\d{3}[\s.-]*\d{4}")


def is_card_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.path.lower().endswith("/pet.asp") and bool(parse_qs(parts.query).get("uaid"))


def parse_card(text: str, url: str = f"{SITE}/pet.asp") -> dict[str, Any]:
    sel = html_selector(text, "PetHarbor page")
    desc_cell = sel.css("td.DetailDesc")[:1]
    body_text = node_text(desc_cell, sep="\n") if desc_cell else None
    if not body_text:
        raise ParseError("no PetHarbor animal description (td.DetailDesc) found")
    title = node_text(sel.css("title")[:1]) or ""
    m_uaid = _UAID_RE.search(title) or _UAID_RE.search(url or "") or _UAID_RE.search(str(text))
    m_this = _THIS_RE.search(body_text)
    if not m_this and not m_uaid:
        raise ParseError("no PetHarbor animal id found")
    shelter_code = m_uaid.group(1).upper() if m_uaid else None
    animal_id = (m_this.group(2) if m_this else m_uaid.group(2)).upper()  # type: ignore[union-attr]
    warnings: list[str] = []
    flat = re.sub(r"\s+", " ", body_text)
    looks = _LOOKS_RE.search(flat)
    color, sex, breed = (looks.group(1), looks.group(2), looks.group(3)) if looks else (None, None, None)
    if breed:
        breed = re.sub(r"\s+mix$", " Mix", breed.strip(), flags=re.I)
    if not looks:
        warnings.append("description: no 'I am a …, who looks like …' sentence")
    age = _AGE_RE.search(flat)
    since = _SINCE_RE.search(flat)
    if not since:
        warnings.append("event_date: no intake date")
    found = _FOUND_RE.search(flat)
    site_link = sel.xpath("//a[contains(translate(@href,'SITE','site'),'site.asp')]")[:1]
    shelter_name = node_text(site_link)
    contact_cell = node_text(site_link.xpath("ancestor::td[1]")) if site_link else None
    phone = _PHONE_RE.search(contact_cell or "")
    photos = [
        absolute_url(url or SITE, src)
        for src in sel.xpath("//img/@src").getall()
        if "get_image.asp" in src.lower() or "getimage.asp" in src.lower()
    ]
    canonical = f"{SITE}/pet.asp?uaid={shelter_code}.{animal_id}" if shelter_code else url
    raw: dict[str, Any] = {
        "source_id": f"{shelter_code}.{animal_id}" if shelter_code else animal_id,
        "url": canonical,
        "kind": "shelter",
        "status": "active",
        "species": m_this.group(1).strip().lower() if m_this else None,
        "breed": clean_text(breed),
        "colors": clean_text(color),
        "sex": clean_text(sex),
        "age_text": clean_text(age.group(1)) if age else None,
        "description": clean_text(flat),
        "location_text": clean_text(found.group(1)) if found else shelter_name,
        "event_date": iso_date(since.group(1)) if since else None,
        "shelter_id": shelter_code,
        "shelter_name": shelter_name,
        "photo_urls": unique(photos),
        "contact": phone.group(0) if phone else None,
    }
    if not raw["photo_urls"]:
        warnings.append("photo_urls: no photo")
    if warnings:
        raw["parse_warnings"] = warnings
    return raw


def parse_catalog(text: str, url: str = f"{SITE}/results.asp") -> tuple[list[str], list[str]]:
    """A PetHarbor search-results page → (animal page URLs, next page URLs)."""
    sel = html_selector(text, "PetHarbor results page")
    cards = [u for u in unique(absolute_url(url, h) for h in sel.xpath("//a/@href").getall()) if is_card_url(u)]
    nxt = [
        a.attrib.get("href") for a in sel.xpath("//a") if re.match(r"\s*(next|следующая)\b", node_text(a) or "", re.I)
    ]
    pages = [u for u in unique(absolute_url(url, h) for h in nxt) if u and not is_card_url(u)]
    if not cards and not pages:
        raise ParseError("no PetHarbor animal links found")
    return cards, pages
