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


CPU_TILE, GPU_TILE = 4096, 16384


def tile_for(tile_size: int | None, device: torch.device) -> int:
    """``match.tile_size``, or the device's default when it is None."""
    if tile_size is None:
        return GPU_TILE if device.type == "cuda" else CPU_TILE
    return int(tile_size)


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


_LOW = 0xFFFFFFFF


def pack(score: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(float32 score, int index) → one int64 key that orders like (score desc, index asc): the high 32 bits are the
    score's bits made order-preserving as a signed integer, the low 32 bits hold ``2³² − 1 − index`` (index −1, "no
    entry", packs as 0). Keeping a running top-k as keys makes each merge one ``topk`` over k + k integers, where
    merging (score, index) pairs with a tie-break costs two stable sorts and four gathers (~200× slower per tile)."""
    bits = score.to(torch.float32).contiguous().view(torch.int32).to(torch.int64)
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return (bits << 32) | (_LOW - (idx.to(torch.int64) & _LOW))


def unpack(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of :func:`pack`: (float32 scores, int64 indices, −1 where there is no entry)."""
    hi = key >> 32
    score = torch.where(hi < 0, hi ^ 0x7FFFFFFF, hi).to(torch.int32).view(torch.float32)
    idx = _LOW - (key & _LOW)
    return score, torch.where(idx == _LOW, torch.full_like(idx, -1), idx)


def _merge(best: torch.Tensor, new: torch.Tensor, k: int) -> torch.Tensor:
    """The best k keys of two (n, ·) key lists, best first."""
    return torch.topk(torch.cat([best, new], dim=1), k, dim=1, sorted=True).values


def _tile_topk(scores: torch.Tensor, k: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    kk = min(k, scores.shape[dim])
    if dim == 0 and scores.device.type == "cpu":  # a strided top-k down the columns is slower than copy + rows
        values, idx = torch.topk(scores.T.contiguous(), kk, dim=1, sorted=False)
        return values.T, idx.T
    return torch.topk(scores, kk, dim=dim, sorted=False)


def _col_candidates(tile: torch.Tensor, kth: torch.Tensor, k: int, r0: int) -> torch.Tensor:
    """Per column, keys of the (at most k) tile entries that beat the column's current k-th best, as (c, k) keys.

    Once every column holds k finite scores, few entries of a new row tile can enter its list (about k/t per
    column after t tiles), so one comparison pass plus a sparse gather beats a strided top-k over the whole tile."""
    n_cols = tile.shape[1]
    rows, cols = (tile > kth[None, :]).nonzero(as_tuple=True)
    out = torch.full((n_cols, k), EMPTY, dtype=torch.int64, device=tile.device)
    if rows.numel():
        keys = pack(tile[rows, cols], rows + r0)
        order = torch.argsort(keys, descending=True)
        cols, keys = cols[order], keys[order]
        order = torch.argsort(cols, stable=True)
        cols, keys = cols[order], keys[order]
        counts = torch.bincount(cols, minlength=n_cols)
        rank = torch.arange(cols.numel(), device=tile.device) - (torch.cumsum(counts, 0) - counts)[cols]
        keep = rank < k
        out[cols[keep], rank[keep]] = keys[keep]
    return out


EMPTY = int(pack(torch.tensor([NEG_INF]), torch.tensor([-1]))[0])
"""The key of "no entry": score −inf, index −1; every real entry outranks it."""


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
    row_keys = torch.full((n_rows, k), EMPTY, dtype=torch.int64)
    col_keys = torch.full((n_cols, k), EMPTY, dtype=torch.int64, device=dev)
    for r0, r1 in row_tiles:
        run = torch.full((r1 - r0, k), EMPTY, dtype=torch.int64, device=dev)
        for c0, c1 in col_tiles:
            tile = score_tile(r0, r1, c0, c1)
            ts, ti = _tile_topk(tile, k, dim=1)
            run = _merge(run, pack(ts, ti + c0), k)
            if want_cols:
                kth = unpack(col_keys[c0:c1, k - 1])[0]
                if bool(torch.isfinite(kth).all()):
                    new = _col_candidates(tile, kth, k, r0)
                else:
                    cs, ci = _tile_topk(tile, k, dim=0)
                    new = pack(cs.T, ci.T + r0)
                col_keys[c0:c1] = _merge(col_keys[c0:c1], new, k)
        row_keys[r0:r1] = run.cpu()
    row_s, row_i = _finish(row_keys)
    col_s, col_i = _finish(col_keys.cpu())
    return TopK(row_i, row_s, col_i, col_s)


def _finish(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and indices of a key list; entries that never got a finite score have index −1."""
    score, idx = unpack(keys)
    return score, torch.where(torch.isfinite(score), idx, torch.full_like(idx, -1))


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
