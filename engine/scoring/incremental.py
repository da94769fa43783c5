"""Incremental matching: which rows to rescore, and the exact top-k per listing from candidates and the last run.

A published run is a function of one number per pair, the fused value ``v(lost, found)``: each lost listing keeps its
``k`` best found listings and each found listing its ``k`` best lost listings, by ``v`` descending then listing id
ascending (finite ``v`` only; blocking is exact with respect to the hard rules, so a listing's candidates are every
finite pair, whatever the blocks). ``v`` of a pair depends only on its two listings (their :func:`side_fingerprints`)
and on the run lineage's parameters (scoring configuration and the frozen background). So after listings come, change
or go:

* a lost listing that is new or changed, or whose previous top-k held a found listing that changed or went away
  (the pair just below its cut is unknown), is **rescored in full** against its block (``rows`` mask);
* every other lost listing keeps its previous top-k, merged with its pairs to new or changed found listings: only
  those can enter, and a found listing that went away outside its top-k changes nothing;
* the same, the other way round, for found listings (``cols`` mask).

Two facts make the merge exact rather than approximate:

* **Per-pair values, never tile values, decide.** A tile's matrix product runs other kernels for other shapes (a row
  scored among 4,096 rows and among 3 differs in the last bits), so tiles only *nominate* candidates, ``k +``
  :data:`CANDIDATE_MARGIN` per listing, and :func:`pair_terms` computes every candidate's value pair by pair in
  batches whose shapes depend only on the pair (its two detection counts). A full run ranks the same way.
* The background statistics (image/text centre and spread) are frozen per lineage (``ray_jobs.match`` keeps them),
  so a new listing does not move every pair's value.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from engine.scoring.blocking import Block
from engine.scoring.fuse import Scorer, Side

CANDIDATE_MARGIN = 2
"""Tiles nominate ``k + CANDIDATE_MARGIN`` candidates per listing. Tile and per-pair values differ by a few float32
ulps; the true k-th best could only fall outside the nominees if more than this many others lay within those ulps of
it with their order flipped."""
TILE_TOLERANCE = 1e-4
"""A new candidate whose tile value is this far below a listing's previous k-th value cannot enter its top-k (tile and
pair values differ by ~1e-7); above it, its exact per-pair value decides."""
PAIR_BATCH = 2048
LANES = 64
"""A multiple of every SIMD width torch uses (its vector loops step two registers: at most 32 floats on AVX-512)."""


# ----------------------------------------------------------------------------------------------------- fingerprints
def side_fingerprints(side: Side, tag: str, row_keys: np.ndarray, row_owner: np.ndarray) -> np.ndarray:
    """One hex digest per listing of everything scoring reads of it, without reading a vector: its fields (species
    after detection votes, place, where the place came from, date, attribute codes, ``has_text``) and the keys of its
    usable detection rows (``row_keys``, one per row of ``row_owner``, grouped by listing in side order). Equal digests
    give equal pair values.

    A row's key stands for its vectors: it must change whenever they do. :func:`detection_row_keys` builds it from the
    row's ``detection_id`` and ``created_at`` (with the columns scoring reads beside the vectors), which holds as every
    writer of ``detections`` writes whole rows and stamps ``created_at`` with the time of the write: enrichment
    (``ray_jobs.enrich.writer``) upserts a re-embedded photo's rows under the same ``detection_id`` with a new
    ``created_at``, and no code updates vectors in place. A row without a stamp has a None key; its listing gets a
    None fingerprint, which matches nothing, so it is rescored by every run (never carried on trust)."""
    n = side.n
    per_listing = [side.species, side.lat, side.lon, side.day, side.has_text]
    per_listing += [getattr(side.attrs, f.name) for f in fields(side.attrs)]
    fixed = np.concatenate(
        [np.ascontiguousarray(t.numpy()).reshape(n, math.prod(t.shape[1:])).view(np.uint8) for t in per_listing],
        axis=1,
    )
    unstamped = np.bincount(row_owner[np.equal(row_keys, None)], minlength=n)[:n] > 0
    bounds = np.searchsorted(row_owner, np.arange(n + 1)).tolist()
    geo = side.geo_source if side.geo_source is not None else np.full(n, None)
    out = np.full(n, None, dtype=object)
    for i in np.flatnonzero(~unstamped).tolist():
        h = hashlib.blake2b(tag.encode(), digest_size=16)
        h.update(fixed[i].data)
        h.update(f"{geo[i]}\0".encode())
        h.update("\0".join(row_keys[bounds[i] : bounds[i + 1]]).encode())
        out[i] = h.hexdigest()
    return out


def detection_row_keys(rows: pa.Table) -> pa.ChunkedArray:
    """Per detection row, what stands for its vectors in :func:`side_fingerprints`: its id, write stamp and every
    column scoring reads beside the vectors (``rows``: ``detection_id``, ``created_at``, ``photo_id``, ``species``,
    ``confidence``, ``embed_model``, ``text_model`` and ``engine.scoring.sides.VECTOR_FLAGS``). Null without a
    stamp."""
    parts = [rows["detection_id"], rows["created_at"].cast(pa.int64()).cast(pa.string()), rows["photo_id"],
             rows["species"], rows["confidence"].cast(pa.string()), rows["embed_model"], rows["text_model"],
             rows["has_embedding"].cast(pa.string()), rows["has_text_embedding"].cast(pa.string())]  # fmt: skip
    joined = pc.binary_join_element_wise(*parts, "\x1f", null_handling="replace", null_replacement="\x00")
    return pc.if_else(pc.is_null(rows["created_at"]), pa.scalar(None, pa.string()), joined)


# -------------------------------------------------------------------------------------------------- per-pair values
def pair_terms(
    scorer: Scorer, li: np.ndarray, fi: np.ndarray, only: tuple[str, ...] | None = None
) -> dict[str, np.ndarray]:
    """``scorer.pairs`` of (li, fi), computed so that each pair's values do not depend on the other pairs asked;
    ``only``: keep just these terms (explanations are written only when asked for), batch by batch, so ranking
    millions of candidates holds one array per term kept, not every term and a string per pair.

    Three things make a pair's last bits depend on its batch in ``Scorer.pairs``: detections are padded to the
    batch's widest listing and torch picks its product kernel by shape (and another path for a batch of one); and an
    element-wise op (sigmoid, the trigonometry of distances) runs SIMD code on whole vector widths but scalar libm
    code on a batch's tail. So every pair's detections are padded to a width that depends only on its own counts
    (:func:`detection_width`), every batch holds pairs of one (lost, found) width, and is padded (by repeating its
    first pair) to a multiple of :data:`LANES`, so every pair goes through the SIMD code. Widths rather than exact
    counts: a batch costs ~100 tensor operations whatever its size, and a few hundred new listings' candidates
    spread over every (count, count) combination (183 batches for 8,711 pairs at 50k listings: 13 s → 2 s)."""
    li, fi = np.asarray(li, dtype=np.int64), np.asarray(fi, dtype=np.int64)
    with one_thread():
        return _pair_terms(scorer, li, fi, only)


def _pair_terms(scorer: Scorer, li: np.ndarray, fi: np.ndarray, only: tuple[str, ...] | None) -> dict[str, np.ndarray]:
    n = len(li)
    explained = only is None or "explanation" in only

    def trimmed(terms: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
        return {k: v[:size] for k, v in terms.items() if only is None or k in only}

    if n == 0:
        return trimmed(scorer.pairs(li, fi, explained=explained), 0)
    cl = detection_width(scorer.lost.det_counts.numpy()[li])
    cf = detection_width(scorer.found.det_counts.numpy()[fi])
    order = np.lexsort((cf, cl))
    key = cl[order] * (int(cf.max()) + 1) + cf[order]
    starts = np.r_[0, np.flatnonzero(np.diff(key)) + 1, n]
    parts: list[dict[str, np.ndarray]] = []
    for s, e in itertools.pairwise(starts):
        group = order[s:e]
        widths = int(cl[group[0]]), int(cf[group[0]])
        size = max(LANES, PAIR_BATCH * 8 // max(*widths, 8) // LANES * LANES)
        for batch in np.array_split(group, -(-len(group) // size)):
            padded = np.r_[batch, np.repeat(batch[:1], -len(batch) % LANES)]
            out = scorer.pairs(li[padded], fi[padded], chunk=len(padded), widths=widths, explained=explained)
            parts.append(trimmed(out, len(batch)))
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.arange(n)
    return {k: v[inverse] for k, v in merged.items()}


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread for a while. Pair values then do not depend on the machine's thread count (a product
    split across threads may sum in another order), and the many small operations of valuing pairs and of scoring a
    few listings' candidates pay no thread hand-offs: on this 2-core box under load, 178k listed pairs took 3.3 s on
    two threads and 0.6 s on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def detection_width(counts: np.ndarray) -> np.ndarray:
    """The padded detection count of listings with ``counts`` detections: the next power of two (at least 1)."""
    return np.left_shift(1, np.ceil(np.log2(np.maximum(counts, 1))).astype(np.int64))


# ------------------------------------------------------------------------------------------------- sorted key sets
# numpy 2.4 hashes integers in np.unique and np.isin, and np.lexsort makes one stable pass per key: on the ~400k
# pair keys of an incremental run at 50k listings, np.unique took 168 ms where one sort takes 6, np.isin 171 ms
# where a binary search into an already sorted set takes a few, and a three-key lexsort of 605k pairs 260 ms.
def unique_keys(keys: np.ndarray) -> np.ndarray:
    """``np.unique(keys)`` by one sort."""
    s = np.sort(keys)
    return s[np.r_[True, s[1:] != s[:-1]]] if len(s) else s


def contains(sorted_set: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """``np.isin(keys, sorted_set)`` for a sorted ``sorted_set``, by binary search."""
    if len(sorted_set) == 0:
        return np.zeros(len(keys), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_set, keys), len(sorted_set) - 1)
    return sorted_set[at] == keys


def lex_order(*keys: np.ndarray) -> np.ndarray:
    """``np.lexsort(keys)`` (the last key sorts first; stable), by one stable argsort of the keys packed into one
    int64: a key of non-negative integers packs as it is, any other as its dense rank (one sort). Falls back to
    ``np.lexsort`` when the packed key would not fit."""
    n = len(keys[0])
    packed, span = np.zeros(n, dtype=np.int64), 1
    for key in reversed(keys):
        if n == 0:
            break
        if key.dtype.kind in "iu" and int(key.min()) >= 0 and int(key.max()) < 2**31:
            code, count = key.astype(np.int64), int(key.max()) + 1
        else:
            code, count = _dense_rank(key)
        if span * count >= 2**62:
            return np.lexsort(keys)
        packed, span = packed * count + code, span * count
    return np.argsort(packed, kind="stable")


def _dense_rank(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Each value's rank among the distinct values (equal values share one; NaNs share the last, as they tie in
    ``np.lexsort``), and how many ranks there are."""
    by = np.argsort(values)
    v = values[by]
    step = np.empty(len(v), dtype=np.int64)
    step[0], step[1:] = 0, v[1:] != v[:-1]
    if v.dtype.kind == "f":
        step[1:] &= ~np.isnan(v[1:]) | ~np.isnan(v[:-1])
    rank = np.empty(len(v), dtype=np.int64)
    rank[by] = np.cumsum(step)
    return rank, int(rank[by[-1]]) + 1


