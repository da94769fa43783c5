"""Stable identifiers: the same listing or photo gets the same id on every crawl and every machine."""

from __future__ import annotations

import hashlib
import hmac


def listing_id(source: str, source_id: str) -> str:
    """A listing's id: the first 16 bytes of sha256 over ``source`` and ``source_id`` (hex)."""
    return hashlib.sha256(f"{source}\x1f{source_id}".encode()).hexdigest()[:32]


def photo_id(data: bytes) -> str:
    """A photo's id: sha256 of its stored bytes, so the same image from two posts is stored once."""
    return hashlib.sha256(data).hexdigest()


def salted_hash(value: str, salt: str) -> str:
    """Keyed hash for contacts and chip numbers: equal values still join, the raw value is never stored."""
    normalised = "".join(ch for ch in value.lower() if ch.isalnum() or ch in "@.+")
    return hmac.new(salt.encode(), normalised.encode(), hashlib.sha256).hexdigest()[:32]


def content_hash(*parts: object) -> str:
    """Hash of a listing's meaningful content, to tell a changed card from an unchanged one."""
    h = hashlib.sha256()
    for part in parts:
        h.update(repr(part).encode())
        h.update(b"\x1f")
    return h.hexdigest()[:32]


def photo_key(listing_id: str, source_url: str) -> str:
    """A photo row's key: one row per (listing, photo URL), known before (and whether or not) the download works."""
    return hashlib.sha256(f"{listing_id}\x1f{source_url}".encode()).hexdigest()[:32]
