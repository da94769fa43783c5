"""The coat-colour embedder: colour distributions as unit vectors, alone and as an ensemble member."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.models.coat import CoatEmbedder
from engine.models.factory import build_embedder, embedder_id
from engine.models.registry import ModelError


def _coat(colours: list[tuple[int, int, int]], size: int = 96, background: tuple[int, int, int] | None = None):
    """Vertical stripes of ``colours`` (a calico's patches), optionally on a frame of ``background``."""
    rng = np.random.default_rng(len(colours))
    arr = np.zeros((size, size, 3), np.float32)
    for i, c in enumerate(colours):
        arr[:, i * size // len(colours) : (i + 1) * size // len(colours)] = c
    arr = np.clip(arr + rng.normal(0, 6, arr.shape), 0, 255).astype(np.uint8)
    if background is not None:
        canvas = np.full((size * 2, size * 2, 3), background, np.uint8)
        canvas[size // 2 : size // 2 + size, size // 2 : size // 2 + size] = arr
        arr = canvas
    return Image.fromarray(arr)


def test_same_coat_is_close_and_other_coats_far() -> None:
    emb = CoatEmbedder({"kind": "coat"})
    white, white2 = _coat([(240, 240, 235)]), _coat([(238, 240, 236)], size=64)
    calico = _coat([(240, 240, 235), (200, 120, 40), (20, 20, 20)])
    ginger = _coat([(210, 110, 40)])
    v = emb.embed([white, white2, calico, ginger])
    assert v.shape == (4, emb.dim) and emb.dim == 12 * 4 * 4
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sims = v @ v.T
    assert sims[0, 1] > 0.8  # the same white coat at another size
    assert sims[0, 3] < 0.05  # white and ginger share no colour bin
    assert sims[0, 3] < sims[0, 2] < sims[0, 1]  # a calico shares its white patch


def test_cut_out_black_background_is_ignored() -> None:
    emb = CoatEmbedder({"kind": "coat", "centre": 1.0})
    ginger = _coat([(210, 110, 40)])
    cut_out = _coat([(210, 110, 40)], background=(0, 0, 0))
    on_grey = _coat([(210, 110, 40)], background=(128, 128, 128))
    v = emb.embed([ginger, cut_out, on_grey])
    # three quarters of the cut-out is black: counted, it would leave a cosine of about 0.5, as the grey frame does
    assert float(v[0] @ v[1]) > 0.8 > 0.6 > float(v[0] @ v[2])


def test_coat_is_a_configured_kind_with_a_stable_id() -> None:
    spec = {"kind": "coat", "bins": [8, 3, 3], "centre": 0.6}
    emb = build_embedder(spec, None)
    assert emb.dim == 72 and emb.model_id == embedder_id(spec, None) == "coat:hsv8x3x3:centre0.6"
    for bad in ({"bins": [8, 3]}, {"bins": [0, 3, 3]}, {"centre": 0.0}, {"centre": "wide"}):
        with pytest.raises(ModelError):
            CoatEmbedder({"kind": "coat", **bad})
