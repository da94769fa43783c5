"""The fused score as one element-wise kernel over a few matrix products and per-listing codes.

The score of a pair (``engine.scoring.fuse`` documents the terms) is rewritten so that the part computed per pair
is as small as the definition allows; everything that depends on one listing only is computed once per listing
(:class:`Codes`):

* sex and size agreement, and the constant parts of the colour and breed terms, depend on two small codes: their
  evidence is a bilinear form, ``lin = L_a · R_bᵀ`` with ten columns (a one-hot of the found side's code times the
  lost side's row of the lookup table), so a tile gets it from one tiny matrix product instead of ~30 passes;
* distance comes from unit vectors on the sphere (the chord, then one ``asin``), not from latitudes and longitudes
  (four trigonometric calls and a square per pair);
* the weights are folded into the codes and constants;
* the several-photos bonus is non-zero only for the rare pairs with two or more agreeing detection pairs, so it is
  added to those entries afterwards (:func:`add_bonus`) instead of being a dense term.

What is left, :func:`fused_kernel`, reads the matrix terms (best image cosine, text cosine, ``lin``, colour
intersection, shared breed words) and broadcasts the per-listing codes. The same function scores tiles (rows ×
columns) and explicit pair lists, so both give the same value. Eagerly it is ~40 passes over a tile;
``torch.compile`` (:func:`kernel_for`) makes it one loop. Rewriting changes results only by float rounding (tests
compare it with the definition in float64).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.scoring import aggregate
from engine.scoring.attributes import SUB_WEIGHTS, AttributeCodes
from engine.scoring.geo import EARTH_RADIUS_KM, TYPICAL_DAYS, unit_vectors

log = logging.getLogger(__name__)
NEG_INF = float("-inf")
IMAGE_Z_FLOOR = -2.0
Z_PER_UNIT = 4.0
"""Four background spreads above a random pair count as full evidence (1.0)."""
_SUB_TOTAL = sum(SUB_WEIGHTS.values())
_SEX = np.array([[0, 0, 0], [0, 0.3, -1.0], [0, -1.0, 0.3]])  # unknown, male, female
_SIZE = np.array([[0.0] * 5] + [[0.0] + [0.5 if a == b else 0.0 if abs(a - b) == 1 else -1.0 for b in range(4)]
                                for a in range(4)])  # unknown, small … xlarge  # fmt: skip
_BREED_BASE = -0.3
"""A breed stated on both sides and sharing nothing; sharing a word adds 0.7 (0.4), the same breed 1.3 (1.0)."""


@dataclass
class Codes:
    """Per-listing inputs of the kernel for one side, on the scoring device."""

    x: torch.Tensor  # (n,) float32 unit vector components, NaN without coordinates
    y: torch.Tensor
    z: torch.Tensor
    day: torch.Tensor  # (n,) float32, NaN unknown
    species: torch.Tensor  # (n,) float32 code, 0 unknown
    has_text: torch.Tensor  # (n,) bool
    colour_rcp: torch.Tensor  # (n,) float32 1 / number of colours, 0 without colours
    breed: torch.Tensor  # (n,) float32 breed number shared by both sides; unknown: -1 lost, -2 found
    lin: torch.Tensor  # (n, 10) float32 bilinear factors (lost: table rows × weight; found: one-hots)
    colours: torch.Tensor  # (n, C) multi-hot
    breed_tok: torch.Tensor  # (n, B) multi-hot


def side_codes(
    lat: torch.Tensor,
    lon: torch.Tensor,
    day: torch.Tensor,
    species: torch.Tensor,
    has_text: torch.Tensor,
    attrs: AttributeCodes,
    breed_number: np.ndarray,
    lost: bool,
    w_attr: float,
    device: torch.device,
) -> Codes:
    """The kernel's codes of one side; ``breed_number``: each listing's breed as an index into the breeds of both
    sides (-1 unknown), so equal breeds compare equal as float32 (the 31-bit hashes would not)."""
    xyz = unit_vectors(lat.double().numpy(), lon.double().numpy()).astype(np.float32)
    sex = attrs.sex.numpy().clip(0, 2)
    size = attrs.size.numpy().clip(-1, 3) + 1
    colour_known = (attrs.n_colours.numpy() > 0).astype(np.float64)
    breed_known = (breed_number >= 0).astype(np.float64)
    if lost:  # the lost side carries the lookup tables and the weights
        scale = w_attr / _SUB_TOTAL
        lin = np.column_stack([
            _SEX[sex] * SUB_WEIGHTS["sex"] * scale,
            _SIZE[size] * SUB_WEIGHTS["size"] * scale,
            -colour_known * SUB_WEIGHTS["colour"] * scale,
            _BREED_BASE * breed_known * SUB_WEIGHTS["breed"] * scale,
        ])  # fmt: skip
    else:
        lin = np.column_stack([np.eye(3)[sex], np.eye(5)[size], colour_known, breed_known])
    n_col = attrs.n_colours.numpy()
    rcp = np.where(n_col > 0, 1.0 / np.maximum(n_col, 1.0), 0.0)
    breed = np.where(breed_number >= 0, breed_number, -1.0 if lost else -2.0)

    def dev(a: np.ndarray | torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float32)).to(device)

    return Codes(
        x=dev(xyz[:, 0]),
        y=dev(xyz[:, 1]),
        z=dev(xyz[:, 2]),
        day=dev(day.numpy()),
        species=dev(species.numpy()),
        has_text=has_text.to(device),
        colour_rcp=dev(rcp),
        breed=dev(breed),
        lin=dev(lin.reshape(len(sex), 10)),
        colours=attrs.colours.to(device),
        breed_tok=attrs.breed_tok.to(device),
    )


def breed_numbers(lost_ids: torch.Tensor, found_ids: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Breed ids of both sides as small numbers (-1 unknown)."""
    ids = np.concatenate([lost_ids.numpy(), found_ids.numpy()])
    known = ids >= 0
    out = np.full(len(ids), -1, dtype=np.int64)
    out[known] = np.unique(ids[known], return_inverse=True)[1].reshape(-1)
    return out[: len(lost_ids)], out[len(lost_ids) :]


