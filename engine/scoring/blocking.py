"""Candidate blocking: which lost listings are scored against which found listings.

Blocks never lose a pair that the hard rules would keep. A lost and a found listing can only pair when species agree
(or one is unknown), the found date lies in ``[lost - grace, lost + max_days]`` and the distance is within the
plausible radius for ``max_days``, ``R = min(base_radius_km + max_speed_km_per_day · max_days, max_radius_km)``, plus
both listings' place slack (``geo.place_slack_km``: a town's or a shelter's centroid may be that far off).
The cap is what lets geography separate listings at all: uncapped, a year at 25 km/day is a 9,140 km radius and a
whole county (or country) is one block.

Lost listings are grouped by species, a cell of a 3-D grid on the unit sphere (``CELLS_PER_RADIUS`` cells per chord
of R: no pole or date-line special cases) and a time window (``WINDOWS_PER_SPAN`` windows per ``max_days +
grace_days`` days); no coordinates or no date is a group of its own. Each group is one block, scored against exactly
the found listings that can pair with *some* point of its cell and *some* day of its window: the right species (or
unknown), a day within ``[window start - grace, window end + max_days]``, a point within the chord of R plus both
slacks of the cell's box (no coordinates or no date on the found side: always reachable). Lost listings are grouped
by slack too (one class per place source with a slack), so a group's reach is exact for each found listing. A found
listing lies in several blocks (per-found top-k is merged across blocks); each lost listing in exactly one. Inside a
block the hard rules are applied per pair, exactly.

The trade-off is in the two constants: smaller cells and windows score fewer pairs (the reach of a group approaches
the radius and the day range of one listing) but make more, smaller blocks, whose matrix products run further from
the matmul roofline and whose per-block set-up (gathering both sides' vectors) is paid more often.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.scoring.geo import chord_for_radius, plausible_radius_km, unit_vectors

CELLS_PER_RADIUS = 4
"""Grid cells per chord of R: a group's found listings lie within R of its cell, a box 1/2 R wide (a disc of about
R + 0.35 R in a region), where one cell per radius with its 26 neighbours had a cube three radii wide."""
COARSE_LEVELS = 4
"""The octree's largest boxes are 2⁴ finest cells wide (8 R)."""
GATHER_PAIRS = 4
"""What gathering one found listing's vectors into a block costs, in scored pairs (see ``_leaves``)."""
WINDOWS_PER_SPAN = 6
"""Time windows per ``max_days + grace_days + 1`` days: a group's found listings span 7/6 of that, forwards only."""
_MARGIN = 1e-6
"""Relative slack on the reach: float rounding of a pair's distance at exactly R never falls outside its block."""


@dataclass
class Block:
    lost: np.ndarray  # indices into the lost side
    found: np.ndarray  # indices into the found side

    @property
    def pairs(self) -> int:
        return len(self.lost) * len(self.found)


@dataclass(frozen=True)
class ListingKeys:
    """What blocking knows of one side's listings, with the rules that bound a pair."""

    species: np.ndarray  # (n,) int64, 0 unknown
    xyz: np.ndarray  # (n, 3) float64 unit vectors, NaN rows without coordinates
    day: np.ndarray  # (n,) float64, NaN unknown
    reach: float  # chord of R on the unit sphere (of R + a slack class's km in a subset)
    max_days: float
    grace_days: float
    radius_km: float  # R
    slack: np.ndarray  # (n,) float64 km each point may be off (``geo.place_slack_km``)

    def __len__(self) -> int:
        return len(self.species)

    def subset(self, rows: np.ndarray, extra_km: float) -> ListingKeys:
        """The listings ``rows``, reaching ``extra_km`` farther than R (the slack of a class of pairs)."""
        return ListingKeys(self.species[rows], self.xyz[rows], self.day[rows], float(_reach(self.radius_km + extra_km)),
                           self.max_days, self.grace_days, self.radius_km, self.slack[rows])  # fmt: skip