# ------------------------------------------------------------------------------------------------------- selection
def rank_within(owner: np.ndarray, other: np.ndarray, fused: np.ndarray, k: int) -> np.ndarray:
    """1-based rank of each pair among its owner's pairs by (fused desc, other asc); 0 beyond ``k`` or not finite.
    Indices follow listing-id order, so ``other`` ascending breaks ties by listing id."""
    rank = np.zeros(len(owner), dtype=np.int64)
    if len(owner) == 0:
        return rank
    order = lex_order(other, -fused, owner)
    o = owner[order]
    start = np.r_[0, np.flatnonzero(np.diff(o)) + 1]
    pos = np.arange(len(o)) - np.repeat(start, np.diff(np.r_[start, len(o)])) + 1
    ok = np.isfinite(fused[order]) & (pos <= k)
    rank[order[ok]] = pos[ok]
    return rank


@dataclass
class Previous:
    """The previous published run's kept pairs in this run's indices (-1: that listing is new, changed or gone)."""

    lost: np.ndarray
    found: np.ndarray
    fused: np.ndarray
    for_lost: np.ndarray  # bool: in the lost listing's top-k
    for_found: np.ndarray  # bool: in the found listing's top-k
    ids: np.ndarray  # int64: the store's id of each pair (a run keeps a pair by naming it)

    @classmethod
    def empty(cls) -> Previous:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z, np.zeros(0), z.astype(bool), z.astype(bool), z)

    def ids_of(self, lost: np.ndarray, found: np.ndarray, n_found: int) -> np.ndarray:
        """The ids of the previous pairs (``lost[n]``, ``found[n]``) (this run's indices; each must be one)."""
        nf = max(n_found, 1)
        both = (self.lost >= 0) & (self.found >= 0)
        keys = self.lost[both] * nf + self.found[both]
        order = np.argsort(keys, kind="stable")
        wanted = lost * nf + found
        at = order[np.minimum(np.searchsorted(keys[order], wanted), max(len(keys) - 1, 0))] if len(keys) else order
        if len(wanted) and (len(keys) == 0 or not np.array_equal(keys[at], wanted)):
            raise ValueError("a pair asked for is not one of the previous run's")
        return self.ids[both][at]

    def rescore(self, changed_lost: np.ndarray, changed_found: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lost rows, found columns) to rescore in full: the changed listings and every unchanged one whose
        previous top-k held a listing of the other side that changed or went away."""
        rows, cols = changed_lost.copy(), changed_found.copy()
        lost_ok, found_ok = self.lost >= 0, self.found >= 0
        rows[self.lost[self.for_lost & lost_ok & ~found_ok]] = True
        cols[self.found[self.for_found & found_ok & ~lost_ok]] = True
        return rows, cols

    def kept(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Masks of the previous pairs that stay in their lost / found listing's pool (that listing not rescored)."""
        both = (self.lost >= 0) & (self.found >= 0)
        keep_l = self.for_lost & both
        keep_l[keep_l] = ~rows[self.lost[keep_l]]
        keep_f = self.for_found & both
        keep_f[keep_f] = ~cols[self.found[keep_f]]
        return keep_l, keep_f

    def keys(self, mask: np.ndarray, n_found: int) -> np.ndarray:
        """Pair keys (``lost * n_found + found``) of the previous pairs in ``mask``."""
        return self.lost[mask] * n_found + self.found[mask]

    def kth(self, n: int, owner_is_lost: bool, k: int) -> np.ndarray:
        """Per listing of one side, the previous k-th best fused value (-inf when it kept fewer than k)."""
        mask = (self.for_lost if owner_is_lost else self.for_found) & (self.lost >= 0) & (self.found >= 0)
        owner = (self.lost if owner_is_lost else self.found)[mask]
        out = np.full(n, -np.inf)
        if len(owner) == 0:
            return out
        counts = np.bincount(owner, minlength=n)
        order = lex_order(-self.fused[mask], owner)
        start = np.r_[0, np.cumsum(counts)[:-1]]
        full = counts >= k
        out[full] = self.fused[mask][order][start[full] + k - 1]
        return out