def constants(p: Any, w: dict[str, float], device: torch.device) -> torch.Tensor:
    """The kernel's scalars from ``ScoreParams`` and the weights, in the order :func:`fused_kernel` reads them."""
    values = [
        p.img_center, p.img_scale, p.txt_center, p.txt_scale, w["image"], w["text"], w["geo"], w["time"],
        p.base_radius_km, p.max_speed_km_per_day, p.max_radius_km, p.max_days, p.grace_days,
        2.0 * w["attributes"] * SUB_WEIGHTS["colour"] / _SUB_TOTAL, w["attributes"] * SUB_WEIGHTS["breed"] / _SUB_TOTAL,
        max(p.max_days / 6.0, 1.0),
    ]  # fmt: skip
    return torch.tensor(values, dtype=torch.float32, device=device)


def fused_kernel(best, txt, lin, inter, shared, a_rcp, b_rcp, a_br, b_br, ax, ay, az, bx, by, bz, a_day, b_day,
                 a_sp, b_sp, a_txt, b_txt, c):  # fmt: skip
    """Fused score (-inf: ruled out) from the matrix terms and broadcastable per-listing codes (``a_*`` lost,
    ``b_*`` found); ``c`` from :func:`constants`. Pure element-wise: one code path for tiles and pair lists."""
    has_img = torch.isfinite(best)
    z_img = ((best - c[0]) / c[1]).clamp(min=IMAGE_Z_FLOOR) / Z_PER_UNIT
    e_img = torch.where(has_img, z_img, torch.zeros_like(z_img))
    z_txt = ((txt - c[2]) / c[3]).clamp(min=IMAGE_Z_FLOOR) / Z_PER_UNIT
    e_txt = torch.where(a_txt & b_txt, z_txt, torch.zeros_like(z_txt))
    breed = torch.where(a_br == b_br, 1.3, torch.where(shared > 0, 0.7, 0.0))
    e_attr = lin + c[13] * inter * torch.maximum(a_rcp, b_rcp) + c[14] * breed
    chord = torch.sqrt((ax - bx) ** 2 + (ay - by) ** 2 + (az - bz) ** 2)
    dist = (2.0 * EARTH_RADIUS_KM) * torch.asin((0.5 * chord).clamp(max=1.0))
    days = b_day - a_day
    no_days = torch.isnan(days)
    radius = (c[8] + c[9] * torch.where(no_days, TYPICAL_DAYS, days).clamp(min=0.0)).clamp(max=c[10])
    limit = (c[8] + c[9] * torch.where(no_days, c[11], days).clamp(min=0.0)).clamp(max=c[10])
    e_geo = torch.where(torch.isnan(dist), 0.0, 2.0 * torch.exp(-dist / radius) - 1.0)
    e_time = torch.where(no_days, 0.0, 2.0 * torch.exp(-days.clamp(min=0.0) / c[15]) - 1.0)
    fused = c[4] * e_img + c[5] * e_txt + e_attr + c[6] * e_geo + c[7] * e_time
    ruled_out = (days < -c[12]) | (days > c[11]) | (dist > limit) | ((a_sp != b_sp) & (a_sp != 0) & (b_sp != 0))
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
    instead of ~40 passes over the tile. Compiling costs tens of seconds to minutes per process (inductor caches
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
