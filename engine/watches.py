"""Owners' saved searches (``homeward watch add|list|remove``): a photo, a place, a radius and an e-mail address.

A watch keeps the owner's photo as the search sees it — one unit vector per animal crop, from the configured
embedder (:func:`engine.search.embed_query`) — not the photo: after every match run :func:`due_alerts` searches the
found, sighting and shelter listings with those vectors exactly as ``homeward search`` does
(:func:`engine.search.search_vectors`: same scoring, same radius rule, listings without a place kept), and returns
each listing scoring at least the watch's threshold that its owner has not been sent yet (``watch_alerts``). The
delivery (:mod:`dashboards.alerts`) records what it sent, so each listing reaches an owner once.

Trade-offs: vectors of one embedder cannot be compared with another's, so when the profile's embedder changes a
watch cannot be searched until its owner adds it again with the photo; :func:`due_alerts` says so for that watch
(``model_changed``) rather than skipping it silently. Keeping vectors rather than the photo means no owner photo is
stored at all.

**Unsubscribe.** A watch's token is derived, not stored: ``HMAC-SHA256(salt, "homeward-unsubscribe:" + watch_id)``.
The table holds only its SHA-256, so the link in an alert works without a copy of the token in the database, a
leaked database does not give the links, and :func:`unsubscribe` finds the watch by one indexed lookup. Ending a
watch (``unsubscribe`` or ``homeward watch remove``) erases its e-mail address and keeps the row, inactive.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine import schema
from engine.config import Settings
from engine.errors import HomewardError
from engine.search import (
    QueryVectors,
    SearchHit,
    VectorModelMismatch,
    embed_query,
    parse_near,
    read_photo,
    search_vectors,
)
from engine.storage import RunsDB

#: One address, no display name, no header tricks: the whole value goes into a ``To:`` header.
_EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+")
_COLUMNS = "watch_id, email, species, lat, lon, radius_km, threshold, embed_model, language, created, active, ended"
#: A language code as people give it (``ru``, ``pt-BR``, ``zh_Hant``); the alerts use its catalogue, else English.
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(?:[_-][A-Za-z0-9]{2,8}){0,2}")


@dataclass(frozen=True)
class Watch:
    watch_id: str
    email: str
    species: str | None
    lat: float
    lon: float
    radius_km: float
    threshold: float
    embed_model: str
    language: str | None
    vectors: np.ndarray


def unsubscribe_token(settings: Settings, watch_id: str) -> str:
    msg = f"homeward-unsubscribe:{watch_id}".encode()
    return hmac.new(settings.salt.encode(), msg, hashlib.sha256).hexdigest()[:32]


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_language(language: str | None) -> str | None:
    """A language code kept as given (the delivery resolves it against the catalogues); None: English."""
    code = (language or "").strip()
    if not code:
        return None
    if not _LANGUAGE.fullmatch(code):
        raise HomewardError(f"--language must be a language code such as en or ru, got {language!r}")
    return code


def check_email(email: str) -> str:
    address = (email or "").strip()
    if not _EMAIL.fullmatch(address):
        raise HomewardError(f"--email must be one e-mail address (name@example.org), got {email!r}")
    return address


def add(
    settings: Settings,
    *,
    photo: str,
    near: str,
    radius_km: float,
    email: str,
    species: str | None = None,
    threshold: float | None = None,
    language: str | None = None,
) -> dict[str, Any]:
    """Save a search: after every match run, e-mail EMAIL the new found and shelter listings that look like PHOTO.

    Args:
        photo: photo of the lost pet
        near: where it was lost (LAT,LON, or a place as homeward search accepts it)
        radius_km: only listings within this distance of --near (listings without a place are kept)
        email: the owner's address for the alerts
        species: dog or cat (default: what the detector sees)
        threshold: minimum score of a listing to e-mail (default: report.alert_threshold)
        language: language of the alerts, e.g. ru (default: English; one without a catalogue gets English)
    """
    image = read_photo(photo)
    checked = dict(near=near, radius_km=radius_km, email=email, species=species, threshold=threshold, language=language)
    return save(settings, new_watch(settings, image, **checked))


@dataclass(frozen=True)
class NewWatch:
    """A checked watch with its photo embedded, not yet saved (:func:`save`)."""

    email: str
    species: str | None
    where: tuple[float, float]
    radius_km: float
    threshold: float
    query: QueryVectors
    language: str | None = None


def new_watch(
    settings: Settings,
    image: Any,
    *,
    near: str,
    radius_km: float,
    email: str,
    species: str | None = None,
    threshold: float | None = None,
    language: str | None = None,
) -> NewWatch:
    """Check a watch's fields and embed its photo (the models' work; nothing is written)."""
    address = check_email(email)
    where = parse_near(near)
    if where is None:
        raise HomewardError("watch add needs --near: where the pet was lost")
    if not radius_km or radius_km <= 0:
        raise HomewardError(f"--radius-km must be > 0, got {radius_km!r}")
    score = settings.report.alert_threshold if threshold is None else float(threshold)
    if not 0 <= score <= 1:
        raise HomewardError(f"--threshold is a score between 0 and 1, got {threshold!r}")
    lang = check_language(language)
    query = embed_query(settings, image, species)
    kept_species = species or (query.species if query.species in ("dog", "cat") else None)
    return NewWatch(address, kept_species, where, float(radius_km), score, query, lang)


def save(settings: Settings, watch: NewWatch) -> dict[str, Any]:
    """Insert a checked watch (one short DuckDB write); returns what ``homeward watch add`` prints."""
    query = watch.query
    watch_id = "w-" + secrets.token_hex(6)
    created = dt.datetime.now(dt.UTC)
    with RunsDB(settings.duckdb).write() as con:
        con.execute(
            "INSERT INTO watches (watch_id, email, species, lat, lon, radius_km, threshold, embed_model, language, "
            "vectors, created, unsubscribe_hash, active) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, TRUE)",
            [
                watch_id,
                watch.email,
                watch.species,
                watch.where[0],
                watch.where[1],
                watch.radius_km,
                watch.threshold,
                query.model,
                watch.language,
                query.vectors.tolist(),
                created,
                _token_hash(unsubscribe_token(settings, watch_id)),
            ],
        )
    out: dict[str, Any] = {"watch_id": watch_id, "email": watch.email, "model": query.model,
                           "threshold": watch.threshold, "language": watch.language}  # fmt: skip
    out.update(species=query.species, crops=int(query.vectors.shape[0]), fallback_full_frame=query.fallback_full_frame)
    return out


def list_watches(settings: Settings, *, all: bool = False) -> dict[str, Any]:
    """The saved searches (active ones; --all: ended ones too), newest first.

    Args:
        all: include watches that were removed or unsubscribed
    """
    where = "" if all else "WHERE active"
    with RunsDB(settings.duckdb).read() as con:
        cur = con.execute(
            f"SELECT {_COLUMNS}, (SELECT count(*) FROM watch_alerts a WHERE a.watch_id = w.watch_id) AS alerts_sent "
            f"FROM watches w {where} ORDER BY created DESC, watch_id"
        )
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    return {"watches": rows, "count": len(rows)}


def _end(settings: Settings, where: str, value: str) -> str | None:
    """Deactivate the watch matching ``where`` and erase its address; its id, or None when none matched."""
    with RunsDB(settings.duckdb).write() as con:
        got = con.execute(f"SELECT watch_id FROM watches WHERE {where} = ?", [value]).fetchone()
        if got is None:
            return None
        con.execute(
            "UPDATE watches SET active = FALSE, email = '', ended = coalesce(ended, ?) WHERE watch_id = ?",
            [dt.datetime.now(dt.UTC), got[0]],
        )
    return got[0]


def remove(settings: Settings, watch_id: str) -> dict[str, Any]:
    """End a saved search: no more alerts, and its e-mail address is erased."""
    if _end(settings, "watch_id", watch_id) is None:
        raise HomewardError(f"no watch {watch_id!r} (see `homeward watch list --all`)")
    return {"watch_id": watch_id, "active": False}


def unsubscribe(settings: Settings, token: str) -> bool:
    """End the watch whose unsubscribe link carries ``token``; False when the token names no watch."""
    if not token or len(token) > 128:
        return False
    return _end(settings, "unsubscribe_hash", _token_hash(token)) is not None


def active(settings: Settings) -> list[Watch]:
    with RunsDB(settings.duckdb).read() as con:
        rows = con.execute(
            "SELECT watch_id, email, species, lat, lon, radius_km, threshold, embed_model, language, vectors "
            "FROM watches WHERE active ORDER BY created, watch_id"
        ).fetchall()
    return [Watch(*r[:9], vectors=np.asarray(r[9], dtype=np.float32)) for r in rows]


def due_alerts(settings: Settings, watch: Watch, limit: int) -> tuple[list[SearchHit], str | None]:
    """Up to ``limit`` found/shelter listings scoring at least the watch's threshold that its owner was not sent yet,
    best first; and why none could be searched (``model_changed: …``), else None."""
    with RunsDB(settings.duckdb).read() as con:
        got = con.execute("SELECT listing_id FROM watch_alerts WHERE watch_id = ?", [watch.watch_id]).fetchall()
    sent = {r[0] for r in got}
    query = QueryVectors(watch.embed_model, watch.species or "unknown", watch.vectors, [], False)
    try:
        result = search_vectors(
            settings,
            query,
            species=watch.species,
            near=(watch.lat, watch.lon),
            radius_km=watch.radius_km,
            k=len(sent) + limit,
            kinds=schema.FOUND_KINDS,
        )
    except VectorModelMismatch:
        return [], f"model_changed: the watch was saved with {watch.embed_model!r}; add it again with the photo"
    hits = [h for h in result.results if h.score >= watch.threshold and h.listing_id not in sent]
    return hits[:limit], None


def record_alerts(settings: Settings, watch_id: str, hits: list[SearchHit], run_id: str | None) -> None:
    """The listings an alert e-mail carried: never sent to this watch again."""
    at = dt.datetime.now(dt.UTC)
    with RunsDB(settings.duckdb).write() as con:
        con.executemany(
            "INSERT INTO watch_alerts (watch_id, listing_id, score, run_id, sent_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            [[watch_id, h.listing_id, h.score, run_id, at] for h in hits],
        )
