"""The fused score as one element-wise kernel over two matrix products and per-listing codes.

The score of a pair (``engine.scoring.fuse`` documents the terms) is computed from the image and text cosines of
the pair (tile matrix products) and codes of each listing (:class:`Codes`), so the per-pair work is as small as the
definition allows:

* colours and breed words are bit masks (12 and 64 bits): their overlap is a popcount of an AND, not a matrix
  product writing a tile per attribute (three small products had cost as much as the whole fused kernel);
* distance comes from unit vectors on the sphere (the chord, then one ``asin``), not from latitudes and longitudes
  (four trigonometric calls and a square per pair), less both listings' place slack (``geo.place_slack_km``);
* the several-photos bonus is non-zero only for the rare pairs with two or more agreeing detection pairs, so it is
  added to those entries afterwards (:func:`add_bonus`) instead of being a dense term.

:func:`fused_kernel` scores tiles (rows × columns, codes broadcast) and explicit pair lists alike, so both give the
same value; attribute evidence is :func:`engine.scoring.attributes.sub_terms` itself. Eagerly it is ~100 passes over a
tile; ``torch.compile`` (:func:`kernel_for`) makes it one loop (measured on a loaded 2-core box, a 4096² tile: 0.35 s
compiled against 8-10 s eager and 1.7 s for the 2752-d image product). The rewrite changes results only by float
rounding (tests compare it with the definition in float64).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.scoring import aggregate
from engine.scoring.attributes import AttributeCodes, evidence_of, sub_terms
from engine.scoring.geo import EARTH_RADIUS_KM, TYPICAL_DAYS, unit_vectors

log = logging.getLogger(__name__)
NEG_INF = float("-inf")
IMAGE_Z_FLOOR = -2.0
Z_PER_UNIT = 4.0
"""Four background spreads above a random pair count as full evidence (1.0)."""


@dataclass
class Codes:
    """Per-listing inputs of the kernel for one side, on the scoring device."""

    x: torch.Tensor  # (n,) float32 unit vector components, NaN without coordinates
    y: torch.Tensor
    z: torch.Tensor
    day: torch.Tensor  # (n,) float32, NaN unknown
    species: torch.Tensor  # (n,) int64, 0 unknown
    has_text: torch.Tensor  # (n,) bool
    sex: torch.Tensor  # (n,) int64 (``AttributeCodes``)
    size: torch.Tensor  # (n,) int64
    n_colours: torch.Tensor  # (n,) float32
    colour_bits: torch.Tensor  # (n,) int32, bit c: colour c
    breed_id: torch.Tensor  # (n,) int64, -1 unknown
    breed_bits: torch.Tensor  # (n,) int64, bit b: a breed word hashed to bucket b
    slack: torch.Tensor  # (n,) float32 km the point may be off (``geo.place_slack_km``)

    def pick(self, index: Any) -> Codes:
        """The codes indexed by ``index``: ``(slice, None)`` / ``(None, slice)`` for a tile's rows / columns, an
        index tensor for a pair list."""
        return Codes(*(getattr(self, f)[index] for f in self.__dataclass_fields__))


def _bits(multi_hot: torch.Tensor) -> np.ndarray:
    """Rows of a 0/1 matrix (at most 64 columns) as int64 bit masks."""
    hot = multi_hot.numpy() > 0
    weights = np.left_shift(np.uint64(1), np.arange(hot.shape[1], dtype=np.uint64))
    return (hot.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64).view(np.int64)


def side_codes(
    lat: torch.Tensor,
    lon: torch.Tensor,
    day: torch.Tensor,
    species: torch.Tensor,
    has_text: torch.Tensor,
    attrs: AttributeCodes,
    slack: torch.Tensor,
    device: torch.device,
) -> Codes:
    """The kernel's codes of one side."""
    xyz = unit_vectors(lat.double().numpy(), lon.double().numpy())

    def dev(a: np.ndarray, dtype: Any = np.float32) -> torch.Tensor:
        # contiguous: the compiled kernel loads a strided column element by element
        return torch.from_numpy(np.ascontiguousarray(a, dtype=dtype)).to(device)

    return Codes(
        x=dev(xyz[:, 0]),
        y=dev(xyz[:, 1]),
        z=dev(xyz[:, 2]),
        day=dev(day.numpy()),
        species=species.to(device),
        has_text=has_text.to(device),
        sex=attrs.sex.to(device),
        size=attrs.size.to(device),
        n_colours=attrs.n_colours.to(device),
        colour_bits=dev(_bits(attrs.colours), np.int32),
        breed_id=attrs.breed_id.to(device),
        breed_bits=dev(_bits(attrs.breed_tok), np.int64),
        slack=dev(slack.numpy()),
    )


