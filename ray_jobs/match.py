"""``homeward match``: score every plausible lost × found pair and publish the ranked matches atomically.

1. Read ``listings`` and ``detections`` from LanceDB **at pinned versions** (recorded in ``match_runs.lance_versions``
   so a run can be reproduced while enrichment keeps writing).
2. Refuse image vectors of another model than the run's (the configured profile's embedder, else the table's
   majority model): similarities across models are meaningless.
3. Choose the mode (:func:`choose_mode`): **incremental** when the previous published run has the same scoring
   inputs (models, parameters, ``top_k``, scoring code) and the population has not drifted from the frozen
   background; **full** otherwise, on ``--full``, or when the changes touch over half the candidate pairs.
4. A full run blocks by species, place and time (``engine.scoring.blocking``: exact with respect to the hard rules)
   and scores every block with exact tiled all-pairs, on the GPU when present (blocks fan out as Ray tasks when
   there is enough work to pay for it); an incremental run scores only the pairs of the listings it must rescore
   with every listing they may pair with (``blocking.reachable``, ``engine.scoring.incremental``).
5. Keep the top-k per lost listing **and** per found listing (tiles nominate, per-pair values decide; an incremental
   run merges the other listings' previous top-k), compute every term of the new pairs, and publish them, the
   previous run's rows of the pairs that stay, a ``match_runs`` row (mode, reason, lineage, changes) and a fresh
   ``listings`` snapshot (with per-listing fingerprints) in **one DuckDB transaction**: readers see the previous
   run or the new one, never half of one. A failed run leaves a ``failed`` run row and no matches. An incremental
   run publishes exactly what a full rematch of the same data would.

Query the latest published run's matches with the ``current_matches`` view (created by each publication), e.g.
``SELECT rank_for_lost FROM current_matches WHERE lost_listing_id = ? AND found_listing_id = ?``. ``rank_for_lost``
is NULL when the pair is kept only because it is in the found listing's top-k (and vice versa).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from engine import analyst, run_rows, schema
from engine.config import Settings
from engine.errors import HomewardError
from engine.scoring.allpairs import resolve_device, tile_for
from engine.scoring.blocking import Block, ListingKeys, listing_keys, make_blocks, reachable
from engine.scoring.blocks import score_blocks
from engine.scoring.fuse import COMPILE_MIN_RUN_PAIRS, ScoreParams, Scorer, Side, background_stats
from engine.scoring.geo import place_slack_km
from engine.scoring.incremental import (
    CANDIDATE_MARGIN,
    Previous,
    Selection,
    detection_row_keys,
    pair_terms,
    select,
    side_fingerprints,
)
from engine.scoring.sides import active_listings, model_vector_mask, side_frame
from engine.storage import RunsDB, open_stores
from ray_jobs import match_vectors
from ray_jobs.match_cache import REFRESH_SHARE, CacheKey, VectorCache
from ray_jobs.match_vectors import SideVectors
from ray_jobs.memory import PeakRss

log = logging.getLogger(__name__)

RAY_MIN_PAIRS = 2_000_000_000
"""With ``use_ray`` unset, blocks fan out as Ray tasks only above this many candidate pairs (a local Ray costs ~5 s
to start; one CPU scores ~10⁹ pairs of 1280-d vectors in ~20 s)."""
_SKIP_DETECTION_STATUS = ("failed", "error")

SNAPSHOT_COLUMNS = (
    "listing_id", "source", "source_id", "url", "kind", "status", "species", "breed", "colors", "sex", "age_group",
    "size", "name", "description", "location_text", "lat", "lon", "geo_source", "event_date", "posted_at", "scraped_at",
    "shelter_id", "shelter_name", "photo_ids", "match_fingerprint",
)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------- loading
def configured_embed_model(settings: Settings) -> str | None:
    """The embedder id of the configured enrich profile (hashes the weight file, loads nothing); None when it cannot
    be told (weights not on this machine, models package unavailable), and the table's majority model is used."""
    try:
        from engine.models import profile
        from engine.models.factory import embedder_id

        return embedder_id(profile(settings)["embedder"], settings)
    except Exception as exc:  # any failure here only means "fall back to the majority model"
        log.info("configured embedder id unavailable (%s); using the detections' majority model", exc)
        return None


