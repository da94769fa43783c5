"""Scoring the blocks of one lost × found split: exact tiled all-pairs in each block, top-k per listing kept.

The blocks come from :mod:`engine.scoring.blocking`; ``homeward match`` runs this in-process or as one Ray task per
shard of blocks (the function and its arguments pickle), the benchmarks call it directly.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from engine import progress
from engine.scoring.allpairs import blocked_topk, resolve_device, tile_bounds
from engine.scoring.blocking import Block
from engine.scoring.fuse import ScoreParams, Scorer, Side

log = logging.getLogger(__name__)

COMPACT_ENTRIES = 2_000_000
"""Per-found candidates gathered across blocks are cut to the best k per found listing whenever this many pile up
beyond what the last cut kept (at least this many, at most twice the kept ones): with the capped radius a found
listing lies in ~200 small blocks, and keeping every block's candidates until the end had cost ~4 GB at 200k
listings. The bound grows with what a cut keeps because the kept ones alone can exceed it: at 400k listings the
255k found listings keep 2.5 M candidates, and a fixed bound of 2 M cut (sorted 2.5 M entries) after every one of
7,743 blocks — 96 % of a scoring run that had not finished after 90 minutes."""


def best_per_found(lost_g: np.ndarray, found_g: np.ndarray, fused: np.ndarray, k: int):
    """A found listing is scored in several blocks: keep its best k over all of them (ties: lower lost index),
    ranked → (lost, found, fused, rank)."""
    if len(found_g) == 0:
        return lost_g.astype(np.int64), found_g.astype(np.int64), fused, np.zeros(0, np.int64)
    order = np.lexsort((lost_g, -fused, found_g))
    lost_g, found_g, fused = lost_g[order], found_g[order], fused[order]
    start = np.r_[0, np.flatnonzero(np.diff(found_g)) + 1]
    counts = np.diff(np.r_[start, len(found_g)])
    rank = np.arange(len(found_g)) - np.repeat(start, counts) + 1
    keep = rank <= k
    return lost_g[keep].astype(np.int64), found_g[keep].astype(np.int64), fused[keep], rank[keep]


def score_blocks(
    lost: Side,
    found: Side,
    params: ScoreParams,
    blocks: list[Block],
    k: int,
    tile_size: int,
    device: str,
    compile: bool = False,
) -> tuple[np.ndarray, ...]:
    """Top-k per lost and per found listing (within these blocks), as global-index arrays
    (lost, found, fused, rank) for rows and for columns."""
    dev = resolve_device(device)
    rows: list[tuple[np.ndarray, ...]] = []
    cols: list[tuple[np.ndarray, ...]] = []
    # pairs, not tiles: a region's blocks differ in size by orders of magnitude
    bar = progress.bar(sum(b.pairs for b in blocks), "match", " pairs", log, unit_scale=True)
    pending, limit = 0, COMPACT_ENTRIES
    for block in blocks:
        sub_l, sub_f = lost.take(block.lost), found.take(block.found)
        scorer = Scorer(sub_l, sub_f, params, dev, compile=compile)

        def scored_tile(r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
            out = scorer.tile(r0, r1, c0, c1)  # noqa: B023 (called only inside this iteration's blocked_topk)
            bar.update((r1 - r0) * (c1 - c0))
            return out

        top = blocked_topk(
            sub_l.n,
            sub_f.n,
            k,
            scored_tile,
            tile_bounds(sub_l.det_counts.numpy(), tile_size),
            tile_bounds(sub_f.det_counts.numpy(), tile_size),
            device=dev,
        )
        r, c, s, rank = top.row_pairs()
        rows.append((block.lost[r], block.found[c], s, rank))
        r, c, s, _ = top.col_pairs()
        cols.append((block.lost[r], block.found[c], s))
        pending += len(r)
        if pending > limit:
            cols = [best_per_found(*(np.concatenate(p) for p in zip(*cols, strict=True)), k)[:3]]
            pending = len(cols[0][0])
            limit = max(COMPACT_ENTRIES, 2 * pending)
    bar.close()
    cat = [np.concatenate(p) if p else np.zeros(0) for p in zip(*rows, strict=True)] if rows else [np.zeros(0)] * 4
    catc = [np.concatenate(p) if p else np.zeros(0) for p in zip(*cols, strict=True)] if cols else [np.zeros(0)] * 3
    return (*cat, *catc)