def constants(p: Any, w: dict[str, float], device: torch.device) -> torch.Tensor:
    """The kernel's scalars from ``ScoreParams`` and the weights, in the order :func:`fused_kernel` reads them."""
    values = [
        p.img_center, p.img_scale, p.txt_center, p.txt_scale, w["image"], w["text"], w["attributes"], w["geo"],
        w["time"], p.base_radius_km, p.max_speed_km_per_day, p.max_radius_km, p.max_days, p.grace_days,
        max(p.max_days / 6.0, 1.0), p.geo_scale_km, p.geo_scale_km_per_day,
    ]  # fmt: skip
    return torch.tensor(values, dtype=torch.float32, device=device)


def _popcount12(x: torch.Tensor) -> torch.Tensor:
    """Set bits of the low 12 bits of int32 ``x`` (SWAR: no popcount op in torch)."""
    x = x - ((x >> 1) & 0x555)
    x = (x & 0x333) + ((x >> 2) & 0x333)
    x = (x + (x >> 4)) & 0xF0F
    return ((x & 0xFF) + (x >> 8)).float()


def fused_kernel(best, txt, a, b, c):  # fmt: skip
    """Fused score (-inf: ruled out) from the image and text cosines and the codes of lost ``a`` and found ``b``
    (:class:`Codes`-like, broadcastable: rows × columns for a tile, one entry per pair for pair lists); ``c`` from
    :func:`constants`. Pure element-wise: one code path for tiles and pair lists."""
    has_img = torch.isfinite(best)
    z_img = ((best - c[0]) / c[1]).clamp(min=IMAGE_Z_FLOOR) / Z_PER_UNIT
    e_img = torch.where(has_img, z_img, torch.zeros_like(z_img))
    z_txt = ((txt - c[2]) / c[3]).clamp(min=IMAGE_Z_FLOOR) / Z_PER_UNIT
    e_txt = torch.where(a.has_text & b.has_text, z_txt, torch.zeros_like(z_txt))
    inter = _popcount12(a.colour_bits & b.colour_bits)
    shared = (a.breed_bits & b.breed_bits) != 0
    e_attr = evidence_of(sub_terms(a.sex, b.sex, a.size, b.size, inter, a.n_colours, b.n_colours, a.breed_id,
                                   b.breed_id, shared))  # fmt: skip
    chord = torch.sqrt((a.x - b.x) ** 2 + (a.y - b.y) ** 2 + (a.z - b.z) ** 2)
    dist = ((2.0 * EARTH_RADIUS_KM) * torch.asin((0.5 * chord).clamp(max=1.0)) - a.slack - b.slack).clamp(min=0.0)
    days = b.day - a.day
    no_days = torch.isnan(days)
    scale = c[15] + c[16] * torch.where(no_days, TYPICAL_DAYS, days).clamp(min=0.0)
    limit = (c[9] + c[10] * torch.where(no_days, c[12], days).clamp(min=0.0)).clamp(max=c[11])
    e_geo = torch.where(torch.isnan(dist), 0.0, 2.0 * torch.exp(-dist / scale) - 1.0)
    e_time = torch.where(no_days, 0.0, 2.0 * torch.exp(-days.clamp(min=0.0) / c[14]) - 1.0)
    fused = c[4] * e_img + c[5] * e_txt + c[6] * e_attr + c[7] * e_geo + c[8] * e_time
    species_differ = (a.species != b.species) & (a.species != 0) & (b.species != 0)
    ruled_out = (days < -c[13]) | (days > c[12]) | (dist > limit) | species_differ
    return torch.where(ruled_out, NEG_INF, fused)


def add_bonus(fused: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, agree: torch.Tensor, w_img: float) -> None:
    """Add the several-photos bonus (``aggregate.evidence_bonus``) of the listed entries in place; ruled-out
    entries stay -inf."""
    keep = agree > 1
    if bool(keep.any()):
        r, c = rows[keep], cols[keep]
        fused[r, c] = fused[r, c] + w_img * aggregate.evidence_bonus(agree[keep])


COMPILE_MIN_PAIRS = 1 << 20
"""Below this many pairs a tile runs eagerly even when compiling is allowed (a compiled call has a fixed cost)."""
_COMPILED: dict[str, Any] = {}


def kernel_for(pairs: int, allowed: bool):
    """:func:`fused_kernel`, through ``torch.compile`` when ``allowed`` and the tile is large: one fused loop
    instead of ~100 passes over the tile. Compiling costs tens of seconds to minutes per process (inductor caches
    it on disk, so the next process is faster). ``HW_COMPILE=0`` forbids it; a compile failure falls back to eager
    with one warning."""
    if not allowed or pairs < COMPILE_MIN_PAIRS or os.environ.get("HW_COMPILE", "1") == "0" or _COMPILED.get("failed"):
        return fused_kernel
    if "fn" not in _COMPILED:
        _COMPILED["fn"] = torch.compile(fused_kernel, dynamic=True)
    compiled = _COMPILED["fn"]

    def run(*args: Any) -> torch.Tensor:
        try:
            return compiled(*args)
        except Exception as exc:  # no compiler, unsupported platform: eager is slower but right
            _COMPILED["failed"] = True
            log.warning("torch.compile of the fused scorer failed (%s); scoring eagerly", str(exc)[:200])
            return fused_kernel(*args)

    return run
