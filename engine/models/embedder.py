"""The embedder base: an animal crop → one L2-normalised float32 vector, and the preprocessing every kind shares.

The kinds, each in its own module and importing only this one, are built by :mod:`engine.models.factory` from a
profile's ``embedder`` spec:

* ``open_clip`` (:mod:`engine.models.open_clip_embedder`) — any open_clip model by name and pretrained tag
  (``ViT-L-14`` + ``datacomp_xl_s13b_b90k``), a local checkpoint file as ``pretrained``, or a model built from an
  inline ``config`` (random weights, tests).
* ``timm`` (:mod:`engine.models.timm_embedder`) — a timm backbone, from a local checkpoint (``checkpoint``), timm's
  own pretrained weights (online), or random (``pretrained: false``). Re-identification models are timm models:
  :func:`engine.models.checkpoints.save_timm_checkpoint` writes the format this kind reads back — backbone
  state_dict, an optional projection head, and the preprocessing (mean, std, size, resize mode) the model was trained
  with, so a fine-tuned checkpoint needs no code change, only
  ``embedder: {kind: timm, checkpoint: my_reid.safetensors}``.
* ``ensemble`` — several embedders (``members``) whose vectors are concatenated: :mod:`engine.models.ensemble`.
* ``coat`` — the coat-colour histogram, an ensemble member: :mod:`engine.models.coat`.

``flip: true`` (timm or open_clip) averages each crop's vector with its mirror image's (test-time augmentation): on the
held-out dogs of ``engine/train/README.md`` it lowered the clean EER by 0.001–0.003 for twice the network time, and
the vectors of a crop and of its mirror image become equal.

``model_id`` is unique per weights: kind, architecture and a content hash of the weight file (or the pretrained
tag), so vectors of two models are never compared even when their dimensions agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image


def l2(x: Any) -> Any:
    """Rows of a torch tensor scaled to unit length (in float32)."""
    import torch

    return torch.nn.functional.normalize(x.float(), dim=-1)


def with_flip(model_id: str, spec: dict[str, Any]) -> str:
    """``flip: true`` (mirror averaging) changes the vectors, so it is part of the id."""
    return f"{model_id}:flip" if spec.get("flip") else model_id


def prepare(images: list[Image.Image], size: int, mean: Any, std: Any, resize: str = "pad") -> np.ndarray:
    """Crops → ``(n, 3, size, size)`` float32, the same way at training and at inference.

    ``resize``: ``pad`` keeps the whole crop (pads the short side with the mean colour, then resizes — no part of
    the animal is cut and nothing is stretched), ``squash`` stretches to a square, ``center_crop`` resizes the short
    side and cuts the centre (ImageNet style).
    """
    mean_a = np.asarray(mean, np.float32).reshape(1, 1, 3)
    std_a = np.asarray(std, np.float32).reshape(1, 1, 3)
    fill = tuple(round(float(m) * 255) for m in np.asarray(mean, np.float32).ravel()[:3])
    batch = np.empty((len(images), 3, size, size), np.float32)
    for i, im in enumerate(images):
        im = im.convert("RGB") if im.mode != "RGB" else im
        w, h = im.size
        if resize == "squash":
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        elif resize == "center_crop":
            s = size / min(w, h)
            im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BILINEAR)
            left, top = (im.width - size) // 2, (im.height - size) // 2
            im = im.crop((left, top, left + size, top + size))
        else:
            side = max(w, h)
            if w != h:
                canvas = Image.new("RGB", (side, side), fill)
                canvas.paste(im, ((side - w) // 2, (side - h) // 2))
                im = canvas
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(im, np.float32) / 255.0
        batch[i] = ((arr - mean_a) / std_a).transpose(2, 0, 1)
    return batch


class Embedder:
    """Base: ``embed(images) -> (n, dim) float32`` L2-normalised; ``model_id``; ``dim``."""

    model_id: str
    dim: int
    batch_size: int = 32
    device: str = "cpu"
    #: True when :meth:`embed_and_classify` also returns ImageNet-1k logits (the attribute captioner reuses them).
    has_imagenet_head: bool = False

    def embed(self, images: list[Image.Image], species: Sequence[str] | None = None) -> np.ndarray:
        return self.embed_and_classify(images, species)[0]

    def embed_and_classify(
        self, images: list[Image.Image], species: Sequence[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Vectors (and ImageNet logits when :attr:`has_imagenet_head`). ``species``: what each crop shows (the
        detector's label, else the listing's; ``unknown`` when neither knows) — only an ensemble with
        ``species_weights`` reads it, every other kind embeds a crop the same whatever its species."""
        raise NotImplementedError

    def preprocess(self, images: list[Image.Image]) -> Any:
        raise NotImplementedError