DRIVERS_PER_CALL = 32
"""Rescored listings scored together in one :meth:`Scorer.listed` call, nearby ones together: the call's matrix
product covers them × the union of their candidates, gathered once, where scoring the restricted blocks of a listing
or two each gathered its thousands of counterparts again (at 20k listings: 972 such blocks took 70 s; as one
coalesced block, 1.7 M pairs of element-wise work for the 178k that involve a rescored listing)."""


def listed_top(scorer: Scorer, li: np.ndarray, fi: np.ndarray, by_lost: bool, kk: int) -> tuple[np.ndarray, ...]:
    """Tile top-``kk`` per lost and per found listing among the distinct pairs (li, fi), as ``score_blocks`` returns
    them for blocks; scored :data:`DRIVERS_PER_CALL` driving listings (lost when ``by_lost``) at a time, in Z-order of
    their places so that a call's listings share candidates."""
    driver, side = (li, scorer.lost) if by_lost else (fi, scorer.found)
    values = np.empty(len(li), dtype=np.float32)
    order = lex_order(driver, z_order(side.lat.numpy()[driver], side.lon.numpy()[driver]))
    firsts = np.r_[0, np.flatnonzero(np.diff(driver[order])) + 1] if len(order) else np.zeros(0, np.int64)
    for s, e in itertools.pairwise(np.r_[firsts[::DRIVERS_PER_CALL], len(order)]):
        part = order[s:e]
        values[part] = scorer.listed(li[part], fi[part]).cpu().numpy()
    row, col = rank_within(li, fi, values, kk), rank_within(fi, li, values, kk)
    r, c = row > 0, col > 0
    return li[r], fi[r], values[r], row[r], li[c], fi[c], values[c]


