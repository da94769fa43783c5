"""``homeward bench match``: the all-pairs scoring rate against a plain torch matrix product, same shapes, same run.

For each N (listings per side) two N × dim sets of L2-normalised vectors are scored with the production code path
(:func:`engine.scoring.allpairs.cosine_topk`: tiles of ``match.tile_size`` rows per side, running top-k per row
**and** per column), timed end to end. The reference is the bare matrix product of the same tiles (``a @ b.T``, no
top-k, no bookkeeping) timed in the same process. When timing every reference tile would take longer than
``REFERENCE_BUDGET_S``, a spread sample of tiles is timed (half before, half after the scoring run, so load drift
on a shared machine hits both alike) and the reference time is extrapolated to all tiles; the output says so
(``reference_extrapolated``, ``reference_tiles_timed`` of ``tiles``).

Figures per N: pairs scored per second, achieved GFLOP/s (2·N²·dim per run), the reference GFLOP/s, their ratio
(bar ≥ 0.7), peak memory (sampled RSS above the inputs on CPU; ``torch.cuda.max_memory_allocated`` on GPU), and a
top-k spot check against exact rows. The first N is also scored with the full fused scorer of ``homeward match``
(image + text + attributes + geo/time, one detection per listing, top-k per row and column) to show what the other
terms cost: ``fused_ratio`` = its pairs/s ÷ the bare matmul pairs/s of the same image vectors and tiles, timed in
the same run (half before, half after). It is measured with the kernel compiled, as ``homeward match`` runs large
jobs (the compile, a one-off per process, is timed apart: ``compile_seconds``), and eagerly
(``fused_ratio_eager``), as small runs score.
"""

from __future__ import annotations

import logging
import resource
import time
from typing import Any

import numpy as np
import torch

from engine.config import Settings
from engine.scoring.allpairs import blocked_topk, cosine_topk, resolve_device, tile_bounds, tile_for
from ray_jobs.memory import PeakRss, rss_mb

log = logging.getLogger(__name__)
DEFAULT_N = (10_000, 50_000, 200_000)
REFERENCE_BUDGET_S = 60.0
"""Longest we spend timing the reference per N; beyond it, tiles are sampled and extrapolated."""
BAR = 0.7
FUSED_BAR = 0.5


