"""Photo level → listing level.

A listing carries several photos and a photo several animals, so a listing owns a contiguous run of detection
vectors. Two listings' image similarity is their **best detection pair** (the same animal seen in any photo of each),
plus a small **evidence bonus** when more than one detection pair clears the agreement threshold (several photos
of the same animal agreeing are stronger evidence than one lucky pair).

Two code paths compute the same numbers: :func:`tile_image_terms` for a dense tile of listings (one matrix product
over their detections, then segment max, agreeing pairs counted sparsely), and :func:`pair_image_terms` for an
explicit list of pairs (padded per-listing detection sets). Tests check they agree.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")
AGREE_BONUS = 0.05
"""Evidence added per extra agreeing detection pair (in fused-score units)."""
AGREE_CAP = 3
"""At most this many extra agreeing pairs count."""


def evidence_bonus(agreeing: torch.Tensor) -> torch.Tensor:
    return AGREE_BONUS * (agreeing.to(torch.float32) - 1.0).clamp(0.0, float(AGREE_CAP))


def _segment_rows(values: torch.Tensor, owner: torch.Tensor, n: int, reduce: str) -> torch.Tensor:
    """Reduce the rows of ``values`` (d, m) into ``n`` listing rows by ``owner`` (d,) → (n, m)."""
    fill = NEG_INF if reduce == "amax" else 0.0
    out = torch.full((n, values.shape[1]), fill, dtype=values.dtype, device=values.device)
    index = owner[:, None].expand(-1, values.shape[1])
    return out.scatter_reduce_(0, index, values, reduce=reduce, include_self=True)


def _one_each(owner: torch.Tensor, n: int) -> bool:
    return owner.shape[0] == n and bool((owner == torch.arange(n, device=owner.device)).all())


def tile_image_terms(
    a: torch.Tensor,
    a_owner: torch.Tensor,
    n_a: int,
    b: torch.Tensor,
    b_owner: torch.Tensor,
    n_b: int,
    agree_threshold: float,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]:
    """Best detection-pair similarity (n_a, n_b), -inf where a side has no detection, and the listing pairs with
    detection pairs at or above ``agree_threshold`` as (rows, columns, counts). ``*_owner``: listing index (0-based,
    within the tile) of each detection row.

    The counts are kept sparse: only a few pairs clear the threshold (it lies 2.5 background spreads up), and the
    bonus needs two agreeing pairs. When every listing has exactly one detection no count can exceed one: None."""
    sim = a @ b.T
    one_a = _one_each(a_owner, n_a)  # every listing has exactly one detection: rows already are listings
    one_b = _one_each(b_owner, n_b)
    if one_a and one_b:
        return sim, None
    hit_a, hit_b = (sim >= agree_threshold).nonzero(as_tuple=True)
    pair, counts = torch.unique(a_owner[hit_a] * n_b + b_owner[hit_b], return_counts=True)
    best = sim
    if not one_a:
        best = _segment_rows(best, a_owner, n_a, "amax")
    if not one_b:
        best = _segment_rows(best.T.contiguous(), b_owner, n_b, "amax").T
    return best, (pair // n_b, pair % n_b, counts)


def pair_image_terms(
    a_pad: torch.Tensor,
    a_mask: torch.Tensor,
    b_pad: torch.Tensor,
    b_mask: torch.Tensor,
    agree_threshold: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For n explicit pairs given as padded detection sets (n, P, d) / (n, Q, d) with masks (n, P) / (n, Q):
    best similarity (n,), agreeing pair count (n,), and the positions (n,), (n,) of the best pair."""
    sim = torch.einsum("npd,nqd->npq", a_pad, b_pad)
    valid = a_mask[:, :, None] & b_mask[:, None, :]
    sim = torch.where(valid, sim, torch.full_like(sim, NEG_INF))
    flat = sim.flatten(1)
    best, pos = flat.max(dim=1)
    agree = ((sim >= agree_threshold) & valid).flatten(1).sum(1).to(torch.int32)
    q = sim.shape[2]
    return best, agree, pos // q, pos % q
