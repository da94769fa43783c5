"""Stage 5, photos: download, check, strip and store every photo of a listing; one ``photos`` row per URL.

Downloads go through Scrapy's own downloader (``engine.download_async``), so a photo request gets exactly the
politeness of a page: robots.txt, the identifying User-Agent, AutoThrottle, the per-domain concurrency limit, the
http(s)-only middleware, the address guard, retries and timeouts. Redirects are followed, at most 5 hops, each hop
a new request through the same middlewares. The size limit is ``crawl.max_image_mb`` (per request
``download_maxsize``: a larger body is cancelled while it streams, or before it starts when ``Content-Length``
says so).

Each download is checked, in order, and a failure becomes a row with ``status = failed`` and ``error`` =

* ``http_<code>``, ``timeout``, ``dns_error``, ``connection_refused``, ``robots_disallowed`` … — the download failed;
* ``blocked_address`` — the URL, or a hop of its redirects, points at a loopback, private or other non-public
  address (:class:`crawlers.middlewares.AddressGuard`); ``redirect_loop`` — more than 5 redirect hops;
* ``too_large`` — over ``max_image_mb`` bytes or ``max_image_pixels`` pixels, or a decompression bomb (a small
  lossless file that declares a huge picture, :func:`engine.images.refuse_bomb`), refused from the header before
  any pixel is decoded;
* ``not_an_image`` — the bytes are not JPEG/PNG/GIF/WebP/BMP/TIFF by their magic numbers (an HTML error page
  served as ``.jpg``);
* ``corrupt_image`` — the magic says image but Pillow cannot decode every pixel (truncated or damaged), or raises
  anything at all on it.

A good photo is stored **without metadata**: EXIF (GPS position, camera serial, owner name), XMP, IPTC and
comments are removed. A JPEG that needs no rotation keeps its compressed data untouched (the metadata segments are
cut out, no re-encoding loss); a JPEG with an EXIF orientation is rotated upright and re-encoded; every other format
is re-encoded as PNG (lossless). The result goes to :class:`engine.storage.PhotoStore`, content-addressed by the
sha256 of the stored bytes (``photo_id``). ``photo_key`` = :func:`engine.ids.photo_key` (listing_id, source URL),
so a failed download still has its row and a rerun updates that row in place.

A rerun never downloads a photo whose row is already ``ok`` (it reuses its ``photo_id``); a failed one is retried.
The item leaves this stage with ``photo_ids`` (the ok photos, in page order) and ``photos`` (the rows to write).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import struct
import warnings
from datetime import UTC, datetime
from typing import Any

from PIL import Image, ImageOps
from scrapy import Request
from scrapy.utils.defer import maybe_deferred_to_future
from scrapy.utils.reactor import is_asyncio_reactor_installed
from twisted.internet import threads

from crawlers.addresses import BLOCKED_REASON
from crawlers.items import ListingItem
from crawlers.pipelines import Stage
from crawlers.spiders.base import failure_reason
from crawlers.state import lance_store, photo_store
from engine import ids
from engine.images import ImageError, open_bounded

log = logging.getLogger(__name__)

#: Reasons that a later crawl will not fix (the card counts as complete despite them).
PERMANENT_REASONS = frozenset(
    {
        "not_an_image",
        "corrupt_image",
        "too_large",
        "http_404",
        "http_410",
        "robots_disallowed",
        "scheme_not_allowed",
        BLOCKED_REASON,
    }
)

#: :class:`engine.images.ImageError` reasons as photo-row reasons: the magic bytes already said "image", so one that
#: Pillow cannot identify or finds cut short is a corrupt photo.
IMAGE_REASONS = {"truncated": "corrupt_image", "not_an_image": "corrupt_image"}

#: Redirect hops a photo URL may take (each one through the address guard) before it is ``redirect_loop``.
PHOTO_MAX_REDIRECTS = 5


class PhotoError(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def sniff(data: bytes) -> str | None:
    """Image format from magic bytes, or ``None`` (HTML, text, anything else)."""
    head = data[:16]
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM":
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return None


_DROP_JPEG_MARKERS = {0xE1, 0xED, 0xFE} | set(range(0xE3, 0xED)) | {0xEF}
"""APP1 (EXIF/XMP), APP3-APP12, APP13 (IPTC/Photoshop), APP15, COM. Kept: APP0 (JFIF), APP2 (ICC colour profile),
APP14 (Adobe: needed to read CMYK/YCCK colours right)."""


def strip_jpeg_metadata(data: bytes) -> bytes:
    """The same JPEG without metadata segments; the entropy-coded image data is copied byte for byte."""
    if not data.startswith(b"\xff\xd8"):
        raise PhotoError("corrupt_image", "no SOI marker")
    out = bytearray(b"\xff\xd8")
    pos = 2
    n = len(data)
    while pos < n:
        if data[pos] != 0xFF:
            raise PhotoError("corrupt_image", "bad JPEG marker")
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            break
        marker = data[pos]
        pos += 1
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            out += bytes((0xFF, marker))
            continue
        if marker == 0xD9:
            out += b"\xff\xd9"
            break
        if pos + 2 > n:
            raise PhotoError("corrupt_image", "truncated JPEG header")
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        segment = data[pos - 2 : pos + length]
        if marker == 0xDA:  # start of scan: the rest is image data
            out += data[pos - 2 :]
            break
        if marker not in _DROP_JPEG_MARKERS:
            out += segment
        pos += length
    return bytes(out)


def process_image(data: bytes, max_bytes: int, max_pixels: int) -> tuple[bytes, str, int, int, str]:
    """Check and clean one downloaded photo: ``(stored_bytes, ext, width, height, source_format)``.

    Raises :class:`PhotoError` only: the bytes are a stranger's, so whatever Pillow's decoders raise on them (a
    bomb, a bad chunk, a struct error deep in a plugin) is this photo's ``corrupt_image``, never the listing's end.
    """
    if len(data) > max_bytes:
        raise PhotoError("too_large", f"{len(data)} bytes")
    fmt = sniff(data)
    if fmt is None:
        head = data[:64].lstrip().lower()
        kind = "html" if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")) else "unknown bytes"
        raise PhotoError("not_an_image", kind)
    try:
        return _clean(data, fmt, max_pixels)
    except PhotoError:
        raise
    except ImageError as exc:
        raise PhotoError(IMAGE_REASONS.get(exc.reason, exc.reason), exc.detail) from exc
    except Exception as exc:
        raise PhotoError("corrupt_image", f"{type(exc).__name__}: {exc}"[:200]) from exc


def _clean(data: bytes, fmt: str, max_pixels: int) -> tuple[bytes, str, int, int, str]:
    img = open_bounded(data, max_pixels)  # header only: the pixel cap and the bomb check come before any decoding
    width, height = img.size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img.load()  # decode every pixel (the first frame): a truncated or damaged file fails here
    orientation = 1
    with contextlib.suppress(Exception):  # unreadable EXIF is no reason to refuse the pixels
        orientation = int(img.getexif().get(0x0112, 1) or 1)
    if fmt == "JPEG" and orientation == 1:
        stripped = strip_jpeg_metadata(data)
        return stripped, "jpg", width, height, fmt
    # exif_transpose copies even an upright image: only call it when there is something to turn (one full copy less)
    upright = (ImageOps.exif_transpose(img) or img) if orientation != 1 else img
    buf = io.BytesIO()
    if fmt == "JPEG":
        if upright.mode not in ("RGB", "L"):
            upright = upright.convert("RGB")
        upright.save(buf, "JPEG", quality=92, optimize=True)
        ext = "jpg"
    else:
        if upright.mode not in ("RGB", "RGBA", "L", "LA", "P"):
            upright = upright.convert("RGBA" if "A" in upright.getbands() else "RGB")
        upright.save(buf, "PNG", optimize=False)
        ext = "png"
    return buf.getvalue(), ext, upright.width, upright.height, fmt


class PhotosPipeline(Stage):
    def __init__(self, crawler: Any) -> None:
        super().__init__(crawler)
        self.max_bytes = int(crawler.settings.getint("HOMEWARD_MAX_IMAGE_BYTES", 15 * 1024 * 1024))
        self.max_pixels = int(crawler.settings.getint("HOMEWARD_MAX_IMAGE_PIXELS", 80_000_000))
        self.store = photo_store(crawler)
        self.known: dict[str, dict[str, Any]] | None = None

    def _known(self) -> dict[str, dict[str, Any]]:
        """Photo rows already stored ``ok`` (by photo_key): a rerun reuses them instead of downloading again."""
        if self.known is None:
            self.known = {}
            lance = lance_store(self.crawler)
            if lance.exists("photos"):
                cols = ["photo_key", "photo_id", "uri", "width", "height", "format", "status"]
                for row in lance.read("photos", where="status = 'ok'", columns=cols).to_pylist():
                    self.known[row["photo_key"]] = row
        return self.known

    async def process_item(self, item: Any) -> Any:
        if not isinstance(item, ListingItem):
            return item
        urls = list(item.get("photo_urls") or [])
        listing_id = item["listing_id"]
        if not urls:
            item["photo_ids"], item["photos"] = [], []
            return item
        known = self._known()
        if is_asyncio_reactor_installed():
            rows = await asyncio.gather(*(self._photo(listing_id, url, known) for url in urls))
        else:
            rows = [await self._photo(listing_id, url, known) for url in urls]
        item["photos"] = [r for r in rows if not r.get("_reused")]
        for r in rows:
            r.pop("_reused", None)
        item["photo_ids"] = list(dict.fromkeys(r["photo_id"] for r in rows if r["status"] == "ok"))
        failed = [r for r in rows if r["status"] != "ok"]
        item["change"] = None
        if failed:
            self.warn(item, "photo_failed")
        return item

    async def _photo(self, listing_id: str, url: str, known: dict[str, dict[str, Any]]) -> dict[str, Any]:
        key = ids.photo_key(listing_id, url)
        stored = known.get(key)
        if stored is not None:
            self.stats.inc_value("homeward/photos/reused")
            return {**stored, "listing_id": listing_id, "source_url": url, "status": "ok", "_reused": True}
        row: dict[str, Any] = {
            "photo_key": key,
            "photo_id": None,
            "listing_id": listing_id,
            "source_url": url,
            "uri": None,
            "width": None,
            "height": None,
            "format": None,
            "fetched_at": datetime.now(UTC),
            "status": "failed",
            "error": None,
            "enrich_status": None,
            "enrich_error": None,
            "enriched_at": None,
        }
        try:
            data = await self._download(url)
            stored_bytes, ext, width, height, fmt = await self._in_thread(
                process_image, data, self.max_bytes, self.max_pixels
            )
            photo_id, uri = await self._in_thread(self.store.put, stored_bytes, ext)
        except PhotoError as exc:
            row["error"] = exc.reason
            self.error(f"photo:{exc.reason}", url, exc.detail or None)
            self.stats.inc_value("homeward/photos/failed")
            return row
        row.update(photo_id=photo_id, uri=uri, width=width, height=height, format=fmt, status="ok",
                   enrich_status="pending")  # fmt: skip
        known[key] = row
        self.stats.inc_value("homeward/photos/ok")
        return row

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        return await maybe_deferred_to_future(threads.deferToThread(fn, *args))

    async def _download(self, url: str) -> bytes:
        request = Request(
            url,
            # no handle_httpstatus_all: it would stop Scrapy's redirect middleware, and a 30x is then a dead end
            meta={"download_maxsize": self.max_bytes, "redirect_ttl": PHOTO_MAX_REDIRECTS, "hw_photo": True},
            dont_filter=True,
            priority=10,
        )
        try:
            response = await self.crawler.engine.download_async(request)
        except Exception as exc:
            raise PhotoError(failure_reason(exc, self.crawler), str(exc)[:200]) from exc
        if response.status != 200:
            raise PhotoError(f"http_{response.status}")
        return response.body