def _vectors(n: int, dim: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty((n, dim), dtype=torch.float32)
    for s in range(0, n, 16_384):  # in slices: no second full-size temporary
        block = torch.randn((min(16_384, n - s), dim), generator=gen)
        out[s : s + block.shape[0]] = block / block.norm(dim=1, keepdim=True)
    return out


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _time_reference(a: torch.Tensor, b: torch.Tensor, tiles: list[tuple[tuple[int, int], tuple[int, int]]], dev):
    b_dev = b.to(dev) if dev.type != "cpu" else b
    t0 = time.perf_counter()
    for (r0, r1), (c0, c1) in tiles:
        out = a[r0:r1].to(dev, non_blocking=True) @ b_dev[c0:c1].T
        del out
    _sync(dev)
    return time.perf_counter() - t0


def _spot_check(a: torch.Tensor, b: torch.Tensor, top: Any, k: int, rows: int = 8) -> int:
    """Recompute ``rows`` rows exactly; count those whose top-k indices differ (0 expected)."""
    pick = np.linspace(0, a.shape[0] - 1, rows).astype(int)
    bad = 0
    for r in pick:
        exact = torch.topk(a[r] @ b.T, k).indices
        got = top.row_idx[r]
        if set(exact.tolist()) != set(got.tolist()):
            bad += 1
    return bad


def _fused_rate(n: int, dim: int, k: int, tile: int, dev: torch.device) -> dict[str, Any]:
    """The full fused score of ``homeward match`` on n × n synthetic listings (one vector each, 384-d text)."""
    from engine.scoring import attributes
    from engine.scoring.fuse import ScoreParams, Scorer, Side, background_stats

    rng = np.random.default_rng(0)

    def side(seed: int) -> Side:
        text = _vectors(n, 384, seed + 100)
        return Side(
            listing_ids=np.arange(n).astype(str).astype(object),
            species=torch.from_numpy(rng.integers(0, 3, n)),
            lat=torch.from_numpy((47.6 + rng.normal(0, 0.1, n)).astype(np.float32)),
            lon=torch.from_numpy((-122.3 + rng.normal(0, 0.1, n)).astype(np.float32)),
            day=torch.from_numpy(rng.integers(0, 60, n).astype(np.float32)),
            attrs=attributes.encode(
                rng.choice(["male", "female", None], n).tolist(),
                rng.choice(["small", "medium", "large", None], n).tolist(),
                rng.choice(["black", "white", "brown", "red", None], n).tolist(),
                rng.choice(["labrador", "poodle", "husky mix", None], n).tolist(),
            ),
            det_emb=_vectors(n, dim, seed),
            det_owner=torch.arange(n),
            det_photo=np.arange(n).astype(str).astype(object),
            text=text,
            has_text=torch.ones(n, dtype=torch.bool),
        )

    lost, found = side(1), side(2)
    params = background_stats(lost, found, ScoreParams(weights={}))
    params = ScoreParams(weights={"image": 0.55, "text": 0.15, "attributes": 0.15, "geo": 0.1, "time": 0.05},
                         img_center=params.img_center, img_scale=params.img_scale,
                         txt_center=params.txt_center, txt_scale=params.txt_scale)  # fmt: skip
    bounds = tile_bounds(np.ones(n), tile)
    tiles = [(r, c) for r in bounds for c in bounds]
    ref_s = _time_reference(lost.det_emb, found.det_emb, tiles[0::2], dev)
    out: dict[str, Any] = {"n": n}
    for compiled in (True, False):
        scorer = Scorer(lost, found, params, dev, compile=compiled)
        t0 = time.perf_counter()
        shapes = {(r1 - r0, c1 - c0): (r0, r1, c0, c1) for (r0, r1), (c0, c1) in tiles}
        for args in shapes.values():  # each tile shape once: compiles and warms up
            scorer.tile(*args)
        _sync(dev)
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        blocked_topk(n, n, k, scorer.tile, bounds, bounds, device=dev)
        _sync(dev)
        secs = time.perf_counter() - t0
        name = "compiled" if compiled else "eager"
        out[name] = {"seconds": round(secs, 3), "pairs_per_s": round(n * n / secs)}
        if compiled:
            out[name]["compile_seconds"] = round(warm, 1)
    ref_s = (ref_s + _time_reference(lost.det_emb, found.det_emb, tiles[1::2], dev)) or 1e-9
    out["reference_pairs_per_s"] = round(n * n / ref_s)
    out["fused_ratio"] = round(out["compiled"]["pairs_per_s"] / out["reference_pairs_per_s"], 3)
    out["fused_ratio_eager"] = round(out["eager"]["pairs_per_s"] / out["reference_pairs_per_s"], 3)
    return out


def bench_match(
    settings: Settings,
    *,
    n: list[int] | None = None,
    dim: int = 2752,
    device: str | None = None,
    top_k: int = 10,
) -> dict:
    """All-pairs scoring with top-k vs a plain torch matmul of the same shapes; pairs/s, GFLOP/s, peak memory.

    Args:
        n: listings per side, one run each (default: 10000 50000 200000)
        dim: vector dimension (default: the cpu profile's embedder, Lite2 + Lite0 + coat histogram: 2752)
        device: auto, cpu or cuda (default: match.device)
        top_k: kept per row and per column
    """
    sizes = list(n) if n else list(DEFAULT_N)
    dev = resolve_device(device or settings.match.device)
    tile = tile_for(settings.match.tile_size, dev)
    runs: list[dict[str, Any]] = []
    for size in sizes:
        log.info("bench match: %d × %d, dim %d, tile %d, on %s", size, size, dim, tile, dev)
        a, b = _vectors(size, dim, 1), _vectors(size, dim, 2)
        bounds = tile_bounds(np.ones(size), tile)
        all_tiles = [(r, c) for r in bounds for c in bounds]
        flops = 2.0 * size * size * dim
        # reference sample: a spread of tiles, half timed before and half after the scoring run
        probe = _time_reference(a, b, all_tiles[:1], dev)  # warm-up and a first estimate
        full_ref = probe * len(all_tiles) <= REFERENCE_BUDGET_S
        if full_ref:
            before, after = all_tiles[: len(all_tiles) // 2], all_tiles[len(all_tiles) // 2 :]
        else:
            m = int(max(4, min(len(all_tiles), REFERENCE_BUDGET_S / max(probe, 1e-6))))
            idx = np.linspace(0, len(all_tiles) - 1, m).astype(int)
            sample = [all_tiles[i] for i in idx]
            before, after = sample[0::2], sample[1::2]
        ref_before = _time_reference(a, b, before, dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        base_rss = rss_mb()
        with PeakRss(interval=0.02) as peak:
            t0 = time.perf_counter()
            top = cosine_topk(a, b, top_k, tile_size=tile, device=str(dev))
            _sync(dev)
            secs = time.perf_counter() - t0
        ref_after = _time_reference(a, b, after, dev)
        timed = len(before) + len(after)
        ref_secs = (ref_before + ref_after) * len(all_tiles) / timed
        run = {
            "n": size,
            "pairs": size * size,
            "seconds": round(secs, 3),
            "pairs_per_s": round(size * size / secs),
            "gflops": round(flops / secs / 1e9, 2),
            "reference_gflops": round(flops / ref_secs / 1e9, 2),
            "ratio": round(ref_secs / secs, 3),
            "tiles": len(all_tiles),
            "reference_tiles_timed": timed,
            "reference_extrapolated": not full_ref,
            "reference_seconds": round(ref_secs, 3),
            "input_mb": round(2 * size * dim * 4 / 2**20, 1),
            "peak_scoring_mb": round(peak.peak - base_rss, 1),
            "topk_spot_check_mismatches": _spot_check(a, b, top, top_k),
        }
        if dev.type == "cuda":
            run["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
        log.info("bench match: %s", run)
        runs.append(run)
        del a, b, top
    fused = _fused_rate(min(sizes), dim, top_k, tile, dev)
    ratios = [r["ratio"] for r in runs]
    return {
        "bench": "match",
        "device": str(dev),
        "torch_threads": torch.get_num_threads(),
        "dim": dim,
        "top_k": top_k,
        "tile_size": tile,
        "runs": runs,
        "fused_scorer": fused,
        "fused_ratio": fused["fused_ratio"],
        "fused_bar": FUSED_BAR,
        "ratio_min": min(ratios),
        "bar": BAR,
        "meets_bar": min(ratios) >= BAR,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "note": "ratio = plain torch matmul time of the same tiles / scoring time (top-k per row and per column "
        "included); reference tiles are sampled and extrapolated where reference_extrapolated is true",
    }
