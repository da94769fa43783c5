"""Photos for reports and the dashboard: looked up by photo id in LanceDB ``photos``, read from the PhotoStore,
downscaled and re-encoded without any metadata.

Nothing here ever fetches a photo's original remote URL: only what the crawl stored is shown. Thumbnails are fresh
JPEG encodes of the pixels (EXIF orientation applied first, then no EXIF, ICC, XMP or comment is written), so GPS
tags and camera serials in a stranger's upload never travel on.
"""

from __future__ import annotations

import base64
import io
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from PIL import Image, ImageOps

from engine.storage import LanceStore, read_uri

log = logging.getLogger(__name__)

PHOTO_ID = re.compile(r"^[0-9a-f]{64}$")
MAX_SOURCE_PIXELS = 80_000_000


def thumbnail(data: bytes, max_side: int = 320, quality: int = 82) -> bytes:
    """A JPEG no larger than ``max_side`` on its longest side, upright, in RGB, with no metadata at all."""
    with Image.open(io.BytesIO(data)) as img:
        if img.width * img.height > MAX_SOURCE_PIXELS and img.format != "JPEG":
            raise ValueError(f"photo of {img.width}x{img.height} pixels is too large to thumbnail")
        img.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale, never the full-size buffer
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "P"):
            img = img.convert("RGBA")
            flat = Image.new("RGB", img.size, (255, 255, 255))
            flat.paste(img, mask=img.getchannel("A"))
            img = flat
        else:
            img = img.convert("RGB")
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        # Copy the pixels into a new image so no info (exif, icc_profile, comment) can ride along.
        clean = Image.new("RGB", img.size)
        clean.paste(img)
    out = io.BytesIO()
    clean.save(out, "JPEG", quality=quality, optimize=True)
    return out.getvalue()


def read_stored(uri: str, storage_options: dict[str, str] | None = None) -> bytes:
    """The bytes the PhotoStore holds at ``uri`` (local path or fsspec URI, as ``PhotoStore.get``)."""
    return read_uri(uri, storage_options)


def data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


class PhotoLookup:
    """Photo id → stored bytes, through LanceDB ``photos`` (uri) and the PhotoStore; thumbnails cached in memory."""

    def __init__(self, settings: Any, cache_items: int = 512) -> None:
        self.settings = settings
        self._lance: LanceStore | None = None
        self._cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._cache_items = cache_items
        self._lock = threading.Lock()

    @property
    def lance(self) -> LanceStore:
        if self._lance is None:
            self._lance = LanceStore(self.settings.lance, self.settings.storage_options)
        return self._lance

    def uris(self, photo_ids: Iterable[str]) -> dict[str, str]:
        """The stored uri of each known, successfully fetched photo id (unknown or malformed ids are left out)."""
        wanted = sorted({p for p in photo_ids if p and PHOTO_ID.match(p)})
        if not wanted:
            return {}
        found: dict[str, str] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            where = "photo_id IN (" + ", ".join(f"'{p}'" for p in chunk) + ") AND uri IS NOT NULL"
            try:
                table = self.lance.read("photos", where=where, columns=["photo_id", "uri", "status"])
            except Exception as exc:
                log.warning("cannot read LanceDB photos at %s: %s", self.settings.lance, exc)
                return found
            if table.num_rows == 0:
                continue
            for row in table.to_pylist():
                if row.get("status") in (None, "ok"):
                    found.setdefault(row["photo_id"], row["uri"])
        return found

    def thumbnail(self, photo_id: str, max_side: int = 320, uri: str | None = None) -> bytes | None:
        """The EXIF-free thumbnail of ``photo_id``, or ``None`` when it is unknown or unreadable (logged)."""
        key = (photo_id, max_side)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        if uri is None:
            uri = self.uris([photo_id]).get(photo_id)
        if uri is None:
            return None
        try:
            thumb = thumbnail(read_stored(uri, self.settings.storage_options), max_side)
        except Exception as exc:
            log.warning("photo %s (%s) cannot be shown: %s", photo_id, uri, exc)
            return None
        with self._lock:
            self._cache[key] = thumb
            while len(self._cache) > self._cache_items:
                self._cache.popitem(last=False)
        return thumb

    def thumbnails(self, photo_ids: Iterable[str], max_side: int = 320) -> dict[str, bytes]:
        ids = [p for p in photo_ids if p]
        uris = self.uris(ids)
        out = {}
        for pid, uri in uris.items():
            thumb = self.thumbnail(pid, max_side, uri=uri)
            if thumb is not None:
                out[pid] = thumb
        return out
