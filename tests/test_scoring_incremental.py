"""The sorted-key helpers of incremental selection give exactly what the numpy calls they replace give."""

from __future__ import annotations

import numpy as np
import pytest

from engine.scoring.incremental import Previous, contains, lex_order, rank_within, unique_keys


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


def test_previous_pairs_are_named_by_their_ids_and_a_pair_of_no_previous_run_is_refused() -> None:
    """A run keeps a previous pair by its id: the id of each asked pair, in the order asked; pairs whose listing is
    gone (-1) are never matched, and a pair the previous run did not have is an error, not a wrong id."""
    lost, found = np.array([0, 2, -1, 1, 2]), np.array([1, 0, 3, 1, 3])
    previous = Previous(lost, found, np.zeros(5), np.ones(5, bool), np.ones(5, bool), np.array([10, 11, 12, 13, 14]))
    assert previous.ids_of(np.array([2, 0, 1]), np.array([3, 1, 1]), n_found=4).tolist() == [14, 10, 13]
    assert previous.ids_of(np.zeros(0, np.int64), np.zeros(0, np.int64), n_found=4).tolist() == []
    with pytest.raises(ValueError, match="not one of the previous run's"):
        previous.ids_of(np.array([2]), np.array([1]), n_found=4)
    with pytest.raises(ValueError, match="not one of the previous run's"):
        Previous.empty().ids_of(np.array([0]), np.array([0]), n_found=4)