def _text_model(value_counts: list[dict[str, Any]]) -> str | None:
    """Text vectors must come from one text model too; they are refused otherwise, naming both."""
    counts = Counter({c["values"]: c["counts"] for c in value_counts if c["values"]})
    if len(counts) > 1:
        (a, na), (b, nb) = counts.most_common(2)
        raise HomewardError(
            f"detections hold text vectors of text_model {b!r} ({nb} rows) beside {a!r} ({na} rows); vectors of "
            "different text models cannot be compared: re-run `homeward enrich` with one profile"
        )
    return next(iter(counts), None)


# ----------------------------------------------------------------------------------------------------------- scoring
def _score_all(lost, found, params, blocks, k, tile_size, device, use_ray, settings) -> tuple[np.ndarray, ...]:
    total = sum(b.pairs for b in blocks)
    compile = total >= COMPILE_MIN_RUN_PAIRS
    fan_out = use_ray if use_ray is not None else (total >= RAY_MIN_PAIRS and len(blocks) > 1)
    if not fan_out or len(blocks) <= 1:
        return score_blocks(lost, found, params, blocks, k, tile_size, device, compile)
    import ray

    from engine.runtime import ray_session

    with ray_session(settings):
        n_tasks = max(1, min(len(blocks), int(ray.cluster_resources().get("CPU", 1))))
        shards: list[list[Block]] = [[] for _ in range(n_tasks)]
        load = [0] * n_tasks
        for b in blocks:  # largest first onto the least loaded shard
            i = int(np.argmin(load))
            shards[i].append(b)
            load[i] += b.pairs
        remote = ray.remote(num_cpus=1)(score_blocks)
        lost_ref, found_ref = ray.put(lost), ray.put(found)
        parts = ray.get(
            [remote.remote(lost_ref, found_ref, params, s, k, tile_size, device, compile) for s in shards if s]
        )
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(7))


# ----------------------------------------------------------------------------------------------------------- lineage
def _scoring_inputs(params: ScoreParams, k: int, embed_model, text_model, lost: Side, found: Side) -> dict:
    """Everything besides the two listings that a pair's value and a listing's top-k depend on: a change of any of
    these makes every previous pair stale."""
    return {
        "params": {k_: v for k_, v in asdict(params).items() if k_ not in BACKGROUND_FIELDS},
        "top_k": k,
        "candidate_margin": CANDIDATE_MARGIN,
        "embed_model": embed_model,
        "text_model": text_model,
        "text_term": bool(lost.text.shape[1] == found.text.shape[1] and lost.has_text.any() and found.has_text.any()),
        "image_term": bool(lost.det_emb.shape[0] and found.det_emb.shape[0]),
        "code": _scoring_code(),
    }


def _scoring_code() -> str:
    """A digest of the modules that turn listings into pair values and top-k lists: a new version of any of them
    (another evidence term, another rounding) makes the previous run's values stale, whatever the configuration."""
    from engine.scoring import aggregate, attributes, blocking, fuse, geo, incremental, kernel, sides

    digest = hashlib.sha256()
    for module in (aggregate, attributes, blocking, fuse, geo, incremental, kernel, sides):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


BACKGROUND_FIELDS = ("img_center", "img_scale", "txt_center", "txt_scale")
FULL_WHEN_TOUCHED = 0.5
"""An incremental run scores the rescored rows and the rescored columns in two passes: once they are this share of
their sides (rows / lost listings + columns / found listings: about the share of the candidate pairs they touch) a
full run (one pass, same lineage, same result) is cheaper."""


def _population(lost: Side, found: Side) -> dict[str, int]:
    return {"lost_vectors": int(lost.det_emb.shape[0]), "found_vectors": int(found.det_emb.shape[0]),
            "lost_texts": int(lost.has_text.sum()), "found_texts": int(found.has_text.sum())}  # fmt: skip


