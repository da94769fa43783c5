"""Decode untrusted image bytes into an upright RGB picture, or say in one word why not.

Photos come from strangers' posts: CMYK JPEGs from print workflows, 16-bit PNGs, palette GIFs with transparency,
animated GIF/WebP/APNG, phone photos lying on their side with an EXIF orientation tag, half-downloaded files, HTML
error pages saved as ``.jpg`` and the odd decompression bomb. :func:`decode_image` handles all of them:

* the size is read from the header **before** any pixel is decoded; a JPEG larger than ``max_pixels`` is decoded
  directly at 1/2, 1/4 or 1/8 scale (``Image.draft``, no full-size buffer is ever allocated), any other format over
  the limit is refused with reason ``too_large``;
* a decompression bomb under the pixel cap is refused too (``too_large``, :func:`refuse_bomb`): a 300 KiB PNG can
  declare 80 MP, and Pillow holds 4 bytes per RGB(A) pixel, so decoding it costs 300+ MiB per copy. A lossless
  file (PNG, GIF, WebP, TIFF, BMP …) over :data:`BOMB_FLOOR_PIXELS` that declares more than
  :data:`MAX_PIXELS_PER_BYTE` pixels per byte of file is one: a real photo stored losslessly takes a byte or more
  per pixel, and even a flat poster scan stays far below 100 pixels per byte at that size. JPEG is exempt: its
  decoder can reduce while decoding, and its pixels are capped by ``max_pixels``;
* EXIF orientation is applied, animated images give their first frame, every mode ends as 8-bit RGB (alpha is
  composited on white, 16-bit channels are scaled rather than clipped);
* failures raise :class:`ImageError` whose ``reason`` is one of :data:`REASONS`.

Only Pillow (plus pi-heif's HEIF opener, for iPhone photos) and numpy are needed, so the crawl pipeline can reuse
:func:`probe_image` / :func:`decode_image` for its download check. Registering the HEIF opener here also keeps
ultralytics' patched ``Image.open`` (which imports pi-heif on the first unidentified image) from turning an
"image" that is really HTML into a ``ModuleNotFoundError``.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from pi_heif import register_heif_opener
from PIL import Image, UnidentifiedImageError

from engine.errors import HomewardError

register_heif_opener()

#: Reasons an image is refused, stable strings stored in ``photos.enrich_error`` / ``photos.error``.
REASONS = ("not_an_image", "corrupt_image", "truncated", "too_large")

#: Default pixel cap (the crawl's ``max_image_pixels`` default): 80 MP, i.e. a ~10k×8k photo.
DEFAULT_MAX_PIXELS = 80_000_000

#: Below this many pixels (64 MiB decoded at 4 bytes per pixel) no image is taken for a decompression bomb.
BOMB_FLOOR_PIXELS = 16_000_000

#: A lossless image declaring more pixels than this per byte of file, above :data:`BOMB_FLOOR_PIXELS`, is a bomb.
MAX_PIXELS_PER_BYTE = 100


class ImageError(HomewardError):
    """An image that cannot be used; ``reason`` is one word of :data:`REASONS`, ``detail`` a short explanation."""

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class ImageInfo:
    """What the header says, before decoding: format (``JPEG``, ``PNG`` …), size as stored, frame count."""

    format: str
    width: int
    height: int
    frames: int = 1


def _open(data: bytes) -> Image.Image:
    """Open lazily (header only). Pillow's own bomb check is bypassed on purpose: our caller enforces the limit,
    and for JPEG can still decode a reduced version instead of refusing."""
    if not data:
        raise ImageError("not_an_image", "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        im = _open_unchecked(data)  # our caller enforces its own limit (and reduces a JPEG instead of refusing)
        if im is None:
            raise ImageError("too_large", "header declares more pixels than allowed") from None
        return im
    except UnidentifiedImageError:
        raise ImageError("not_an_image", _sniff(data)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError("corrupt_image", f"unreadable header: {exc}") from exc


def _open_unchecked(data: bytes) -> Image.Image | None:
    """Open a header-only image the way ``Image.open`` does, minus Pillow's bomb check (header only, no pixels)."""
    Image.preinit()
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        try:
            if accept is None or accept(data[:16]):
                return factory(io.BytesIO(data), None)
        except (SyntaxError, IndexError, TypeError, struct.error, OSError, ValueError):
            continue
    return None


def _sniff(data: bytes) -> str:
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<svg")):
        return "markup (HTML/XML/SVG), not a raster image"
    if head.startswith((b"{", b"[")):
        return "JSON, not an image"
    return "unknown format"


def refuse_bomb(fmt: str, width: int, height: int, nbytes: int) -> None:
    """Raise ``too_large`` for a non-JPEG image whose declared size dwarfs its file (see the module docstring)."""
    pixels = width * height
    if fmt != "JPEG" and pixels > BOMB_FLOOR_PIXELS and pixels > MAX_PIXELS_PER_BYTE * nbytes:
        raise ImageError("too_large", f"decompression bomb: {width}x{height} {fmt} from {nbytes} bytes")


