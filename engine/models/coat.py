"""A coat-colour "embedder": the colour histogram of the animal, as a unit vector (``kind: coat``).

Networks fine-tuned on one kind of photo (dog faces) carry little over to another (a tabby at a feeder camera, a
calico on a cut-out black background), but coat colour does: a white cat and a calico are never the same animal, in
any pose, at any resolution. As an ensemble member (:mod:`engine.models.ensemble`) it adds that evidence to the
image similarity at the cost of a 48×48 resize per crop, no network.

The vector is the square root of the normalised hue × saturation × value histogram of the crop's central area
(corners of a detector box are mostly background), so the cosine of two vectors is their Bhattacharyya
coefficient: 1 for identical colour distributions, 0 for disjoint ones. Hue keeps its bins on pale fur too: merging
them (hue is ill-defined at low saturation) lowered top-1 on every realpets source (feeder cats 0.52 -> 0.33).
Near-black pixels are left out when the crop has enough others (posts often cut the animal out onto black).
Trade-off: colour alone confuses animals of one coat (two black dogs) and changes under coloured or infrared light,
so it is a member with a small weight, never the embedder alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from engine.models.embedder import Embedder
from engine.models.registry import ModelError

SIDE = 48
DARK = 8
"""Pixels whose brightest channel is below this (of 255) count as a cut-out background."""


class CoatEmbedder(Embedder):
    def __init__(self, spec: dict[str, Any], settings: Any = None) -> None:
        bins = spec.get("bins", [12, 4, 4])
        if not (isinstance(bins, list) and len(bins) == 3 and all(isinstance(b, int) and 1 <= b <= 64 for b in bins)):
            raise ModelError(f"coat embedder `bins` must be three integers (hue, saturation, value) in 1..64: {bins!r}")
        centre = spec.get("centre", 0.7)
        if not isinstance(centre, int | float) or not 0.1 <= centre <= 1.0:
            raise ModelError(f"coat embedder `centre` must be a share of the crop in 0.1..1: {centre!r}")
        self.bins = tuple(int(b) for b in bins)
        self.centre = float(centre)
        self.dim = self.bins[0] * self.bins[1] * self.bins[2]
        self.batch_size = int(spec.get("batch_size", 64))
        self.model_id = coat_id(spec)

    def embed_and_classify(
        self, images: list[Image.Image], species: Sequence[str] | None = None
    ) -> tuple[np.ndarray, None]:
        return np.stack([self._one(im) for im in images]).astype(np.float32), None

    def _one(self, image: Image.Image) -> np.ndarray:
        im = image.convert("RGB")
        w, h = im.size
        m = (1.0 - self.centre) / 2
        box = (int(w * m), int(h * m), max(int(w * (1 - m)), int(w * m) + 1), max(int(h * (1 - m)), int(h * m) + 1))
        small = im.crop(box).resize((SIDE, SIDE), Image.Resampling.BILINEAR)
        rgb = np.asarray(small, np.uint8).reshape(-1, 3)
        hsv = np.asarray(small.convert("HSV"), np.float32).reshape(-1, 3) / 256.0
        lit = rgb.max(axis=1) >= DARK
        if lit.sum() >= len(lit) // 10:
            hsv = hsv[lit]
        h, s, v = (np.minimum((hsv[:, i] * n).astype(int), n - 1) for i, n in enumerate(self.bins))
        idx = (h * self.bins[1] + s) * self.bins[2] + v
        counts = np.bincount(idx, minlength=self.dim).astype(np.float64)
        return np.sqrt(counts / counts.sum())


def coat_id(spec: dict[str, Any]) -> str:
    hb, sb, vb = spec.get("bins", [12, 4, 4])
    return f"coat:hsv{hb}x{sb}x{vb}:centre{float(spec.get('centre', 0.7)):g}"
