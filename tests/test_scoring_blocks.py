"""Scoring blocks: per-found candidates gathered across blocks are cut to the best k rarely, to the same result."""

from __future__ import annotations

import numpy as np

from engine.scoring import blocks as blocks_mod
from engine.scoring.blocking import Block
from engine.scoring.blocks import best_per_found, score_blocks
from tests.test_scoring_fuse import make_side, params


def test_per_found_candidates_are_cut_rarely_and_to_the_same_result(monkeypatch) -> None:
    """Once the kept candidates alone exceed the bound, a fixed bound cut after every block (a sort of everything
    kept per block: 96 % of a 400k-listing match); the bound now grows with what a cut keeps."""
    rng = np.random.default_rng(3)
    lost, found = make_side(120, [1] * 120, rng), make_side(80, [2] * 80, rng)
    blocks = [
        Block(np.arange(i % 60, i % 60 + 3), np.sort(rng.choice(80, 10, replace=False))) for i in range(0, 120, 3)
    ]
    k = 3

    def final(out: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        return [*out[:4], *best_per_found(*out[4:7], k)]

    uncut = final(score_blocks(lost, found, params(), blocks, k, 64, "cpu"))
    cuts: list[int] = []
    real = blocks_mod.best_per_found
    monkeypatch.setattr(blocks_mod, "best_per_found", lambda *a: cuts.append(len(a[0])) or real(*a))
    monkeypatch.setattr(blocks_mod, "COMPACT_ENTRIES", 50)
    cut = final(score_blocks(lost, found, params(), blocks, k, 64, "cpu"))
    for a, b in zip(uncut, cut, strict=True):
        np.testing.assert_array_equal(a, b)
    assert 1 <= len(cuts) <= 10, f"{len(cuts)} cuts for {len(blocks)} blocks"  # a fixed bound: 39
