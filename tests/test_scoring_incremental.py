"""The sorted-key helpers of incremental selection give exactly what the numpy calls they replace give."""

from __future__ import annotations

import numpy as np
import pytest

from engine.scoring.incremental import contains, lex_order, rank_within, unique_keys


def test_unique_keys_and_contains_are_np_unique_and_np_isin() -> None:
    rng = np.random.default_rng(3)
    keys = rng.integers(-50, 400, 2000)
    assert np.array_equal(unique_keys(keys), np.unique(keys))
    assert unique_keys(keys[:0]).shape == (0,)
    members = unique_keys(rng.integers(0, 300, 150))
    probe = rng.integers(-10, 420, 3000)
    assert np.array_equal(contains(members, probe), np.isin(probe, members))
    assert not contains(members[:0], probe).any()


@pytest.mark.parametrize("span", [1_000, 2**40], ids=["packed", "too-wide-to-pack"])
def test_lex_order_is_np_lexsort_with_ties_nan_and_infinities(span: int) -> None:
    rng = np.random.default_rng(5)
    n = 5000
    owner = rng.integers(0, 40, n)
    other = rng.integers(0, span, n)
    fused = np.round(rng.normal(size=n), 1)  # many ties
    fused[rng.integers(0, n, 200)] = -np.inf
    fused[rng.integers(0, n, 50)] = np.nan
    other[:30] = other[30:60]  # whole triples repeated too: the order among them is the input order
    owner[:30], fused[:30] = owner[30:60], fused[30:60]
    assert np.array_equal(lex_order(other, -fused, owner), np.lexsort((other, -fused, owner)))
    z = rng.integers(0, 2**32, n)
    z[:100] = np.iinfo(np.int64).max  # z_order's code for no place
    assert np.array_equal(lex_order(owner, z), np.lexsort((owner, z)))


def test_rank_within_keeps_the_k_best_finite_pairs_per_owner_ties_to_the_lower_index() -> None:
    owner = np.array([0, 0, 0, 0, 1, 1, 1])
    other = np.array([5, 2, 9, 1, 3, 4, 0])
    fused = np.array([0.5, 0.5, 0.9, -np.inf, np.nan, 0.1, 0.2])
    assert rank_within(owner, other, fused, 2).tolist() == [0, 2, 1, 0, 0, 2, 1]
