"""An embedder made of several: every member embeds the crop and the vectors are concatenated.

::

    embedder:
      kind: ensemble
      members:
        - {kind: timm, arch: tf_efficientnet_lite2, checkpoint: reid_lite2.safetensors, flip: true}
        - {kind: timm, arch: tf_efficientnet_lite0, checkpoint: reid_lite0.safetensors, flip: true}
      weights: [1, 1]      # optional; equal by default

Member ``i``'s unit vector is scaled by ``sqrt(w_i / sum(w))`` before concatenation, so the result is a unit vector
and **the cosine of two ensemble vectors is the weighted mean of the members' cosines**: match, search and eval score
it as any other vector, and a pair both members find similar scores higher than a pair only one of them likes.

Trade-offs, measured in ``engine/train/README.md``: two re-identification models fine-tuned from different
backbones make different mistakes, so averaging their similarities lowered the held-out clean EER by about a tenth
and raised degraded top-1 — for the sum of the members' network time, and a vector as long as the members' together
(LanceDB storage and match's matrix products grow with it). Keys the members do not set themselves (``device``,
``precision``, ``batch_size``) are taken from the ensemble's spec.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np
from PIL import Image

from engine.models.embedder import Embedder
from engine.models.registry import ModelError

SHARED_KEYS = ("device", "precision", "batch_size")


def member_specs(spec: dict[str, Any]) -> tuple[list[dict[str, Any]], list[float]]:
    """The members' specs (with the ensemble's shared keys) and their weights; a clear error for a bad spec."""
    members = spec.get("members")
    if not isinstance(members, list) or len(members) < 2 or not all(isinstance(m, dict) for m in members):
        raise ModelError("an ensemble embedder needs `members`: a list of two or more embedder specs")
    weights = spec.get("weights", [1.0] * len(members))
    if (
        not isinstance(weights, list)
        or len(weights) != len(members)
        or not all(isinstance(w, int | float) and not isinstance(w, bool) and w > 0 for w in weights)
    ):
        raise ModelError(f"ensemble `weights` must be {len(members)} positive numbers, one per member; got {weights!r}")
    shared = {k: spec[k] for k in SHARED_KEYS if k in spec}
    return [{**shared, **m} for m in members], [float(w) for w in weights]


def ensemble_id(ids: list[str], weights: list[float]) -> str:
    """``ensemble:<member ids, by architecture>:<hash of the member ids and weights>``: the factory computes it from
    the members' ids without building them, the embedder from its built members, so the two agree."""
    digest = hashlib.sha256(json.dumps([ids, weights]).encode()).hexdigest()[:12]
    names = "+".join(i.split(":")[1] for i in ids)
    return f"ensemble:{names}:{digest}"


class EnsembleEmbedder(Embedder):
    """The members are built by :func:`engine.models.factory.build_embedder` (this kind knows only the base)."""

    def __init__(self, members: list[Embedder], weights: list[float]) -> None:
        self.members = members
        total = sum(weights)
        self.scales = [math.sqrt(w / total) for w in weights]
        self.dim = sum(m.dim for m in self.members)
        self.batch_size = min(m.batch_size for m in self.members)
        self.device = self.members[0].device
        self.model_id = ensemble_id([m.model_id for m in self.members], weights)

    def embed_and_classify(self, images: list[Image.Image]) -> tuple[np.ndarray, None]:
        parts = [scale * member.embed(images) for scale, member in zip(self.scales, self.members, strict=True)]
        vecs = np.concatenate(parts, axis=1).astype(np.float32, copy=False)
        vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        return vecs, None
