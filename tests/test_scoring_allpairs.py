"""Blocked all-pairs top-k is exact: equal to sorting the full score matrix, whatever the tile size."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from engine.errors import HomewardError
from engine.scoring.allpairs import (
    EMPTY,
    blocked_topk,
    cosine_topk,
    pack,
    resolve_device,
    tile_bounds,
    tile_for,
    unpack,
)


def _brute(a: np.ndarray, b: np.ndarray, k: int):
    full = a @ b.T
    rows = np.argsort(-full, axis=1, kind="stable")[:, :k]
    cols = np.argsort(-full, axis=0, kind="stable")[:k].T
    return full, rows, cols


@pytest.mark.parametrize(("tile", "n", "m"), [(1, 23, 17), (7, 60, 45), (64, 300, 170), (10_000, 300, 170)])
def test_topk_equals_full_sort(tile: int, n: int, m: int) -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, 32)).astype(np.float32)
    b = rng.standard_normal((m, 32)).astype(np.float32)
    full, rows, cols = _brute(a, b, 5)
    top = cosine_topk(a, b, 5, tile_size=tile, device="cpu")
    assert np.array_equal(top.row_idx.numpy(), rows)
    assert np.array_equal(top.col_idx.numpy(), cols)
    assert np.allclose(top.row_score.numpy(), np.take_along_axis(full, rows, 1), atol=1e-5)
    assert np.allclose(top.col_score.numpy(), np.take_along_axis(full.T, cols, 1), atol=1e-5)


def test_k_larger_than_columns_pads_with_minus_one() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((4, 8)), rng.standard_normal((3, 8))
    top = cosine_topk(a, b, 5, tile_size=2, device="cpu")
    assert (top.row_idx[:, 3:] == -1).all() and (top.row_idx[:, :3] >= 0).all()
    r, _c, _s, rank = top.row_pairs()
    assert len(r) == 12 and set(rank.tolist()) == {1, 2, 3}


def test_ruled_out_pairs_never_enter_topk() -> None:
    scores = torch.tensor([[0.9, float("-inf"), 0.1], [float("-inf"), float("-inf"), float("-inf")]])

    def tile(r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        return scores[r0:r1, c0:c1]

    top = blocked_topk(2, 3, 2, tile, [(0, 1), (1, 2)], [(0, 2), (2, 3)])
    assert top.row_idx.tolist() == [[0, 2], [-1, -1]]
    assert top.col_idx.tolist() == [[0, -1], [-1, -1], [0, -1]]
    assert len(top.col_pairs()[0]) == 2


def test_tile_bounds_bound_the_weight() -> None:
    weights = [1, 3, 1, 1, 5, 1, 2]
    bounds = tile_bounds(weights, 4)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(weights)
    assert all(b[0] == a[1] for a, b in itertools.pairwise(bounds))
    for s, e in bounds:
        assert sum(weights[s:e]) <= 4 or e - s == 1  # only a single over-weight item may exceed the tile
    with pytest.raises(HomewardError, match="tile_size"):
        tile_bounds(weights, 0)


def test_tile_size_defaults_by_device_unless_configured() -> None:
    assert tile_for(None, torch.device("cpu")) == 4096
    assert tile_for(None, torch.device("cuda")) == 16384
    assert tile_for(128, torch.device("cuda")) == 128


def test_device_resolution() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(HomewardError, match="auto, cpu or cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(HomewardError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_bench_match_reports_ratio_and_memory(settings) -> None:
    from ray_jobs.bench.match import bench_match

    out = bench_match(settings.with_overrides({"match": {"tile_size": 128}}), n=[300, 500], dim=32, top_k=5)
    assert [r["n"] for r in out["runs"]] == [300, 500] and out["dim"] == 32 and out["device"] == "cpu"
    for run in out["runs"]:
        assert run["pairs"] == run["n"] ** 2 and run["pairs_per_s"] > 0 and run["gflops"] > 0
        assert run["ratio"] > 0 and run["reference_gflops"] > 0
        assert run["topk_spot_check_mismatches"] == 0
        assert run["tiles"] == (-(-run["n"] // 128)) ** 2 and run["peak_scoring_mb"] >= 0
    assert out["ratio_min"] == min(r["ratio"] for r in out["runs"]) and out["bar"] == 0.7
    fused = out["fused_scorer"]
    assert fused["n"] == 300 and fused["eager"]["pairs_per_s"] > 0 and fused["compiled"]["pairs_per_s"] > 0
    assert out["fused_ratio"] == fused["fused_ratio"] > 0 and fused["fused_ratio_eager"] > 0


def test_packed_keys_order_by_score_then_lower_index_and_round_trip() -> None:
    scores = torch.tensor([0.5, -0.25, 0.5, float("-inf"), 0.0, -0.0, 3.0e38, -1.0e-30])
    idx = torch.tensor([7, 1, 3, -1, 0, 4, 2**31 - 1, 5])
    keys = pack(scores, idx)
    back_s, back_i = unpack(keys)
    assert torch.equal(back_s, scores) and torch.equal(back_i, idx)
    order = torch.argsort(keys, descending=True).tolist()
    expected = sorted(range(len(idx)), key=lambda j: (-scores[j].item(), idx[j].item()))
    assert order[:3] == [6, 2, 0]  # largest score; then the tie at 0.5 goes to the lower index
    assert [j for j in order if j not in (4, 5)] == [j for j in expected if j not in (4, 5)]
    assert keys.min().item() == EMPTY == keys[3].item()
