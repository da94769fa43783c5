"""An embedder made of several: every member embeds the crop and the vectors are concatenated.

::

    embedder:
      kind: ensemble
      members:
        - {kind: timm, arch: tf_efficientnet_lite2, checkpoint: reid_lite2.safetensors, flip: true}
        - {kind: timm, arch: tf_efficientnet_lite0, checkpoint: reid_lite0.safetensors, flip: true}
      weights: [1, 1]      # optional; equal by default
      species_weights:     # optional: other weights for crops of one species; 0 leaves a member out
        cat: [1, 0]

Member ``i``'s unit vector is scaled by ``sqrt(w_i / sum(w))`` before concatenation, so the result is a unit vector
and **the cosine of two ensemble vectors is the weighted mean of the members' cosines**: match, search and eval score
it as any other vector, and a pair both members find similar scores higher than a pair only one of them likes.

Trade-offs, measured in ``engine/train/README.md``: two re-identification models fine-tuned from different
backbones make different mistakes, so averaging their similarities lowered the held-out clean EER by about a tenth
and raised degraded top-1 — for the sum of the members' network time, and a vector as long as the members' together
(LanceDB storage and match's matrix products grow with it). Keys the members do not set themselves (``device``,
``precision``, ``batch_size``) are taken from the ensemble's spec.

``species_weights`` gives the crops of one species (the detector's label, else the listing's) their own weights: a
member trained on dog faces only adds noise to cat vectors (``engine/train/README.md``: the face Lite0 raised the
held-out cats' EER), so `cpu` leaves it out of them, and a member no crop of a batch needs is not run. The price:
vectors of two species are weighted differently, so a crop the detector labels ``dog`` scores lower against its own
animal's ``cat`` crops than two ``cat`` crops do (at ``[1, 0.5, 0.1]`` against ``[1, 0, 0.1]`` the cosine shrinks
by about a sixth); matching compares listings of one species, so this costs only where the detector gets the
species wrong.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from engine.models.embedder import Embedder
from engine.models.registry import ModelError

SHARED_KEYS = ("device", "precision", "batch_size")


@dataclass(frozen=True)
class Weights:
    """Each member's weight: ``default`` for any crop, ``species[s]`` for crops of species ``s``."""

    default: list[float]
    species: dict[str, list[float]] = field(default_factory=dict)

    def scales(self, kind: str) -> list[float]:
        """``sqrt(w_i / sum(w))`` per member: the concatenation of scaled unit vectors is a unit vector."""
        w = self.species.get(kind, self.default)
        total = sum(w)
        return [math.sqrt(x / total) for x in w]


def _weight_list(value: Any, n: int, what: str, *, zero_ok: bool) -> list[float]:
    ok = (
        isinstance(value, list)
        and len(value) == n
        and all(isinstance(w, int | float) and not isinstance(w, bool) for w in value)
        and all(w >= 0 if zero_ok else w > 0 for w in value)
        and sum(value) > 0
    )
    if not ok:
        kind = "non-negative numbers, not all 0" if zero_ok else "positive numbers"
        raise ModelError(f"ensemble {what} must be {n} {kind}, one per member; got {value!r}")
    return [float(w) for w in value]


def member_specs(spec: dict[str, Any]) -> tuple[list[dict[str, Any]], Weights]:
    """The members' specs (with the ensemble's shared keys) and their weights; a clear error for a bad spec."""
    members = spec.get("members")
    if not isinstance(members, list) or len(members) < 2 or not all(isinstance(m, dict) for m in members):
        raise ModelError("an ensemble embedder needs `members`: a list of two or more embedder specs")
    n = len(members)
    default = _weight_list(spec.get("weights", [1.0] * n), n, "`weights`", zero_ok=False)
    per_species = spec.get("species_weights") or {}
    if not isinstance(per_species, dict):
        raise ModelError(f"ensemble `species_weights` must map a species to {n} weights; got {per_species!r}")
    species = {
        str(k): _weight_list(v, n, f"`species_weights.{k}`", zero_ok=True) for k, v in sorted(per_species.items())
    }
    shared = {k: spec[k] for k in SHARED_KEYS if k in spec}
    return [{**shared, **m} for m in members], Weights(default, species)


def ensemble_id(ids: list[str], weights: Weights) -> str:
    """``ensemble:<member ids, by architecture>:<hash of the member ids and weights>``: the factory computes it from
    the members' ids without building them, the embedder from its built members, so the two agree."""
    key: list[Any] = [ids, weights.default] + ([weights.species] if weights.species else [])
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:12]
    names = "+".join(i.split(":")[1] for i in ids)
    return f"ensemble:{names}:{digest}"


class EnsembleEmbedder(Embedder):
    """The members are built by :func:`engine.models.factory.build_embedder` (this kind knows only the base)."""

    def __init__(self, members: list[Embedder], weights: Weights) -> None:
        self.members = members
        self.weights = weights
        self.dim = sum(m.dim for m in self.members)
        self.batch_size = min(m.batch_size for m in self.members)
        self.device = self.members[0].device
        self.model_id = ensemble_id([m.model_id for m in self.members], weights)

    def embed_and_classify(
        self, images: list[Image.Image], species: Sequence[str] | None = None
    ) -> tuple[np.ndarray, None]:
        kinds = list(species) if species is not None else ["unknown"] * len(images)
        if len(kinds) != len(images):
            raise ValueError(f"{len(kinds)} species for {len(images)} images")
        scales = np.asarray([self.weights.scales(k) for k in kinds], np.float32).reshape(len(images), len(self.members))
        parts = []
        for i, member in enumerate(self.members):
            part = np.zeros((len(images), member.dim), np.float32)
            rows = np.flatnonzero(scales[:, i] > 0)
            if len(rows):
                part[rows] = scales[rows, i : i + 1] * member.embed([images[r] for r in rows])
            parts.append(part)
        vecs = np.concatenate(parts, axis=1)
        vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        return vecs, None