def open_bounded(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open ``data`` (header only) for a full-size decode, refusing first what would cost too much memory: more
    than ``max_pixels`` pixels in any format, or a decompression bomb. ``load()`` on the result is then bounded."""
    im = _open(data)
    width, height = im.size
    if width <= 0 or height <= 0:
        raise ImageError("corrupt_image", f"header declares size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError("too_large", f"{width}x{height} {im.format} exceeds {max_pixels} pixels")
    refuse_bomb(str(im.format), width, height, len(data))
    return im


def probe_image(data: bytes) -> ImageInfo:
    """Format, size and frame count from the header alone (no pixel decoding); raises :class:`ImageError`."""
    im = _open(data)
    return ImageInfo(str(im.format or "unknown"), im.width, im.height, int(getattr(im, "n_frames", 1) or 1))


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im)
        if mode == "F" or arr.dtype.kind == "f":
            arr = np.nan_to_num(arr.astype(np.float32))
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        else:
            arr = arr.astype(np.int64)
            hi = int(arr.max()) if arr.size else 0
            # 16-bit data (or 32-bit holding 16-bit values, Pillow's mode "I" for 16-bit PNG): scale, never clip
            arr = arr >> 8 if hi > 255 and hi <= 65535 else (arr * 255 // hi if hi > 65535 else arr)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK (Pillow inverts Adobe CMYK), YCbCr, LAB, HSV, RGBX


def decode_image(
    data: bytes,
    *,
    max_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Bytes → upright 8-bit RGB image, at most ``max_side`` on its longest side when given.

    The returned image carries ``info["original_size"]`` = (width, height) of the upright full-resolution image, so
    boxes found on a downscaled copy can be mapped back. Raises :class:`ImageError` (``not_an_image``,
    ``corrupt_image``, ``truncated``, ``too_large``).
    """
    im = _open(data)
    width, height = im.size
    if width <= 0 or height <= 0:
        raise ImageError("corrupt_image", f"header declares size {width}x{height}")
    refuse_bomb(str(im.format), width, height, len(data))
    pixels = width * height
    target = None
    if max_side and max(width, height) > max_side:
        s = max_side / max(width, height)
        target = (max(1, int(width * s)), max(1, int(height * s)))
    if pixels > max_pixels:
        if im.format != "JPEG":
            raise ImageError("too_large", f"{width}x{height} {im.format} exceeds {max_pixels} pixels")
        s = (max_pixels / pixels) ** 0.5
        cap = (max(1, int(width * s)), max(1, int(height * s)))
        target = cap if target is None or cap[0] < target[0] else target
    if target is not None and im.format == "JPEG" and im.mode in ("RGB", "L", "CMYK", "YCbCr"):
        # decode straight at 1/2..1/8 scale: no full-size buffer, and much faster for big phone photos
        im.draft(im.mode, target)  # picks the smallest 1/1..1/8 scale still >= target: at most 4x its area
        if im.size[0] * im.size[1] > 4 * max_pixels:
            raise ImageError("too_large", f"{width}x{height} JPEG exceeds {max_pixels} pixels even at 1/8 scale")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.seek(0)  # animated: first frame
            im.load()
            exif_orientation = im.getexif().get(0x0112, 1) if hasattr(im, "getexif") else 1
            im = _to_rgb(im)
            if target is not None and im.size[0] > target[0]:
                im = im.resize(target, Image.Resampling.BILINEAR)
            if exif_orientation != 1:
                im = _apply_orientation(im, exif_orientation)
    except ImageError:
        raise
    except OSError as exc:
        text = str(exc)
        reason = "truncated" if "truncated" in text.lower() or "end of file" in text.lower() else "corrupt_image"
        raise ImageError(reason, text[:200]) from exc
    except (SyntaxError, ValueError, EOFError, IndexError, TypeError, Image.DecompressionBombError) as exc:
        raise ImageError("corrupt_image", f"{type(exc).__name__}: {str(exc)[:180]}") from exc
    if exif_orientation in (5, 6, 7, 8):
        width, height = height, width
    im.info["original_size"] = (width, height)
    return im


def _apply_orientation(im: Image.Image, orientation: int) -> Image.Image:
    method = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(int(orientation))
    return im.transpose(method) if method is not None else im


def to_array(im: Image.Image) -> np.ndarray:
    """RGB image → ``(H, W, 3) uint8`` array (contiguous)."""
    return np.ascontiguousarray(np.asarray(im.convert("RGB") if im.mode != "RGB" else im, dtype=np.uint8))


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "REASONS",
    "ImageError",
    "ImageInfo",
    "decode_image",
    "open_bounded",
    "probe_image",
    "refuse_bomb",
    "to_array",
]
