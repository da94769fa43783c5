"""Blocking never loses a pair the hard rules keep, and does prune pairs they would rule out anyway."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.scoring.blocking import listing_keys, make_blocks, reachable
from engine.scoring.geo import chord_for_radius, geo_time_terms, haversine_km

RULES = dict(base_radius_km=15.0, max_speed_km_per_day=5.0, max_days=30.0, grace_days=3.0)


def _random_side(n: int, rng: np.random.Generator):
    species = rng.choice([0, 1, 1, 2], n)
    # clustered cities across the globe incl. the poles and the date line, some coordinates and dates missing
    centres = np.array([[47.6, -122.3], [55.75, 37.6], [-33.9, 151.2], [89.9, 0.0], [0.0, 179.99], [0.0, -179.99]])
    c = centres[rng.integers(0, len(centres), n)]
    lat = np.clip(c[:, 0] + rng.normal(0, 1.0, n), -90, 90)
    lon = (c[:, 1] + rng.normal(0, 1.5, n) + 180) % 360 - 180
    lat[rng.random(n) < 0.1] = np.nan
    day = rng.integers(0, 200, n).astype(float)
    day[rng.random(n) < 0.1] = np.nan
    return species, lat, lon, day


def _pairs(blocks) -> int:
    return sum(b.pairs for b in blocks)


@pytest.mark.parametrize("cap, slacked", [(math.inf, False), (60.0, False), (20.0, False), (20.0, True)])
def test_blocks_cover_every_allowed_pair(cap: float, slacked: bool) -> None:
    """``slacked``: some places are a town's or a shelter's centre (``geo.place_slack_km``), reaching farther."""
    rules = {**RULES, "max_radius_km": cap}
    rng = np.random.default_rng(0)
    ls, llat, llon, lday = _random_side(400, rng)
    fs, flat, flon, fday = _random_side(500, rng)
    slack_l, slack_f = (rng.choice([0.0, 0.0, 10.0, 15.0], n) if slacked else np.zeros(n) for n in (400, 500))
    lkeys = listing_keys(ls, llat, llon, lday, **rules, slack_km=slack_l)
    fkeys = listing_keys(fs, flat, flon, fday, **rules, slack_km=slack_f)
    blocks = make_blocks(lkeys, fkeys)
    covered = np.zeros((400, 500), dtype=bool)
    for b in blocks:
        covered[np.ix_(b.lost, b.found)] = True
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    dist = haversine_km(t(llat)[:, None], t(llon)[:, None], t(flat)[None, :], t(flon)[None, :])
    dist = (dist - t(slack_l)[:, None] - t(slack_f)[None, :]).clamp(min=0)
    days = t(fday)[None, :] - t(lday)[:, None]
    _, _, allowed = geo_time_terms(dist, days, **rules)
    species_ok = (ls[:, None] == fs[None, :]) | (ls[:, None] == 0) | (fs[None, :] == 0)
    allowed = allowed.numpy() & species_ok
    assert allowed.any()
    assert not (allowed & ~covered).any(), "a pair the rules allow was never scored"
    assert covered.sum() < 0.5 * covered.size, "blocking pruned nothing"
    # every lost listing lies in exactly one block (the place slack included)
    owners = np.concatenate([b.lost for b in blocks])
    assert len(owners) == len(set(owners.tolist()))
    # the pairs of a few listings, found without blocks: every allowed one, each once per part
    rows, cols = rng.random(400) < 0.05, rng.random(500) < 0.05
    keys = lkeys, fkeys
    (lr, fr), (lc, fc) = reachable(*keys, rows, cols)
    for li, fi, mask in ((lr, fr, rows[:, None]), (lc, fc, cols[None, :])):
        reached = np.zeros((400, 500), dtype=bool)
        reached[li, fi] = True
        assert len(li) == reached.sum() and not (allowed & mask & ~reached).any()
        assert (reached & ~mask).sum() == 0 and reached.sum() < 0.5 * mask.sum() * (500 if mask.shape[0] > 1 else 400)
    # the same pairs, in the same order, as testing one listing at a time by its coordinates' squared difference
    for (mine, theirs), me, other, sign, mask in (((lr, fr), keys[0], keys[1], 1.0, rows),
                                                  ((fc, lc), keys[1], keys[0], -1.0, cols)):  # fmt: skip
        expected = [(i, j) for i in np.flatnonzero(mask) for j in _one_by_one(me, i, other, sign)]
        assert list(zip(mine.tolist(), theirs.tolist(), strict=True)) == expected


def _one_by_one(me, i: int, other, sign: float) -> list[int]:
    ok = (me.species[i] == 0) | (other.species == 0) | (other.species == me.species[i])
    if np.isfinite(me.day[i]):
        slack = 1e-6 * (me.max_days + me.grace_days + 1.0)
        gap = sign * (other.day - me.day[i])
        ok &= ~np.isfinite(other.day) | ((gap >= -me.grace_days - slack) & (gap <= me.max_days + slack))
    if np.isfinite(me.xyz[i]).all():
        d2 = ((other.xyz - me.xyz[i]) ** 2).sum(axis=1)
        reach = np.array([chord_for_radius(me.radius_km + me.slack[i] + s) * (1 + 1e-6) for s in other.slack])
        ok &= ~np.isfinite(d2) | (d2 <= reach * reach)
    return np.flatnonzero(ok).tolist()


def test_blocks_shrink_under_the_radius_cap() -> None:
    """One city 60 km across: uncapped (15 + 5 km/day over 30 days) a listing reaches the whole city; a 10 km cap
    leaves each lost listing a neighbourhood, in blocks smaller than the whole city (that no allowed pair is lost is
    ``test_blocks_cover_every_allowed_pair``)."""
    rng = np.random.default_rng(1)

    def city(n: int):
        lat = 47.6 + rng.uniform(-0.27, 0.27, n)
        lon = -122.3 + rng.uniform(-0.4, 0.4, n)
        return np.ones(n, dtype=np.int64), lat, lon, rng.integers(0, 20, n).astype(float)

    lost, found = city(300), city(400)
    sizes = {}
    for cap in (math.inf, 10.0):
        rules = {**RULES, "max_radius_km": cap}
        blocks = make_blocks(listing_keys(*lost, **rules), listing_keys(*found, **rules))
        sizes[cap] = (_pairs(blocks), max(len(b.found) for b in blocks))
    assert sizes[math.inf][1] == 400  # uncapped, some block holds the whole city
    assert sizes[10.0][0] < sizes[math.inf][0] / 3 and sizes[10.0][1] < 400
