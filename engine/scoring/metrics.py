"""Re-identification metrics under one fixed protocol, so numbers stay comparable everywhere.

* **Leave-one-out retrieval**: every image in turn is the query; the gallery is every *other* image of the set
  (``exclude`` masks the query itself). Queries whose identity has no other image in the gallery cannot be answered
  and are skipped (counted in ``skipped_queries``).
* **top-k**: share of queries whose k nearest gallery images include one of the same identity.
* **mAP**: mean over queries of average precision (mean of precision@rank over the ranks of every same-identity
  gallery image).
* **EER / ROC AUC**: over all same-identity vs different-identity (query, gallery) pairs by cosine similarity. AUC
  is the Mann-Whitney probability that a random same pair outscores a random different pair (ties count ½); EER is
  where false accepts equal false rejects, linearly interpolated between ROC points.

All figures are fractions in [0, 1]. Pure torch; exact (no sampling).
"""

from __future__ import annotations

import numpy as np
import torch


def _as_tensor(x: np.ndarray | torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(dtype)


def retrieval_metrics(
    sims: np.ndarray | torch.Tensor,
    query_labels: np.ndarray | torch.Tensor,
    gallery_labels: np.ndarray | torch.Tensor,
    exclude: np.ndarray | torch.Tensor | None = None,
    ks: tuple[int, ...] = (1, 5),
    chunk: int = 512,
) -> dict[str, float]:
    """top-k and mAP of a (queries × gallery) similarity matrix; ``exclude`` marks pairs that are not candidates."""
    s = _as_tensor(sims)
    ql = _as_tensor(query_labels, torch.int64)
    gl = _as_tensor(gallery_labels, torch.int64)
    ex = torch.zeros_like(s, dtype=torch.bool) if exclude is None else _as_tensor(exclude, torch.bool)
    hits = {k: 0 for k in ks}
    ap_sum, answered, skipped = 0.0, 0, 0
    for start in range(0, s.shape[0], chunk):
        block = s[start : start + chunk].clone()
        bex = ex[start : start + chunk]
        block[bex] = float("-inf")
        same = (ql[start : start + chunk, None] == gl[None, :]) & ~bex
        order = torch.argsort(block, dim=1, descending=True, stable=True)
        rel = torch.gather(same, 1, order)
        n_pos = rel.sum(1)
        ok = n_pos > 0
        skipped += int((~ok).sum())
        answered += int(ok.sum())
        for k in ks:
            hits[k] += int((rel[:, :k].any(1) & ok).sum())
        cum = torch.cumsum(rel.to(torch.float64), 1)
        ranks = torch.arange(1, rel.shape[1] + 1, dtype=torch.float64)[None, :]
        prec_at_hits = torch.where(rel, cum / ranks, torch.zeros_like(cum))
        ap = prec_at_hits.sum(1) / n_pos.clamp(min=1)
        ap_sum += float(ap[ok].sum())
    out = {f"top{k}": hits[k] / answered if answered else float("nan") for k in ks}
    out["map"] = ap_sum / answered if answered else float("nan")
    out["queries"] = answered
    out["skipped_queries"] = skipped
    return out


def roc_auc_eer(scores: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> dict[str, float]:
    """ROC AUC and EER of ``scores`` for binary ``labels`` (1 = same identity)."""
    s = _as_tensor(scores, torch.float64).flatten()
    y = _as_tensor(labels, torch.bool).flatten()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return {"auc": float("nan"), "eer": float("nan")}
    # AUC by average ranks (Mann-Whitney U), ties get their mean rank
    order = torch.argsort(s, stable=True)
    sorted_s = s[order]
    uniq, inverse, counts = torch.unique_consecutive(sorted_s, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)
    mean_rank = ends - (counts.to(torch.float64) - 1) / 2  # 1-based average rank of each tie group
    ranks = torch.empty_like(s)
    ranks[order] = mean_rank[inverse]
    auc = (float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    # ROC points at each distinct threshold, accepting score >= threshold, from strictest to loosest
    pos_per = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, y[order].to(torch.float64))
    neg_per = counts.to(torch.float64) - pos_per
    tp = torch.cumsum(torch.flip(pos_per, [0]), 0)
    fp = torch.cumsum(torch.flip(neg_per, [0]), 0)
    fpr = torch.cat([torch.zeros(1, dtype=torch.float64), fp / n_neg])
    fnr = torch.cat([torch.ones(1, dtype=torch.float64), 1 - tp / n_pos])
    d = fnr - fpr  # 1 at the strictest point, -1 at the loosest; falls monotonically
    i = int(torch.nonzero(d <= 0)[0])
    if float(d[i]) == 0.0 or i == 0:
        eer = float(fpr[i])
    else:
        a = float(d[i - 1] / (d[i - 1] - d[i]))
        eer = float(fpr[i - 1] + a * (fpr[i] - fpr[i - 1]))
    return {"auc": auc, "eer": eer}


def pair_scores(
    sims: np.ndarray | torch.Tensor,
    query_labels: np.ndarray | torch.Tensor,
    gallery_labels: np.ndarray | torch.Tensor,
    exclude: np.ndarray | torch.Tensor | None = None,
    upper_only: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten a similarity matrix to (scores, same-identity labels), dropping excluded pairs. ``upper_only``: a
    symmetric query = gallery matrix counts each unordered pair once."""
    s = _as_tensor(sims)
    same = _as_tensor(query_labels, torch.int64)[:, None] == _as_tensor(gallery_labels, torch.int64)[None, :]
    keep = torch.ones_like(s, dtype=torch.bool) if exclude is None else ~_as_tensor(exclude, torch.bool)
    if upper_only:
        keep &= torch.triu(torch.ones_like(keep), diagonal=1)
    return s[keep], same[keep]


def reid_metrics(
    query: np.ndarray | torch.Tensor,
    gallery: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    ks: tuple[int, ...] = (1, 5),
) -> dict[str, float]:
    """The full protocol for L2-normalised embeddings: ``query[i]`` is image i as queried (clean or degraded),
    ``gallery[i]`` image i as stored; image i is never its own candidate."""
    q, g = _as_tensor(query), _as_tensor(gallery)
    sims = q @ g.T
    eye = torch.eye(len(labels), dtype=torch.bool)
    out = retrieval_metrics(sims, labels, labels, exclude=eye, ks=ks)
    symmetric = q.shape == g.shape and bool(torch.equal(q, g))
    scores, same = pair_scores(sims, labels, labels, exclude=eye, upper_only=symmetric)
    out.update(roc_auc_eer(scores, same))
    out["pairs_same"] = int(same.sum())
    out["pairs_different"] = int((~same).sum())
    return out