def listing_keys(
    species: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    days: np.ndarray,
    *,
    base_radius_km: float,
    max_speed_km_per_day: float,
    max_days: float,
    grace_days: float,
    max_radius_km: float = math.inf,
    slack_km: np.ndarray | None = None,
) -> ListingKeys:
    """``slack_km``: each listing's place slack (none: every point exact); a pair reaches R plus both slacks."""
    radius = plausible_radius_km(float(max_days), base_radius_km, max_speed_km_per_day, max_radius_km)
    n = len(species)
    return ListingKeys(
        species=np.asarray(species, dtype=np.int64),
        xyz=unit_vectors(np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)),
        day=np.asarray(days, dtype=np.float64),
        reach=float(_reach(radius)),
        max_days=float(max_days),
        grace_days=float(grace_days),
        radius_km=float(radius),
        slack=np.zeros(n) if slack_km is None else np.asarray(slack_km, dtype=np.float64),
    )


def _reach(radius_km: Any) -> Any:
    """The chord of ``radius_km`` (a number or an array) with the blocks' relative slack."""
    return chord_for_radius(radius_km) * (1.0 + _MARGIN)


_UNKNOWN = np.iinfo(np.int64).min


def _cells(xyz: np.ndarray, edge: float) -> np.ndarray:
    """Grid cell of each point, ``_UNKNOWN`` rows where coordinates are missing."""
    known = np.isfinite(xyz).all(axis=1)
    cells = np.full(xyz.shape, _UNKNOWN, dtype=np.int64)
    cells[known] = np.floor(xyz[known] / edge).astype(np.int64)
    return cells


def _windows(day: np.ndarray, width: float) -> np.ndarray:
    wins = np.full(len(day), _UNKNOWN, dtype=np.int64)
    known = np.isfinite(day)
    wins[known] = np.floor(day[known] / width).astype(np.int64)
    return wins


