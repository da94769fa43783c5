"""engine.images: every awkward input decodes to upright RGB or fails with its one-word reason.

The awkward images are made here, on the fly (the enrich and model tests import these makers too)."""

from __future__ import annotations

import io
import resource
import struct
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from engine.images import REASONS, ImageError, decode_image, probe_image

# ------------------------------------------------------------------------------------------------ image makers


def jpeg(im: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def png(im: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kw)
    return buf.getvalue()


def halves(size: tuple[int, int] = (80, 40), left=(220, 20, 20), right=(20, 20, 220)) -> Image.Image:
    """Left half red, right half blue: orientation mistakes show."""
    im = Image.new("RGB", size, right)
    im.paste(Image.new("RGB", (size[0] // 2, size[1]), left), (0, 0))
    return im


def exif_rotated() -> bytes:
    """An 80x40 image stored sideways with EXIF orientation 6 (display rotated 90° clockwise)."""
    im = halves()
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg(im, exif=exif.tobytes())


def cmyk() -> bytes:
    return jpeg(Image.new("RGB", (64, 48), (200, 120, 40)).convert("CMYK"))


def sixteen_bit() -> bytes:
    arr = np.full((40, 60), 40000, np.uint16)
    arr[:, :30] = 1000
    return png(Image.fromarray(arr))


def palette_transparent() -> bytes:
    im = Image.new("P", (40, 40), 0)
    im.putpalette([0, 0, 0, 200, 30, 30] + [0, 0, 0] * 254)
    im.paste(1, (0, 0, 20, 40))
    return png(im, transparency=0)


def rgba() -> bytes:
    im = Image.new("RGBA", (30, 30), (0, 0, 0, 0))
    im.paste((10, 200, 10, 255), (0, 0, 15, 30))
    return png(im)


def la() -> bytes:
    return png(Image.new("LA", (30, 30), (90, 255)))


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def truncated() -> bytes:
    data = jpeg(Image.effect_noise((400, 300), 60).convert("RGB"))
    return data[: len(data) // 2]


def corrupt() -> bytes:
    data = png(Image.effect_noise((200, 150), 60).convert("RGB"))
    return data[:120] + bytes(600) + data[720:]


def html() -> bytes:
    return b"<!DOCTYPE html><html><body>404 Not Found</body></html>"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A real, valid 20000x20000 grey PNG of ~0.4 MB that would decode to 400 MB (built row by row)."""
    comp = zlib.compressobj(1)
    row = b"\x00" * (width + 1)
    parts = [comp.compress(row) for _ in range(height)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int = 20000, height: int = 20000) -> bytes:
    """A small JPEG whose header claims ``width`` x ``height`` (the scan data is far too short for it)."""
    data = bytearray(jpeg(Image.new("RGB", (16, 16), (120, 120, 120))))
    i = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, i + 5, height, width)
    return bytes(data)


def scene_without_animals() -> Image.Image:
    """A sky-over-grass landscape with a box-shaped house: no cat, no dog."""
    im = Image.new("RGB", (640, 480), (120, 170, 230))
    im.paste((60, 140, 60), (0, 300, 640, 480))
    im.paste((180, 80, 60), (380, 200, 560, 330))
    im.paste((90, 60, 40), (450, 260, 490, 330))
    return im


f = sys.modules[__name__]

# ------------------------------------------------------------------------------------------------ tests


def _rgb(im: Image.Image, xy: tuple[int, int]) -> tuple[int, int, int]:
    assert im.mode == "RGB"
    return im.getpixel(xy)


def test_plain_jpeg_and_probe() -> None:
    data = f.jpeg(f.halves())
    info = probe_image(data)
    assert (info.format, info.width, info.height, info.frames) == ("JPEG", 80, 40, 1)
    im = decode_image(data)
    assert im.size == (80, 40) and im.info["original_size"] == (80, 40)
    r, _, b = _rgb(im, (5, 20))
    assert r > 180 and b < 80


def test_exif_orientation_is_applied() -> None:
    im = decode_image(f.exif_rotated())
    # stored 80x40 left-red/right-blue; orientation 6 = rotate 90° clockwise → 40x80, red on top
    assert im.size == (40, 80)
    assert im.info["original_size"] == (40, 80)
    top, bottom = _rgb(im, (20, 5)), _rgb(im, (20, 75))
    assert top[0] > 180 and top[2] < 80
    assert bottom[2] > 180 and bottom[0] < 80


def test_cmyk_becomes_rgb_with_its_colour() -> None:
    im = decode_image(f.cmyk())
    r, g, b = _rgb(im, (30, 20))
    assert abs(r - 200) < 30 and abs(g - 120) < 30 and abs(b - 40) < 30


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    assert Image.open(io.BytesIO(f.sixteen_bit())).mode.startswith("I")
    im = decode_image(f.sixteen_bit())
    dark, bright = _rgb(im, (5, 5)), _rgb(im, (50, 5))
    assert dark[0] < 10  # 1000/65535 of full scale
    assert 140 < bright[0] < 170  # 40000/65535 ≈ 0.61 → ~156, not clipped to 255


def test_palette_with_transparency_goes_on_white() -> None:
    im = decode_image(f.palette_transparent())
    assert _rgb(im, (5, 5)) == (200, 30, 30)
    assert _rgb(im, (35, 5)) == (255, 255, 255)


@pytest.mark.parametrize("maker", [f.rgba, f.la])
def test_alpha_modes(maker) -> None:
    im = decode_image(maker())
    assert im.mode == "RGB"
    assert len(np.unique(np.asarray(im).reshape(-1, 3), axis=0)) >= 1


def test_animated_gives_first_frame() -> None:
    data = f.animated_gif()
    assert probe_image(data).frames == 3
    r, g, b = _rgb(decode_image(data), (10, 10))
    assert r > 200 and g < 50 and b < 50


@pytest.mark.parametrize(
    ("maker", "reason"),
    [
        (f.truncated, "truncated"),
        (f.corrupt, "corrupt_image"),
        (f.html, "not_an_image"),
        (lambda: b"", "not_an_image"),
        (lambda: b"\x00\x01garbage" * 10, "not_an_image"),
    ],
)
def test_bad_bytes_have_a_reason(maker, reason: str) -> None:
    with pytest.raises(ImageError) as err:
        decode_image(maker())
    assert err.value.reason == reason
    assert err.value.reason in REASONS
    assert str(err.value).startswith(reason)


def test_html_is_named_as_markup() -> None:
    with pytest.raises(ImageError, match="markup"):
        probe_image(f.html())


def test_reasons_survive_ultralytics_patching_pillow() -> None:
    """ultralytics replaces ``PIL.Image.open`` in every process that loads the detector; an HTML "image" must still
    be ``not_an_image`` there (the patch retries through pi-heif, which must be importable)."""
    import ultralytics.utils.patches  # noqa: F401  (applies the patch)

    with pytest.raises(ImageError) as err:
        decode_image(f.html())
    assert err.value.reason == "not_an_image" and "markup" in err.value.detail


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_png_bomb_refused_from_header_without_allocating() -> None:
    bomb = f.png_bomb()
    assert len(bomb) < 2_000_000
    info = probe_image(bomb)
    assert (info.width, info.height) == (20000, 20000)
    before = _maxrss_mb()
    with pytest.raises(ImageError) as err:
        decode_image(bomb)
    assert err.value.reason == "too_large"
    assert _maxrss_mb() - before < 150  # decoding it would take 400 MB (grey) or 1.2 GB (RGB)


def test_jpeg_claiming_20000_square_is_decoded_small() -> None:
    data = f.jpeg_claiming()
    assert (probe_image(data).width, probe_image(data).height) == (20000, 20000)
    before = _maxrss_mb()
    im = decode_image(data, max_side=1280)  # how enrich decodes: straight at 1/8 scale, then resized
    assert max(im.size) <= 1280
    assert im.info["original_size"] == (20000, 20000)
    assert _maxrss_mb() - before < 100  # full size would be 1.2 GB


def test_big_jpeg_is_decoded_reduced_under_the_pixel_cap() -> None:
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (1500, 2400, 3), dtype=np.uint8))
    data = f.jpeg(big)
    im = decode_image(data, max_pixels=500_000)
    assert im.width * im.height <= 500_000
    assert im.info["original_size"] == (2400, 1500)
    assert abs(im.width / im.height - 1.6) < 0.05
    with pytest.raises(ImageError) as err:
        decode_image(f.png(big), max_pixels=500_000)  # non-JPEG over the cap: refused
    assert err.value.reason == "too_large"


def test_max_side_downscales_keeping_aspect() -> None:
    im = decode_image(f.jpeg(Image.new("RGB", (3000, 1000), (10, 10, 10))), max_side=600)
    assert max(im.size) == 600 and im.size[1] == 200
    assert im.info["original_size"] == (3000, 1000)