def z_order(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Morton codes of places on a 2¹⁶ × 2¹⁶ grid of latitude × longitude (no place: last): nearby places get nearby
    codes (mostly)."""
    code = np.full(len(lat), np.iinfo(np.int64).max, dtype=np.int64)
    ok = np.isfinite(lat) & np.isfinite(lon)
    q = [np.clip((v[ok].astype(np.float64) + off) / span * 65535, 0, 65535).astype(np.int64)
         for v, off, span in ((lat, 90.0, 180.0), (lon, 180.0, 360.0))]  # fmt: skip
    for i, v in enumerate(q):
        for shift, mask in ((8, 0x00FF00FF), (4, 0x0F0F0F0F), (2, 0x33333333), (1, 0x55555555)):
            v = (v | (v << shift)) & mask
        q[i] = v
    code[ok] = q[0] << 1 | q[1]
    return code


def admit(owner: np.ndarray, tile: np.ndarray, kth: np.ndarray) -> np.ndarray:
    """Nominees that could enter their owner's previous top-k: tile value within :data:`TILE_TOLERANCE` of its k-th."""
    return tile >= kth[owner] - TILE_TOLERANCE


ScoreBlocks = Callable[[list[Block], int], tuple[np.ndarray, ...]]
"""``score(blocks, k)`` → tile top-k per lost row and per found column, as ``score_blocks`` returns them."""


@dataclass
class Selection:
    """The pairs a run publishes, their ranks and fused values. The pairs this run valued (``scored`` True) get
    their terms and explanations at publication, a chunk at a time (:func:`pair_terms` gives each pair the values it
    was ranked by, whatever the chunk); the previous run's row stands for the others."""

    lost: np.ndarray
    found: np.ndarray
    fused: np.ndarray
    rank_for_lost: np.ndarray  # 0: not in the lost listing's top-k
    rank_for_found: np.ndarray
    scored: np.ndarray
    tile_pairs: int  # pairs the tiles scored
    pair_values: int  # pairs valued one by one (tile nominees and merges)


def select(
    scorer: Scorer,
    blocks: list[Block],
    previous: Previous,
    rows: np.ndarray,
    cols: np.ndarray,
    k: int,
    score: ScoreBlocks,
    reach: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
) -> Selection:
    """Top-k per lost and per found listing: rows / columns in ``rows`` / ``cols`` from scratch (``reach``: their
    pairs with every listing they may pair with, ``blocking.reachable``, nominated by :func:`listed_top`), every
    other listing from its previous top-k merged with its new nominees among those pairs. All True and no previous
    run: a full run, whose ``blocks`` ``score`` nominates tile by tile."""
    n_lost, n_found = scorer.lost.n, scorer.found.n
    nf = max(n_found, 1)  # pair key: lost * nf + found
    kk = k + CANDIDATE_MARGIN
    everything = bool(rows.all() and cols.all())
    if everything:
        first = second = score(blocks, kk)
        tile_pairs = sum(b.pairs for b in blocks)
    else:
        if reach is None:
            raise ValueError("an incremental selection needs the pairs its rescored listings reach")
        by_rows, by_cols = reach
        with one_thread():
            first = listed_top(scorer, *by_rows, True, kk)
            second = listed_top(scorer, *by_cols, False, kk)
        tile_pairs = len(by_rows[0]) + len(by_cols[0])

    def nominees(rows_part: tuple, cols_part: tuple) -> tuple[np.ndarray, np.ndarray]:
        """Row nominees of the rescored rows, and of the others those that could enter; the same for columns."""
        rl, rf, rs = (np.asarray(a) for a in rows_part)
        cl, cf, cs = (np.asarray(a) for a in cols_part)
        top = rank_within(cf.astype(np.int64), cl.astype(np.int64), cs, kk) > 0  # a found listing's best over blocks
        cl, cf, cs = cl[top], cf[top], cs[top]
        return (rl.astype(np.int64), rf.astype(np.int64), rs), (cl.astype(np.int64), cf.astype(np.int64), cs)

    (r1l, r1f, _), (c1l, c1f, c1s) = nominees(first[:3], first[4:])
    (r2l, r2f, r2s), (c2l, c2f, _) = nominees(second[:3], second[4:])
    if everything:
        row_l, row_f, col_l, col_f = r1l, r1f, c1l, c1f
    else:
        take_r = ~rows[r2l] & admit(r2l, r2s, previous.kth(n_lost, True, k))
        take_c = ~cols[c1f] & admit(c1f, c1s, previous.kth(n_found, False, k))
        row_l, row_f = np.r_[r1l, r2l[take_r]], np.r_[r1f, r2f[take_r]]
        col_l, col_f = np.r_[c2l, c1l[take_c]], np.r_[c2f, c1f[take_c]]

    # value every nominee pair by pair, except those the previous run kept with both listings unchanged
    both = (previous.lost >= 0) & (previous.found >= 0)
    prev_key = previous.keys(both, nf)
    prev_fused = previous.fused[both]
    order = np.argsort(prev_key)
    prev_key, prev_fused = prev_key[order], prev_fused[order]
    cand_key = unique_keys(np.r_[row_l * nf + row_f, col_l * nf + col_f])
    known = contains(prev_key, cand_key)
    new_key = cand_key[~known]
    new_fused = pair_terms(scorer, new_key // nf, new_key % nf, only=("fused",))["fused"]

    keep_l, keep_f = previous.kept(rows, cols)
    pool_l = unique_keys(np.r_[row_l * nf + row_f, previous.keys(keep_l, nf)])
    pool_f = unique_keys(np.r_[col_l * nf + col_f, previous.keys(keep_f, nf)])

    def value(keys: np.ndarray) -> np.ndarray:
        out = np.empty(len(keys))
        is_new = contains(new_key, keys)
        out[is_new] = new_fused[np.searchsorted(new_key, keys[is_new])]
        out[~is_new] = prev_fused[np.searchsorted(prev_key, keys[~is_new])]
        return out

    fl, ff = value(pool_l), value(pool_f)
    rank_l = rank_within(pool_l // nf, pool_l % nf, fl, k)
    rank_f = rank_within(pool_f % nf, pool_f // nf, ff, k)
    kept = unique_keys(np.r_[pool_l[rank_l > 0], pool_f[rank_f > 0]])
    out_l = np.zeros(len(kept), dtype=np.int64)
    out_l[np.searchsorted(kept, pool_l[rank_l > 0])] = rank_l[rank_l > 0]
    out_f = np.zeros(len(kept), dtype=np.int64)
    out_f[np.searchsorted(kept, pool_f[rank_f > 0])] = rank_f[rank_f > 0]
    scored = contains(new_key, kept)
    return Selection(
        lost=kept // nf,
        found=kept % nf,
        fused=value(kept),
        rank_for_lost=out_l,
        rank_for_found=out_f,
        scored=scored,
        tile_pairs=tile_pairs,
        pair_values=len(new_key),
    )