def _split(labels: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Distinct rows of ``labels`` and the members (row numbers) of each."""
    uniq, inverse = np.unique(labels, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    return uniq, np.split(order, np.cumsum(np.bincount(inverse, minlength=len(uniq)))[:-1])


class _FoundIndex:
    """Found listings by species and day (so one species × window of lost listings gathers its candidates once),
    with their cells of the finest grid."""

    def __init__(self, found: ListingKeys, edge: float) -> None:
        self.found = found
        self.edge = edge
        self.cells = _cells(found.xyz, edge)
        self.order = np.argsort(found.day, kind="stable")  # no date last
        self.sorted_day = found.day[self.order]
        self.n_dated = int(np.isfinite(self.sorted_day).sum())

    def candidates(self, species: int, lo: float | None, hi: float | None) -> np.ndarray:
        """Found listings of a compatible species dated within [lo, hi) (all dates when None) or undated."""
        if lo is None or hi is None:
            cand = self.order
        else:
            a, b = np.searchsorted(self.sorted_day[: self.n_dated], [lo, hi], side="left")
            cand = np.concatenate([self.order[a:b], self.order[self.n_dated :]])
        f_sp = self.found.species[cand]
        return cand if species == 0 else cand[(f_sp == species) | (f_sp == 0)]


class _Candidates:
    """One species × window's candidate found listings, bucketed by finest cell, to measure boxes against."""

    def __init__(self, index: _FoundIndex, cand: np.ndarray, reach: np.ndarray) -> None:
        self.index = index
        self.reach = reach  # per found listing: how far from a lost listing of this class it may pair
        self.max_reach = float(reach[cand].max()) if len(cand) else 0.0
        fc = index.cells[cand]
        placed = fc[:, 0] != _UNKNOWN
        self.anywhere = cand[~placed]  # no coordinates: near every box
        self.cand = cand[placed]
        self.ucells, self.members = _split(fc[placed]) if placed.any() else (np.zeros((0, 3), np.int64), [])

    def near(self, lo: np.ndarray, span: int) -> np.ndarray:
        """Candidates within their reach of the box of finest cells ``lo … lo + span - 1``. Found cells whose boxes
        are farther than the largest reach from it are skipped before points are measured."""
        e = self.index.edge
        gaps = np.maximum(np.maximum(lo - (self.ucells + 1), self.ucells - (lo + span)), 0)
        far = self.max_reach * self.max_reach
        picked = [self.members[u] for u in np.flatnonzero((gaps * gaps).sum(axis=1) * e * e <= far)]
        idx = self.cand[np.concatenate(picked)] if picked else np.zeros(0, dtype=np.int64)
        p = self.index.found.xyz[idx]
        gap = np.maximum(np.maximum(lo * e - p, p - (lo + span) * e), 0.0)
        return np.concatenate([idx[(gap * gap).sum(axis=1) <= self.reach[idx] ** 2], self.anywhere])


def _leaves(cells: np.ndarray, near: _Candidates) -> list[tuple[np.ndarray, np.ndarray]]:
    """An octree over the finest cells of one group's lost listings → (lost members, found listings) per leaf.

    A box is split in eight when that lowers ``Σ (lost + GATHER_PAIRS) · found`` over its blocks: the pairs scored
    plus the cost of gathering each block's found vectors, so dense places get small boxes (few pairs per lost
    listing) and sparse ones stay in large boxes (no blocks of a handful of rows, each paying the gather)."""
    span = 1 << COARSE_LEVELS
    todo = []
    boxes, parts = _split(np.floor_divide(cells, span))
    for box, part in zip(boxes, parts, strict=True):
        todo.append((span, part, near.near(box * span, span)))
    out = []
    while todo:
        span, members, found = todo.pop()
        if span > 1 and len(members) > 1:
            half = span // 2
            boxes, parts = _split(np.floor_divide(cells[members], half))
            children = [(half, members[p], near.near(b * half, half)) for b, p in zip(boxes, parts, strict=True)]
            split_cost = sum((len(m) + GATHER_PAIRS) * len(f) for _, m, f in children)
            if split_cost < (len(members) + GATHER_PAIRS) * len(found):
                todo.extend(children)
                continue
        out.append((members, found))
    return out


def make_blocks(lost: ListingKeys, found: ListingKeys) -> list[Block]:
    """Blocks of lost listings (by species, window and octree box), with every found listing any of them can pair
    with; largest first. Lost listings are blocked one place-slack class at a time (a handful: one per place source
    with a slack), each found listing reaching R plus both slacks from them."""
    if not len(lost) or not len(found):
        return []
    blocks = []
    for a, rows in _slack_classes(lost):
        reach_of_found = _reach(lost.radius_km + a + found.slack)
        for block in _blocks(lost.subset(rows, a), found, reach_of_found):
            blocks.append(Block(rows[block.lost], block.found))
    blocks.sort(key=lambda b: -b.pairs)
    return blocks


def _slack_classes(keys: ListingKeys) -> list[tuple[float, np.ndarray]]:
    values, inverse = np.unique(keys.slack, return_inverse=True)
    return [(float(v), np.flatnonzero(inverse.reshape(-1) == i)) for i, v in enumerate(values)]


def _blocks(lost: ListingKeys, found: ListingKeys, reach_of_found: np.ndarray) -> list[Block]:
    """:func:`make_blocks` for lost listings of one slack class (their own reach: ``lost.reach``)."""
    edge = max(lost.reach / CELLS_PER_RADIUS, 1e-12)
    width = (lost.max_days + lost.grace_days + 1.0) / WINDOWS_PER_SPAN
    slack = _MARGIN * width
    index = _FoundIndex(found, edge)
    lost_cells = _cells(lost.xyz, edge)
    groups, members = _split(np.column_stack([lost.species, _windows(lost.day, width)]))
    blocks = []
    for (sp, win), in_group in zip(groups.tolist(), members, strict=True):
        timed = win != _UNKNOWN
        lo = win * width - lost.grace_days - slack if timed else None
        hi = (win + 1) * width + lost.max_days + slack if timed else None
        cand = index.candidates(sp, lo, hi)
        placed = lost_cells[in_group, 0] != _UNKNOWN
        if (~placed).any():  # no coordinates: every candidate
            blocks.append(Block(np.sort(in_group[~placed]), np.sort(cand)))
        if placed.any():
            near = _Candidates(index, cand, reach_of_found)
            located = in_group[placed]
            for mine, hit in _leaves(lost_cells[located], near):
                blocks.append(Block(np.sort(located[mine]), np.sort(hit)))
    return [b for b in blocks if len(b.found)]


def reachable(
    lost: ListingKeys, found: ListingKeys, rows: np.ndarray, cols: np.ndarray
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(lost, found) of every pair of a lost listing in ``rows`` (a mask) with a found listing the hard rules may let
    it pair with, and of every found listing in ``cols`` with such lost listings: species compatible, the found day
    within ``[lost - grace, lost + max_days]`` and the two within the chord of R plus both place slacks, each where
    known, with the blocks' relative margin.
    A superset of the pairs scoring keeps (finite), like the blocks', but found listing by listing: for the few
    listings an incremental run rescores this is far cheaper than blocking the whole region (at 50k listings, ~0.1 s
    for 500 listings against ~1.5 s)."""
    lost_r, found_r = _pairs_of(lost, np.flatnonzero(rows), found, found_minus_this=1.0)
    found_c, lost_c = _pairs_of(found, np.flatnonzero(cols), lost, found_minus_this=-1.0)
    return (lost_r, found_r), (lost_c, found_c)


def _pairs_of(
    me: ListingKeys, mine: np.ndarray, other: ListingKeys, found_minus_this: float, rows_per_step: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """(listing of ``me``, listing of ``other``) of every pair listings ``mine`` may make, ordered by both
    (``found_minus_this``: +1 when ``me`` is the lost side, so that ``found day - lost day`` is ``sign × (other day -
    my day)``). ``rows_per_step`` of ``mine`` are tested against the whole other side at once: one listing at a time
    was 0.28 s for 500 listings against 32k at 50k listings, numpy's per-call cost more than its arithmetic.

    The distance test is the chord's square from the dot product of the unit vectors, ``2 - 2 a·b``; it differs from
    the coordinates' squared difference by rounding (~1e-16), far inside the reach's relative slack (``_MARGIN``)."""
    placed_other = np.isfinite(other.xyz).all(axis=1)
    other_xyz = np.where(placed_other[:, None], other.xyz, 0.0)
    other_day = other.day
    slack = _MARGIN * (me.max_days + me.grace_days + 1.0)
    # the reach of a pair by the slack classes of its two listings (one class: the scalar reach)
    values = np.unique(np.r_[me.slack[mine], other.slack])
    reach2 = np.square(_reach(me.radius_km + values[:, None] + values[None, :]))
    my_class, other_class = np.searchsorted(values, me.slack), np.searchsorted(values, other.slack)
    mine_parts, other_parts = [], []
    for start in range(0, len(mine), max(1, rows_per_step)):
        at = mine[start : start + rows_per_step]
        sp = me.species[at][:, None]
        ok = (sp == 0) | (other.species[None, :] == 0) | (other.species[None, :] == sp)
        day = me.day[at][:, None]
        gap = found_minus_this * (other_day[None, :] - day)
        day_ok = (gap >= -me.grace_days - slack) & (gap <= me.max_days + slack)
        ok &= ~np.isfinite(day) | ~np.isfinite(other_day)[None, :] | day_ok
        placed = np.isfinite(me.xyz[at]).all(axis=1)
        d2 = 2.0 - 2.0 * (np.where(placed[:, None], me.xyz[at], 0.0) @ other_xyz.T)
        pair_reach2 = reach2[0, 0] if len(values) == 1 else reach2[my_class[at]][:, other_class]
        ok &= ~placed[:, None] | ~placed_other[None, :] | (d2 <= pair_reach2)
        i, j = np.nonzero(ok)
        mine_parts.append(at[i].astype(np.int64))
        other_parts.append(j.astype(np.int64))

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    return cat(mine_parts), cat(other_parts)
