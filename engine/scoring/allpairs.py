"""Blocked exact all-pairs scoring with a running top-k per row and per column.

The score matrix of N rows × M columns is never materialised: rows and columns are cut into tiles (at most
``tile_size`` vectors per side), each tile is scored with one dense matrix product (plus whatever the caller's
``score_tile`` adds), and only the ``k`` best entries per row and per column survive each tile. Peak memory is
O(tile_size² + (N + M)·k), whatever N and M are. Results are exact: the same as scoring the whole matrix at once,
whatever the tile size (ties broken by the lower column / row index).

Runs on the GPU when asked (``device='cuda'`` or ``'auto'`` with one present), in fp32 on the CPU (bf16 is ~10×
slower than fp32 on CPUs without AMX).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from engine.errors import HomewardError

NEG_INF = float("-inf")


def resolve_device(device: str | None) -> torch.device:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; an explicit ``cuda`` without one is an error."""
    name = (device or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HomewardError(f"match.device is {device!r} but no CUDA GPU is visible; use 'auto' or 'cpu'")
    if name != "cpu" and not name.startswith("cuda"):
        raise HomewardError(f"match.device must be auto, cpu or cuda[:N], got {device!r}")
    return torch.device(name)


def tile_bounds(weights: Sequence[int] | np.ndarray, tile_size: int) -> list[tuple[int, int]]:
    """Cut ``len(weights)`` items into contiguous tiles of at most ``tile_size`` items whose summed weight (e.g.
    detection vectors per listing) also stays within ``tile_size`` — except an item heavier than the tile alone."""
    if tile_size < 1:
        raise HomewardError(f"match.tile_size must be ≥ 1, got {tile_size}")
    w = np.maximum(np.asarray(weights, dtype=np.int64), 1)
    bounds: list[tuple[int, int]] = []
    start, acc = 0, 0
    for i, wi in enumerate(w):
        if i > start and (acc + wi > tile_size or i - start >= tile_size):
            bounds.append((start, i))
            start, acc = i, 0
        acc += int(wi)
    if start < len(w):
        bounds.append((start, len(w)))
    return bounds


@dataclass
class TopK:
    """Best ``k`` per row and per column. Missing entries (fewer than k finite scores) have index -1."""

    row_idx: torch.Tensor  # (N, k) int64, column indices, best first
    row_score: torch.Tensor  # (N, k) float32
    col_idx: torch.Tensor  # (M, k) int64, row indices, best first
    col_score: torch.Tensor  # (M, k) float32

    def row_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(row, col, score, rank 1-based) of every kept row entry."""
        return _flatten(self.row_idx, self.row_score, transpose=False)

    def col_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(row, col, score, rank 1-based) of every kept column entry."""
        return _flatten(self.col_idx, self.col_score, transpose=True)


def _flatten(idx: torch.Tensor, score: torch.Tensor, transpose: bool):
    n, k = idx.shape
    owner = np.repeat(np.arange(n), k)
    other = idx.reshape(-1).numpy()
    sc = score.reshape(-1).numpy()
    rank = np.tile(np.arange(1, k + 1), n)
    keep = (other >= 0) & np.isfinite(sc)
    owner, other, sc, rank = owner[keep], other[keep], sc[keep], rank[keep]
    return (other, owner, sc, rank) if transpose else (owner, other, sc, rank)


def _order(s: torch.Tensor, i: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort candidate lists by (score desc, index asc), so equal scores rank in index order."""
    o = torch.argsort(i, dim=dim, stable=True)
    s, i = torch.gather(s, dim, o), torch.gather(i, dim, o)
    o = torch.argsort(-s, dim=dim, stable=True)
    return torch.gather(s, dim, o), torch.gather(i, dim, o)


def _merge(best_s: torch.Tensor, best_i: torch.Tensor, new_s: torch.Tensor, new_i: torch.Tensor, k: int):
    """Merge two (n, k') candidate lists into the best k (ordered by score, then index)."""
    s = torch.cat([best_s, new_s], dim=1)
    i = torch.cat([best_i, new_i], dim=1)
    top_s, pos = torch.topk(s, k, dim=1, sorted=True)
    return _order(top_s, torch.gather(i, 1, pos), 1)


def _tile_topk(scores: torch.Tensor, k: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    kk = min(k, scores.shape[dim])
    return torch.topk(scores, kk, dim=dim, sorted=False)


def _col_candidates(tile: torch.Tensor, kth: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column, the (at most k) tile entries that beat the column's current k-th best, as (c, k) lists.

    Once every column holds k finite scores, few entries of a new row tile can enter its list (about k/t per
    column after t tiles), so one comparison pass plus a sparse gather beats a strided top-k over the whole tile."""
    n_cols = tile.shape[1]
    rows, cols = (tile > kth[None, :]).nonzero(as_tuple=True)
    new_s = torch.full((n_cols, k), NEG_INF, dtype=tile.dtype, device=tile.device)
    new_i = torch.full((n_cols, k), -1, dtype=torch.int64, device=tile.device)
    if rows.numel():
        vals = tile[rows, cols]
        order = torch.argsort(-vals, stable=True)
        rows, cols, vals = rows[order], cols[order], vals[order]
        order = torch.argsort(cols, stable=True)
        rows, cols, vals = rows[order], cols[order], vals[order]
        counts = torch.bincount(cols, minlength=n_cols)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(cols.numel(), device=tile.device) - starts[cols]
        keep = rank < k
        new_s[cols[keep], rank[keep]] = vals[keep]
        new_i[cols[keep], rank[keep]] = rows[keep]
    return new_s, new_i


ScoreTile = Callable[[int, int, int, int], torch.Tensor]
"""``score_tile(r0, r1, c0, c1)`` → (r1-r0, c1-c0) float32 scores on the working device; -inf rules a pair out."""


def blocked_topk(
    n_rows: int,
    n_cols: int,
    k: int,
    score_tile: ScoreTile,
    row_tiles: Sequence[tuple[int, int]],
    col_tiles: Sequence[tuple[int, int]],
    *,
    device: torch.device | str = "cpu",
    want_cols: bool = True,
) -> TopK:
    """Run ``score_tile`` over every (row tile, column tile) and keep the best ``k`` per row and per column."""
    dev = torch.device(device)
    k = max(1, int(k))
    row_s = torch.full((n_rows, k), NEG_INF, dtype=torch.float32)
    row_i = torch.full((n_rows, k), -1, dtype=torch.int64)
    col_s = torch.full((n_cols, k), NEG_INF, dtype=torch.float32, device=dev)
    col_i = torch.full((n_cols, k), -1, dtype=torch.int64, device=dev)
    for r0, r1 in row_tiles:
        run_s = torch.full((r1 - r0, k), NEG_INF, dtype=torch.float32, device=dev)
        run_i = torch.full((r1 - r0, k), -1, dtype=torch.int64, device=dev)
        for c0, c1 in col_tiles:
            tile = score_tile(r0, r1, c0, c1)
            ts, ti = _tile_topk(tile, k, dim=1)
            run_s, run_i = _merge(run_s, run_i, ts, ti + c0, k)
            if want_cols:
                kth = col_s[c0:c1, k - 1]
                if bool(torch.isfinite(kth).all()):
                    cs, ci = _col_candidates(tile, kth, k)
                else:
                    cs, ci = _tile_topk(tile, k, dim=0)
                    cs, ci = cs.T, ci.T
                ci = torch.where(ci >= 0, ci + r0, ci)
                col_s[c0:c1], col_i[c0:c1] = _merge(col_s[c0:c1], col_i[c0:c1], cs, ci, k)
        run_i[~torch.isfinite(run_s)] = -1
        row_s[r0:r1], row_i[r0:r1] = run_s.cpu(), run_i.cpu()
    col_i[~torch.isfinite(col_s)] = -1
    return TopK(row_i, row_s, col_i.cpu(), col_s.cpu())


def cosine_topk(
    left: np.ndarray | torch.Tensor,
    right: np.ndarray | torch.Tensor,
    k: int,
    *,
    tile_size: int = 4096,
    device: str | None = "auto",
    want_cols: bool = True,
) -> TopK:
    """Plain all-pairs dot products (cosine for L2-normalised rows) with top-k per row and column."""
    dev = resolve_device(device)
    a = torch.as_tensor(left, dtype=torch.float32)
    b = torch.as_tensor(right, dtype=torch.float32)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise HomewardError(f"cosine_topk needs two (n, d) matrices of equal d, got {tuple(a.shape)} {tuple(b.shape)}")
    on_dev = dev.type != "cpu"
    if on_dev:  # keep the column side resident; stream the row side tile by tile
        b = b.to(dev)

    def score(r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        return a[r0:r1].to(dev, non_blocking=True) @ b[c0:c1].T

    return blocked_topk(
        a.shape[0],
        b.shape[0],
        k,
        score,
        tile_bounds(np.ones(a.shape[0]), tile_size),
        tile_bounds(np.ones(b.shape[0]), tile_size),
        device=dev,
        want_cols=want_cols,
    )
