"""Candidate blocking: which lost listings are scored against which found listings.

Blocks never lose a pair that the hard rules would keep. A lost and a found listing can only pair when species agree
(or one is unknown), the found date lies in ``[lost - grace, lost + max_days]`` and the distance is within the
plausible radius for ``max_days``, ``R = base_radius_km + max_speed_km_per_day · max_days``. So listings are keyed by

* species (unknown pairs with every species),
* a 3-D grid cell of the unit sphere whose edge is the chord of R (``geo.geo_cells``): a partner within R lies in the
  same or one of the 26 neighbouring cells; no coordinates → the "unknown location" key, compared with every cell,
* a time window of ``max_days + grace_days`` days: a partner lies in the same or an adjacent window; no date → the
  unknown window, compared with every window,

and each group of lost listings with the same key is scored against the union of the found groups its key can reach.
Lost groups that reach the same found groups are merged into one block (fewer, larger matrix products). Inside a
block the hard rules are applied per pair, exactly. Each lost listing lies in exactly one block, a found listing
in possibly several (so per-found top-k is merged across blocks).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.scoring.geo import geo_cells, neighbour_cells, plausible_radius_km

Key = tuple[int, tuple[int, int, int] | None, int | None]


@dataclass
class Block:
    lost: np.ndarray  # indices into the lost side
    found: np.ndarray  # indices into the found side

    @property
    def pairs(self) -> int:
        return len(self.lost) * len(self.found)


def time_windows(days: np.ndarray, max_days: float, grace_days: float) -> list[int | None]:
    width = float(max_days) + float(grace_days) + 1.0
    return [None if not np.isfinite(d) else int(np.floor(d / width)) for d in np.asarray(days, dtype=np.float64)]


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
) -> list[Key]:
    radius = plausible_radius_km(float(max_days), base_radius_km, max_speed_km_per_day)
    cells = geo_cells(lat, lon, radius)
    wins = time_windows(days, max_days, grace_days)
    return [(int(s), c, w) for s, c, w in zip(np.asarray(species).tolist(), cells, wins, strict=True)]


def _reachable(key: Key, found_groups: dict[Key, np.ndarray], species_present: Sequence[int]) -> list[Key]:
    s, cell, win = key
    species = list(species_present) if s == 0 else [s, 0]
    if cell is not None and win is not None:
        cells: list = [*neighbour_cells(cell), None]
        wins: list = [win - 1, win, win + 1, None]
        return [k for sp in species for c in cells for w in wins if (k := (sp, c, w)) in found_groups]
    near = set(neighbour_cells(cell)) if cell is not None else set()
    out = []
    for k in found_groups:
        fs, fc, fw = k
        if fs not in species:
            continue
        if cell is not None and fc is not None and fc not in near:
            continue
        if win is not None and fw is not None and abs(fw - win) > 1:
            continue
        out.append(k)
    return out


def make_blocks(lost_keys: Sequence[Key], found_keys: Sequence[Key]) -> list[Block]:
    lost_groups: dict[Key, list[int]] = defaultdict(list)
    for i, k in enumerate(lost_keys):
        lost_groups[k].append(i)
    found_lists: dict[Key, list[int]] = defaultdict(list)
    for j, k in enumerate(found_keys):
        found_lists[k].append(j)
    found_groups = {k: np.asarray(v, dtype=np.int64) for k, v in found_lists.items()}
    species_present = sorted({k[0] for k in found_groups} | {0})
    merged: dict[tuple[Key, ...], list[int]] = defaultdict(list)
    for key, members in lost_groups.items():
        reach = tuple(sorted(_reachable(key, found_groups, species_present), key=repr))
        if reach:
            merged[reach].extend(members)
    blocks = []
    for reach, members in merged.items():
        found = np.sort(np.concatenate([found_groups[k] for k in reach]))
        blocks.append(Block(np.asarray(sorted(members), dtype=np.int64), found))
    blocks.sort(key=lambda b: -b.pairs)
    return blocks