def _fingerprint(doc: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _latest_published(runs: RunsDB) -> dict[str, Any] | None:
    rows = runs.query(
        "SELECT run_id, scoring_fingerprint, lineage FROM match_runs WHERE status = 'published' "
        "ORDER BY finished DESC, started DESC LIMIT 1"
    )
    if not rows:
        return None
    run_id, fingerprint, lineage = rows[0]
    return {"run_id": run_id, "fingerprint": fingerprint, "lineage": json.loads(lineage) if lineage else None}


def choose_mode(
    previous: Mapping[str, Any] | None,
    scoring: Mapping[str, Any],
    population: Mapping[str, int],
    *,
    full: bool,
    drift: float,
) -> tuple[str, str, dict[str, float] | None]:
    """→ (``full`` | ``incremental``, why, the lineage's background to reuse or None to estimate a new one).

    Incremental needs a previous published run of the same scoring inputs whose background still fits the
    population; ``--full`` rescores every pair but keeps that background, so it publishes exactly what an
    incremental run would."""
    lineage = (previous or {}).get("lineage")
    if previous is None:
        return "full", "first match run", None
    if not lineage:
        return "full", f"previous run {previous['run_id']} has no lineage (made before incremental matching)", None
    if previous["fingerprint"] != _fingerprint(scoring):
        before = lineage["scoring"]
        changed = sorted(key for key in {*before, *scoring} if before.get(key) != scoring.get(key))
        return "full", f"scoring inputs changed since {previous['run_id']}: {', '.join(changed)}", None
    base = lineage["estimated_on"]
    moved = {key: (population[key], base[key]) for key in population
             if abs(population[key] - base[key]) > drift * max(base[key], 1)}  # fmt: skip
    if moved:
        said = ", ".join(f"{key} {now} vs {then}" for key, (now, then) in moved.items())
        return "full", f"population drifted over match.background_drift={drift} ({said}): background re-estimated", None
    if full:
        return "full", "--full requested", lineage["background"]
    return "incremental", f"same scoring inputs as {previous['run_id']}", lineage["background"]


def _previous_pairs(
    runs: RunsDB, run_id: str, lost: Side, found: Side, fp_lost: np.ndarray, fp_found: np.ndarray
) -> tuple[Previous, np.ndarray, np.ndarray, dict[str, int]]:
    """The previous run's kept pairs in this run's indices, the new-or-changed masks per side, and the counts."""
    with runs.read() as con:
        snap = con.sql(
            "SELECT listing_id, kind, match_fingerprint FROM listings WHERE match_fingerprint IS NOT NULL"
        ).to_arrow_table()
        kept = con.sql(
            "SELECT pair_id, lost_listing_id, found_listing_id, fused, rank_for_lost IS NOT NULL AS for_lost, "
            "rank_for_found IS NOT NULL AS for_found FROM match_members JOIN match_pairs USING (pair_id) "
            "WHERE run_id = ?",
            params=[run_id],
        ).to_arrow_table()
    counts: dict[str, int] = {}
    unchanged_index = {}
    changed = {}
    for side, name, fps, kinds in ((lost, "lost", fp_lost, schema.LOST_KINDS),
                                   (found, "found", fp_found, schema.FOUND_KINDS)):  # fmt: skip
        on_side = snap.filter(pc.is_in(snap["kind"], pa.array(kinds)))
        ids = pa.array(side.listing_ids, pa.string())
        at = pc.index_in(ids, value_set=on_side["listing_id"])
        was = on_side["match_fingerprint"].take(at).to_numpy(zero_copy_only=False)
        same = (was == fps) & np.not_equal(fps, None)  # no fingerprint (unstamped rows): rescored each run
        changed[name] = ~same
        counts[f"{name}_new"] = at.null_count
        counts[f"{name}_changed"] = int(len(was) - same.sum()) - counts[f"{name}_new"]
        counts[f"{name}_removed"] = on_side.num_rows - (len(was) - counts[f"{name}_new"])
        unchanged_index[name] = pa.array(side.listing_ids[same].tolist(), pa.string()), np.flatnonzero(same)

    def index(ids: pa.ChunkedArray, name: str) -> np.ndarray:
        value_set, positions = unchanged_index[name]
        at = pc.fill_null(pc.index_in(ids, value_set=value_set), -1).to_numpy(zero_copy_only=False)
        return np.where(at >= 0, positions[np.maximum(at, 0)] if len(positions) else -1, -1).astype(np.int64)

    fused = pc.fill_null(kept["fused"], float("nan")).to_numpy(zero_copy_only=False)
    if np.isnan(fused).any():
        raise HomewardError(f"previous run {run_id} has pairs without a fused value; run `homeward match --full`")
    previous = Previous(
        lost=index(kept["lost_listing_id"], "lost"),
        found=index(kept["found_listing_id"], "found"),
        fused=fused,
        for_lost=kept["for_lost"].to_numpy(zero_copy_only=False),
        for_found=kept["for_found"].to_numpy(zero_copy_only=False),
        ids=kept["pair_id"].to_numpy(zero_copy_only=False).astype(np.int64),
    )
    return previous, changed["lost"], changed["found"], counts


# -------------------------------------------------------------------------------------------------------- publishing
def _refresh_listings_snapshot(con: Any, listings: pa.Table) -> None:
    """DuckDB's ``listings`` becomes the snapshot of the listings this run scored (with their fingerprints)."""
    cols = [c for c in SNAPSHOT_COLUMNS if c in listings.column_names]
    snap = listings.select(cols)
    photo_ids = listings["photo_ids"] if "photo_ids" in listings.column_names else None
    n_photos = pc.fill_null(pc.list_value_length(photo_ids), 0) if photo_ids is not None else pa.nulls(0)
    snap = snap.append_column("n_photos", n_photos.cast(pa.int32()))
    con.register("_snapshot", snap)
    # only the rows that differ are rewritten: a run that brought 500 new listings among 50k rewrote all 50k (and the
    # commit wrote them again), where comparing them in place costs one join
    same = " AND ".join(f"s.{c} IS NOT DISTINCT FROM l.{c}" for c in [*cols, "n_photos"])
    con.execute(f"DELETE FROM listings l WHERE NOT EXISTS (SELECT 1 FROM _snapshot s WHERE {same})")
    names = ", ".join([*cols, "n_photos"])
    con.execute(
        f"INSERT INTO listings ({names}) SELECT {names} FROM _snapshot "
        "WHERE listing_id NOT IN (SELECT listing_id FROM listings)"
    )
    con.unregister("_snapshot")


def _publish(
    runs: RunsDB,
    run_id: str,
    matches: Iterable[pa.Table],
    carried: pa.Table | None,
    listings: pa.Table,
    summary: dict[str, Any],
    lineage: tuple[str, str, str, dict[str, Any], dict[str, Any]],
    keep_runs: int,
) -> None:
    """Publish this run. ``matches``: its new rows in chunks, each made and inserted before the next is made, in its
    own short transaction: the DuckDB file is locked for one chunk's insert at a time, not for computing every
    chunk's terms and explanations (minutes at national size), so the dashboard's verdicts and other writers are not
    held up. Those rows are invisible until the run is published (``current_matches`` and every report read the
    latest *published* run); a failing run deletes them, and pruning removes any a killed one left. Then, in one
    transaction, what makes the run current: ``carried`` (the previous run's pairs this run keeps unchanged, by
    pair id, with this run's ranks: one narrow membership row each, :func:`engine.run_rows.carry_matches`), the listings
    snapshot, the run's status, and the deletion of the pairs of runs older than the newest ``keep_runs`` published
    ones."""
    for chunk in matches:
        with runs.write() as con:
            run_rows.insert_matches(con, chunk)
    with runs.write() as con:
        if carried is not None:
            run_rows.carry_matches(con, run_id, carried)
        _refresh_listings_snapshot(con, listings)
        con.execute(
            "CREATE OR REPLACE VIEW current_matches AS SELECT * FROM matches WHERE run_id = ("
            "SELECT run_id FROM match_runs WHERE status = 'published' ORDER BY finished DESC, started DESC LIMIT 1)"
        )
        run_rows.record_match_lineage(con, run_id, *lineage)
        run_rows.publish_match(con, run_id, datetime.now(UTC), summary)
        summary["pruned_pairs"] = run_rows.prune_matches(con, keep_runs)


def match(
    settings: Settings,
    *,
    top_k: int | None = None,
    device: str | None = None,
    use_ray: bool | None = None,
    full: bool = False,
) -> dict:
    """Score the lost x found pairs that changed since the last published run (or all of them) and publish the
    top-k per listing to DuckDB.

    Args:
        top_k: matches kept per lost and per found listing (default: match.top_k)
        device: auto, cpu or cuda (default: match.device)
        use_ray: fan blocks out as Ray tasks (default: only when there are more than 2e9 candidate pairs)
        full: rescore every pair (also chosen by itself when the embedder, weights or scoring config changed)
    """
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    cfg = settings.match
    k = int(top_k or cfg.top_k)
    dev = str(resolve_device(device or cfg.device))
    tile = tile_for(cfg.tile_size, torch.device(dev))
    params = ScoreParams.from_settings(cfg)
    store, runs, _ = open_stores(settings)
    run_id = f"match-{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    versions = {t: store.version(t) for t in ("listings", "photos", "detections")}
    parameters = {"top_k": k, "device": dev, "tile_size": tile, "weights": params.weights,
                  "calibration": {"slope": params.slope, "offset": params.offset},
                  "base_radius_km": cfg.base_radius_km, "max_speed_km_per_day": cfg.max_speed_km_per_day,
                  "max_radius_km": cfg.max_radius_km, "max_days": cfg.max_days,
                  "grace_days": cfg.found_before_lost_grace_days, "full": full}  # fmt: skip
    with runs.write() as con:
        run_rows.start_match(con, run_id, started, parameters, versions)
    try:
        with PeakRss() as rss:
            summary = _run(settings, store, runs, run_id, versions, params, k, tile, dev, use_ray, full, t0, rss)
    except BaseException as exc:
        with runs.write() as con:
            message = f"{type(exc).__name__}: {exc}"[:2000]
            run_rows.fail_match(con, run_id, datetime.now(UTC), time.perf_counter() - t0, message)
        raise
    finally:
        t_copy = time.perf_counter()
        published = analyst.publish(settings)
    summary["seconds"]["analyst_copy"] = round(time.perf_counter() - t_copy, 2)
    return {**summary, **published}


@dataclass
class Loaded:
    """Both sides without their vectors, what was chosen while loading them, and what reads the vectors."""

    lost: Side
    found: Side
    embed_model: str | None
    text_model: str | None
    superseded: int
    table: Any | None  # the pinned detections table (None: there is none)
    vectors: tuple[SideVectors, SideVectors]  # lost, found
    fingerprints: tuple[np.ndarray, np.ndarray]  # per listing of each side (``side_fingerprints``)

    def read_vectors(
        self, lost: np.ndarray, found: np.ndarray, cache: VectorCache | None, full: bool
    ) -> tuple[int, int]:
        """Place the vectors of the listings in masks ``lost`` / ``found``: copied from ``cache`` where it holds them
        (an incremental run; every listing it holds, so a rewrite keeps them), the rest read from LanceDB. A full
        run reads every vector and rewrites the cache; an incremental one rewrites it when more than
        ``REFRESH_SHARE`` of the rows came from LanceDB. → (detection rows read, detection rows copied)."""
        read = copied = 0
        placed = []
        for name, v, mask, fps in zip(("lost", "found"), self.vectors, (lost, found), self.fingerprints, strict=True):
            filled = cache.fill(name, v.side, fps) if cache is not None and not full else np.zeros(v.side.n, bool)
            read += v.read(self.table, mask & ~filled)
            copied += int(filled[v.rows.owner].sum())
            placed.append(filled | mask)
        if cache is not None and (full or read > REFRESH_SHARE * (read + copied)):
            try:
                for name, v, mask, fps in zip(("lost", "found"), self.vectors, placed, self.fingerprints, strict=True):
                    cache.write(name, v.side, fps, mask)
            except OSError as exc:  # an accelerator: the run goes on, the next one reads LanceDB
                log.warning("match: cannot write the vector cache under %s: %s", cache.root, exc)
        return read, copied


def _load_sides(settings: Settings, store: Any, version: int | None, listings: pa.Table) -> Loaded:
    """Both sides from the listings and the usable detection rows (one image model, one text model, no failed rows),
    every field but the vectors, and every listing's fingerprint: the detections' small columns are read whole, the
    vectors later, of the listings the run scores (:class:`ray_jobs.match_vectors.SideVectors`). Each side is in
    listing-id order: ties between equal scores then go to the lower listing id, whatever order LanceDB returns rows
    in."""
    table = store.open("detections", version) if version is not None else None
    det, image_dim, text_dim = match_vectors.read_rows(table)
    lost_l = active_listings(listings, schema.LOST_KINDS).sort_by("listing_id")
    found_l = active_listings(listings, schema.FOUND_KINDS).sort_by("listing_id")
    usable = pc.invert(pc.is_in(pc.fill_null(det["status"], "ok"), pa.array(_SKIP_DETECTION_STATUS)))
    on_side = {name: pc.is_in(det["listing_id"], side_l["listing_id"])
               for name, side_l in (("lost", lost_l), ("found", found_l))}  # fmt: skip
    active = pc.and_(usable, pc.or_(on_side["lost"], on_side["found"]))
    model_rows, embed_model, superseded = model_vector_mask(det, configured_embed_model(settings), active)
    keep_mask = pc.fill_null(active if model_rows is None else pc.and_(active, model_rows), False)
    text_rows = pc.and_(keep_mask, det["has_text_embedding"])
    text_model = _text_model(pc.value_counts(det["text_model"].filter(text_rows)).to_pylist())
    sides, vectors, fingerprints = [], [], []
    for name, listings_of_side in (("lost", lost_l), ("found", found_l)):
        rows = det.filter(pc.and_(keep_mask, on_side[name]))
        side, side_rows, order = side_frame(listings_of_side, rows, image_dim, text_dim)
        keys = detection_row_keys(rows).to_numpy(zero_copy_only=False)[order]
        sides.append(side)
        vectors.append(SideVectors(side, side_rows, rows["_rowid"].to_numpy()[order]))
        fingerprints.append(side_fingerprints(side, name, keys, side_rows.owner))
    return Loaded(sides[0], sides[1], embed_model, text_model, superseded, table, (vectors[0], vectors[1]),
                  (fingerprints[0], fingerprints[1]))  # fmt: skip


def _vector_cache(settings: Settings, loaded: Loaded) -> VectorCache:
    key = CacheKey(loaded.embed_model, loaded.text_model, loaded.lost.det_emb.shape[1], loaded.lost.text.shape[1])
    return VectorCache(Path(settings.data_dir) / "cache" / "match-vectors", key)


def _return_freed_memory() -> None:
    """Arrow's allocator (mimalloc) and glibc keep freed pages for reuse. After loading, that is gigabytes scoring
    never reuses (measured at 500k photos: RSS 8.7 GB → 2.5 GB once both hand them back to the OS)."""
    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _run(settings, store, runs, run_id, versions, params, k, tile, dev, use_ray, full, t0, rss) -> dict[str, Any]:
    cfg = settings.match
    listings = store.read("listings", version=versions["listings"]) if versions["listings"] is not None else None
    if listings is None or listings.num_rows == 0:
        listings = pa.Table.from_pylist([], schema=schema.LISTINGS)
    loaded = _load_sides(settings, store, versions["detections"], listings)
    lost, found, embed_model, text_model = loaded.lost, loaded.found, loaded.embed_model, loaded.text_model
    superseded = loaded.superseded
    load_s = time.perf_counter() - t0
    peaks = {"load": rss.lap()}
    scoring = _scoring_inputs(params, k, embed_model, text_model, lost, found)
    population = _population(lost, found)
    previous_run = _latest_published(runs)
    mode, reason, background = choose_mode(previous_run, scoring, population, full=full,
                                           drift=float(cfg.background_drift))  # fmt: skip
    fp_lost, fp_found = loaded.fingerprints
    if mode == "incremental":
        previous, changed_lost, changed_found, changes = _previous_pairs(
            runs, previous_run["run_id"], lost, found, fp_lost, fp_found
        )
    else:
        previous, changed_lost, changed_found = Previous.empty(), np.ones(lost.n, bool), np.ones(found.n, bool)
        changes = {}
    rows, cols = previous.rescore(changed_lost, changed_found)
    touched = rows.sum() / max(lost.n, 1) + cols.sum() / max(found.n, 1)
    if mode == "incremental" and touched > FULL_WHEN_TOUCHED:
        mode, reason = "full", f"the changes touch over {FULL_WHEN_TOUCHED:.0%} of the candidate pairs"
        previous, rows, cols = Previous.empty(), np.ones(lost.n, bool), np.ones(found.n, bool)
    keys = _keys(params, lost, found)
    if mode == "incremental":  # the pairs of the rescored listings only: no blocks of the whole region
        blocks, reach = [], reachable(*keys, rows, cols)
        candidate_pairs = len(reach[0][0]) + len(reach[1][0])
    else:
        blocks, reach = make_blocks(*keys) if lost.n and found.n else [], None
        candidate_pairs = sum(b.pairs for b in blocks)
    peaks["plan"] = rss.lap()
    t_vectors = time.perf_counter()
    cache = _vector_cache(settings, loaded) if cfg.vector_cache else None
    vectors_read, vectors_cached = loaded.read_vectors(*_scored_listings(rows, cols, reach), cache, mode == "full")
    del loaded
    _return_freed_memory()
    load_s += time.perf_counter() - t_vectors
    peaks["load"] = max(peaks["load"], rss.lap())
    if background is None:  # a full run (choose_mode): every vector was read
        params = background_stats(lost, found, params)
        background = {f: getattr(params, f) for f in BACKGROUND_FIELDS}
        estimated_on = population
    else:
        params = replace(params, **background)
        estimated_on = previous_run["lineage"]["estimated_on"]
    log.info("match %s (%s: %s): %d lost × %d found listings, %d blocks, %d candidate pairs, rescoring %d lost "
             "and %d found listings in full on %s (vectors of %d detection rows read, %d copied from the cache)",
             run_id, mode, reason, lost.n, found.n, len(blocks), candidate_pairs, int(rows.sum()), int(cols.sum()), dev,
             vectors_read, vectors_cached)  # fmt: skip
    t_score = time.perf_counter()
    peaks["plan"] = max(peaks["plan"], rss.lap())

    def score(part: list[Block], kk: int) -> tuple[np.ndarray, ...]:
        return _score_all(lost, found, params, part, kk, tile, dev, use_ray, settings)

    scorer = Scorer(lost, found, params, "cpu")
    sel = select(scorer, blocks, previous, rows, cols, k, score, reach)
    score_s = time.perf_counter() - t_score
    peaks["score"] = rss.lap()
    matches = _match_chunks(run_id, scorer, sel, cfg.publish_chunk_rows)
    carried = _carried_ranks(found.n, sel, previous) if mode == "incremental" else None
    changes.update(
        rescored_lost=int(rows.sum()), rescored_found=int(cols.sum()), pairs_scored=sel.tile_pairs,
        pairs_valued=sel.pair_values, matches_carried=int((~sel.scored).sum()),
    )  # fmt: skip
    listings = _with_fingerprints(listings, lost, found, fp_lost, fp_found)
    n = len(sel.lost)
    summary: dict[str, Any] = {
        "run_id": run_id,
        "status": "published",
        "mode": mode,
        "mode_reason": reason,
        "changes": changes,
        "lost_listings": lost.n,
        "found_listings": found.n,
        "blocks": len(blocks),
        "candidate_pairs": candidate_pairs,
        "pairs_scored": sel.tile_pairs,
        "matches": n,
        "embed_model": embed_model,
        "text_model": text_model,
        "superseded_vectors": superseded,
        "vectors_read": vectors_read,
        "vectors_cached": vectors_cached,
        "lance_versions": versions,
        "device": dev,
        "pairs_per_s": round(sel.tile_pairs / score_s, 1) if score_s > 0 else None,
    }
    t_publish = time.perf_counter()
    peaks["rows"] = rss.lap()
    summary["seconds"] = {"load": round(load_s, 2), "plan": round(t_score - t0 - load_s, 2),
                          "score": round(score_s, 2), "rows": round(t_publish - t_score - score_s, 2)}  # fmt: skip
    summary["duration_s"] = round(time.perf_counter() - t0, 3)
    lineage = {"scoring": scoring, "background": background, "estimated_on": estimated_on}
    _publish(runs, run_id, matches, carried, listings, summary,
             (mode, reason, _fingerprint(scoring), lineage, changes), cfg.keep_runs)  # fmt: skip
    summary["seconds"]["publish"] = round(time.perf_counter() - t_publish, 2)
    peaks["publish"] = rss.lap()
    summary["peak_rss_mb"] = {phase: round(mb, 1) for phase, mb in peaks.items()}
    no_photo = runs.query("SELECT count(*) FROM matches WHERE run_id = ? AND no_photo", [run_id])
    summary["no_photo_matches"] = no_photo[0][0]
    return summary


def _scored_listings(
    rows: np.ndarray, cols: np.ndarray, reach: tuple[tuple[np.ndarray, np.ndarray], ...] | None
) -> tuple[np.ndarray, np.ndarray]:
    """(lost, found) masks of the listings whose vectors scoring may read: every listing of a full run; in an
    incremental run the rescored ones and every listing they may pair with (``reach``), because ``select`` values
    only pairs among those (its other pairs keep the previous run's values) and publication values only pairs it
    selected that way."""
    if reach is None:
        return np.ones(len(rows), bool), np.ones(len(cols), bool)
    lost, found = rows.copy(), cols.copy()
    for li, fi in reach:
        lost[li] = True
        found[fi] = True
    return lost, found


def _keys(params: ScoreParams, lost: Side, found: Side) -> tuple[ListingKeys, ListingKeys]:
    """What blocking knows of both sides under the hard rules (species, dates, the capped radius, the places'
    slack): every allowed pair lies in one block of ``make_blocks``, and in ``reachable`` of either of its listings."""
    key_args = dict(
        base_radius_km=params.base_radius_km,
        max_speed_km_per_day=params.max_speed_km_per_day,
        max_radius_km=params.max_radius_km,
        max_days=params.max_days,
        grace_days=params.grace_days,
    )
    return tuple(  # type: ignore[return-value]
        listing_keys(s.species.numpy(), s.lat.numpy(), s.lon.numpy(), s.day.numpy(), **key_args,
                     slack_km=place_slack_km(s.geo_source, s.n, params.place_slack_km))
        for s in (lost, found)
    )  # fmt: skip


def _carried_ranks(n_found: int, sel: Selection, previous: Previous) -> pa.Table:
    """The pairs an incremental run keeps from the previous one, by pair id, with this run's ranks (their values
    are not copied)."""
    reused = ~sel.scored
    return pa.table({
        "pair_id": pa.array(previous.ids_of(sel.lost[reused], sel.found[reused], n_found), pa.int64()),
        "rank_for_lost": _ranks(sel.rank_for_lost[reused]),
        "rank_for_found": _ranks(sel.rank_for_found[reused]),
    })  # fmt: skip


def _with_fingerprints(
    listings: pa.Table, lost: Side, found: Side, fp_lost: np.ndarray, fp_found: np.ndarray
) -> pa.Table:
    """The snapshot with each listing's ``match_fingerprint`` (what the next run compares to find changes)."""
    ids = pa.array(np.r_[lost.listing_ids, found.listing_ids], pa.string())
    fingerprints = pa.array(np.r_[fp_lost, fp_found], pa.string())
    at = pc.index_in(listings["listing_id"], value_set=ids)
    return listings.append_column("match_fingerprint", fingerprints.take(at))


def _ranks(values: np.ndarray) -> pa.Array:
    return pa.array(values, pa.int32(), mask=values == 0)


def _match_chunks(run_id: str, scorer: Scorer, sel: Selection, chunk_rows: int) -> Iterator[pa.Table]:
    """The rows of the pairs this run valued itself (the others are carried from the previous run), ``chunk_rows``
    at a time: each chunk's terms and explanations are computed, inserted and dropped before the next, so
    publication holds one chunk, not every match (at 200k listings, 1.5 M matches with their explanation strings,
    one Arrow table and one insert took the run from 3.7 GB while scoring to 10.7-14 GB). :func:`pair_terms` gives
    a pair the same values in any chunk, so the rows do not depend on ``chunk_rows``."""
    scored, size = np.flatnonzero(sel.scored), max(1, int(chunk_rows))
    for start in range(0, len(scored), size):
        yield _match_rows(run_id, scorer, sel, scored[start : start + size])


def _match_rows(run_id: str, scorer: Scorer, sel: Selection, part: np.ndarray) -> pa.Table:
    """The rows of the selected pairs at positions ``part``, with every term and the explanation."""
    li, fi = sel.lost[part], sel.found[part]
    terms = pair_terms(scorer, li, fi)
    n = len(li)
    return pa.table(
        {
            "run_id": pa.array([run_id] * n, pa.string()),
            "lost_listing_id": pa.array(scorer.lost.listing_ids[li].tolist() if n else [], pa.string()),
            "found_listing_id": pa.array(scorer.found.listing_ids[fi].tolist() if n else [], pa.string()),
            "score": pa.array(terms["score"], pa.float64()),
            "fused": pa.array(terms["fused"], pa.float64()),
            "image_sim": _nullable(terms["image_sim"]),
            "text_sim": _nullable(terms["text_sim"]),
            "attribute_score": _nullable(terms["attribute_score"]),
            "geo_score": _nullable(terms["geo_score"]),
            "time_score": _nullable(terms["time_score"]),
            "distance_km": _nullable(terms["distance_km"]),
            "days_apart": _nullable(terms["days_apart"]),
            "photos_agreeing": pa.array(terms["photos_agreeing"], pa.int32()),
            "rank_for_lost": _ranks(sel.rank_for_lost[part]),
            "rank_for_found": _ranks(sel.rank_for_found[part]),
            "no_photo": pa.array(terms["no_photo"], pa.bool_()),
            "lost_photo_id": pa.array(terms["lost_photo_id"].tolist(), pa.string()),
            "found_photo_id": pa.array(terms["found_photo_id"].tolist(), pa.string()),
            "explanation": pa.array(terms["explanation"].tolist(), pa.string()),
        }
    )


def _nullable(values: np.ndarray) -> pa.Array:
    v = np.asarray(values, dtype=np.float64)
    return pa.array(v, pa.float64(), mask=~np.isfinite(v))
