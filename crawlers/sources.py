"""The sources config: which sites Homeward crawls, with which spider, how often.

The built-in list is ``crawlers/sources.yaml``; ``settings.crawl.sources_file`` (YAML, same format) adds sources or
overrides built-in ones key by key (an entry with the name of a built-in source changes only the keys it gives —
``{name: pet911, enabled: false}`` switches pet911 off). Format::

    sources:
      - name: demo                    # required, unique: the source name stamped on every listing
        spider: configurable          # required: a spider name in crawlers/spiders (configurable = config-driven)
        base_url: http://127.0.0.1:8000
        start_paths: [/catalog/1.html]   # catalog/API paths under base_url (default: the spider's own)
        cadence_minutes: 60           # how often `homeward schedule` runs it (default 1440)
        enabled: true                 # crawled by `homeward crawl` without --source and by `schedule`
        max_pages: 0                  # stop after N pages (0: no limit)
        phone_region: US              # where phones without a +country code are read first (ISO code; default RU)
        language: ru                  # the language of this source's shelter reports (default en)
        country: US                   # where its places are: settles ambiguous town names (ISO code; default none)
        timezone: America/Chicago     # dates and times without an offset are read here (IANA name; default UTC)
        shelters: {SEAS: "Seattle, WA", "Humane Society": "47.61,-122.33"}  # shelter id or name -> place or LAT,LON
        recheck_hours: 168            # re-check stored cards this old (conditional GET); 0 = every crawl
        concurrency_per_domain: 2     # politeness overrides for this source only
        download_delay_s: 0.5
        scrapy_settings: {}           # raw Scrapy settings for this source (rarely needed)
        # configurable spider only (see crawlers/spiders/configurable.py):
        jsonld: true
        card_url_pattern: "/pets/[^/]+\\.html$"
        selectors: {cards: "a.card", next_page: "link[rel=next]::attr(href)", fields: {name: "h1::text"}}
        defaults: {kind: found, species: dog}
        id_from_url: "/pets/([^/.]+)"

An unknown key, a missing name or spider, or a bad cadence raises :class:`SourceError` naming the source and the
key, so a typo never silently disables a source.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from engine import phones
from engine.errors import HomewardError

DEFAULT_CADENCE_MINUTES = 1440

KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "spider": str,
    "base_url": str,
    "start_paths": list,
    "cadence_minutes": (int, float),
    "enabled": bool,
    "max_pages": int,
    "recheck_hours": (int, float),
    "concurrency_per_domain": int,
    "download_delay_s": (int, float),
    "scrapy_settings": dict,
    "description": str,
    "jsonld": bool,
    "card_url_pattern": str,
    "selectors": dict,
    "defaults": dict,
    "id_from_url": str,
    "phone_region": str,
    "language": str,  # what its shelters read: their report e-mails' language (engine.source_settings)
    "country": str,
    "timezone": str,
    "shelters": dict,
}
SELECTOR_KEYS = ("cards", "next_page", "fields")


class SourceError(HomewardError, ValueError):
    """A bad or unknown source; the message names the source, the key and the file."""


def _read(path: Path | str, origin: str) -> list[dict[str, Any]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SourceError(f"cannot read sources file {str(path)!r}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise SourceError(f"sources file {str(path)!r} is not valid YAML: {exc}") from exc
    entries = data.get("sources") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise SourceError(f"sources file {origin} must hold a list under 'sources:'")
    for entry in entries:
        if not isinstance(entry, dict) or not entry.get("name"):
            raise SourceError(f"every source in {origin} needs a 'name' (got {entry!r})")
    return entries


def _check(entry: dict[str, Any], origin: str) -> dict[str, Any]:
    name = entry.get("name")
    for key, value in entry.items():
        if key not in KEYS:
            raise SourceError(f"source {name!r} ({origin}): unknown key {key!r}; known keys: {', '.join(sorted(KEYS))}")
        wrong_type = value is not None and not isinstance(value, KEYS[key])
        if wrong_type or (isinstance(value, bool) and KEYS[key] is not bool):
            raise SourceError(f"source {name!r} ({origin}): key {key!r} has a bad value {value!r}")
    if not entry.get("spider"):
        raise SourceError(f"source {name!r} ({origin}) needs a 'spider'")
    cadence = entry.get("cadence_minutes", DEFAULT_CADENCE_MINUTES)
    if cadence is None or cadence <= 0:
        raise SourceError(f"source {name!r} ({origin}): cadence_minutes must be > 0, got {cadence!r}")
    try:
        phones.regions(entry.get("phone_region"))
    except ValueError as exc:
        raise SourceError(f"source {name!r} ({origin}): {exc}") from exc
    _check_places(entry, name, origin)
    for key in entry.get("selectors") or {}:
        if key not in SELECTOR_KEYS:
            raise SourceError(f"source {name!r} ({origin}): unknown selectors key {key!r} (known: {SELECTOR_KEYS})")
    out = {
        "start_paths": None,
        "base_url": None,
        "cadence_minutes": DEFAULT_CADENCE_MINUTES,
        "enabled": True,
        "max_pages": 0,
        **entry,
    }
    return out


def _check_places(entry: dict[str, Any], name: Any, origin: str) -> None:
    country, tz = entry.get("country"), entry.get("timezone")
    if country is not None and not re.fullmatch(r"[A-Za-z]{2}", country):
        raise SourceError(f"source {name!r} ({origin}): country must be an ISO 3166 code such as US, got {country!r}")
    if tz is not None:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise SourceError(
                f"source {name!r} ({origin}): unknown timezone {tz!r} (an IANA name such as Europe/Moscow)"
            ) from exc
    for key, value in (entry.get("shelters") or {}).items():
        if not isinstance(value, str) or not str(key).strip():
            raise SourceError(f"source {name!r} ({origin}): shelters entry {key!r} must map to a place text")


def load_sources(settings: Any = None) -> dict[str, dict[str, Any]]:
    """All sources by name: the built-in list, then ``settings.crawl.sources_file`` over it."""
    builtin = resources.files("crawlers").joinpath("sources.yaml")
    merged: dict[str, dict[str, Any]] = {}
    origins: dict[str, str] = {}
    for entry in _read(str(builtin), "crawlers/sources.yaml"):
        merged[entry["name"]] = dict(entry)
        origins[entry["name"]] = "crawlers/sources.yaml"
    extra = getattr(getattr(settings, "crawl", None), "sources_file", None)
    if extra:
        for entry in _read(extra, extra):
            merged[entry["name"]] = {**merged.get(entry["name"], {}), **entry}
            origins[entry["name"]] = extra
    return {name: _check(entry, origins[name]) for name, entry in merged.items()}


def get_source(settings: Any, name: str) -> dict[str, Any]:
    sources = load_sources(settings)
    if name not in sources:
        raise SourceError(f"unknown source {name!r}; known sources: {', '.join(sorted(sources)) or '(none)'}")
    return sources[name]
