"""``homeward match``: score every plausible lost × found pair and publish the ranked matches atomically.

1. Read ``listings`` and ``detections`` from LanceDB **at pinned versions** (recorded in ``match_runs.lance_versions``
   so a run can be reproduced while enrichment keeps writing).
2. Refuse image vectors of another model than the run's (the configured profile's embedder, else the table's
   majority model): similarities across models are meaningless.
3. Block by species, place and time (``engine.scoring.blocking``: exact with respect to the hard rules), score each
   block with exact tiled all-pairs (``engine.scoring``), on the GPU when present; blocks fan out as Ray tasks when
   there is enough work to pay for it.
4. Keep the top-k per lost listing **and** per found listing, compute every term of those pairs, and publish them
   with a ``match_runs`` row and a fresh ``listings`` snapshot in **one DuckDB transaction**: readers see the previous
   run or the new one, never half of one. A failed run leaves a ``failed`` run row and no matches.

Query the latest published run's matches with the ``current_matches`` view (created by each publication), e.g.
``SELECT rank_for_lost FROM current_matches WHERE lost_listing_id = ? AND found_listing_id = ?``. ``rank_for_lost``
is NULL when the pair is kept only because it is in the found listing's top-k (and vice versa).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from engine import analyst, run_rows, schema
from engine.config import Settings
from engine.errors import HomewardError
from engine.scoring.allpairs import resolve_device, tile_for
from engine.scoring.blocking import Block, listing_keys, make_blocks
from engine.scoring.blocks import best_per_found, score_blocks
from engine.scoring.fuse import COMPILE_MIN_RUN_PAIRS, ScoreParams, Scorer, Side, background_stats
from engine.scoring.sides import active_listings, build_side, select_model_vectors
from engine.storage import RunsDB, open_stores

log = logging.getLogger(__name__)

RAY_MIN_PAIRS = 2_000_000_000
"""With ``use_ray`` unset, blocks fan out as Ray tasks only above this many candidate pairs (a local Ray costs ~5 s
to start; one CPU scores ~10⁹ pairs of 1280-d vectors in ~20 s)."""
_SKIP_DETECTION_STATUS = ("failed", "error")
DETECTION_COLUMNS = (
    "listing_id", "photo_id", "species", "confidence", "status", "embedding", "embed_model", "text_embedding",
    "text_model",
)  # fmt: skip

MATCH_COLUMNS = (
    "run_id", "lost_listing_id", "found_listing_id", "score", "image_sim", "text_sim", "attribute_score",
    "geo_score", "time_score", "distance_km", "days_apart", "photos_agreeing", "rank_for_lost", "rank_for_found",
    "no_photo", "lost_photo_id", "found_photo_id", "explanation",
)  # fmt: skip
SNAPSHOT_COLUMNS = (
    "listing_id", "source", "source_id", "url", "kind", "status", "species", "breed", "colors", "sex", "age_group",
    "size", "name", "description", "location_text", "lat", "lon", "event_date", "posted_at", "scraped_at",
    "shelter_id", "shelter_name", "photo_ids",
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


def _text_model(det: pa.Table) -> str | None:
    """Text vectors must come from one text model too; they are refused otherwise, naming both."""
    if det.num_rows == 0:
        return None
    counts = Counter(
        m for m, v in zip(det["text_model"].to_pylist(), pc.is_valid(det["text_embedding"]).to_pylist(), strict=True)
        if v and m
    )  # fmt: skip
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


# -------------------------------------------------------------------------------------------------------- publishing
def _refresh_listings_snapshot(con: Any, listings: pa.Table) -> None:
    cols = [c for c in SNAPSHOT_COLUMNS if c in listings.column_names]
    snap = listings.select(cols)
    photo_ids = listings["photo_ids"] if "photo_ids" in listings.column_names else None
    n_photos = pc.fill_null(pc.list_value_length(photo_ids), 0) if photo_ids is not None else pa.nulls(0)
    snap = snap.append_column("n_photos", n_photos.cast(pa.int32()))
    con.register("_snapshot", snap)
    con.execute("DELETE FROM listings")
    names = ", ".join([*cols, "n_photos"])
    con.execute(f"INSERT INTO listings ({names}) SELECT {names} FROM _snapshot")
    con.unregister("_snapshot")


def _publish(runs: RunsDB, run_id: str, matches: pa.Table, listings: pa.Table, summary: dict[str, Any]) -> None:
    """Everything a reader sees of this run, in one transaction."""
    with runs.write() as con:
        con.register("_new_matches", matches)
        names = ", ".join(MATCH_COLUMNS)
        con.execute(f"INSERT INTO matches ({names}) SELECT {names} FROM _new_matches")
        con.unregister("_new_matches")
        _refresh_listings_snapshot(con, listings)
        con.execute(
            "CREATE OR REPLACE VIEW current_matches AS SELECT * FROM matches WHERE run_id = ("
            "SELECT run_id FROM match_runs WHERE status = 'published' ORDER BY finished DESC, started DESC LIMIT 1)"
        )
        run_rows.publish_match(con, run_id, datetime.now(UTC), summary)


def match(
    settings: Settings, *, top_k: int | None = None, device: str | None = None, use_ray: bool | None = None
) -> dict:
    """Score every plausible lost x found pair and publish the top-k per listing to DuckDB.

    Args:
        top_k: matches kept per lost and per found listing (default: match.top_k)
        device: auto, cpu or cuda (default: match.device)
        use_ray: fan blocks out as Ray tasks (default: only when there are more than 2e9 candidate pairs)
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
                  "grace_days": cfg.found_before_lost_grace_days}  # fmt: skip
    with runs.write() as con:
        run_rows.start_match(con, run_id, started, parameters, versions)
    try:
        summary = _run(settings, store, runs, run_id, versions, params, k, tile, dev, use_ray, t0)
    except BaseException as exc:
        with runs.write() as con:
            message = f"{type(exc).__name__}: {exc}"[:2000]
            run_rows.fail_match(con, run_id, datetime.now(UTC), time.perf_counter() - t0, message)
        raise
    finally:
        published = analyst.publish(settings)
    return {**summary, **published}


def _load_sides(
    settings: Settings, store: Any, version: int | None, listings: pa.Table
) -> tuple[Side, Side, str | None, str | None, int]:
    """Both sides' tensors from the listings and the usable detection rows: one image model, one text model, no
    failed rows. → (lost, found, embed model, text model, superseded rows). Only the columns scoring needs are read,
    and every Arrow table here is garbage once the sides exist (at 500k photos each copy of the vectors is ~1.8 GB:
    keeping them through scoring tripled match's memory)."""
    det = store.read("detections", columns=DETECTION_COLUMNS, version=version) if version is not None else None
    if det is None or det.num_rows == 0:
        det = pa.Table.from_pylist([], schema=schema.detections_schema(1, 1)).select(list(DETECTION_COLUMNS))
    lost_l = active_listings(listings, schema.LOST_KINDS)
    found_l = active_listings(listings, schema.FOUND_KINDS)
    if det.num_rows:
        usable = pc.invert(pc.is_in(pc.fill_null(det["status"], "ok"), pa.array(_SKIP_DETECTION_STATUS)))
        active = pc.is_in(det["listing_id"], pa.concat_arrays([lost_l["listing_id"].combine_chunks(),
                                                                  found_l["listing_id"].combine_chunks()]))  # fmt: skip
        det = det.filter(pc.and_(usable, active))
    det, embed_model, superseded = select_model_vectors(det, configured_embed_model(settings))
    text_model = _text_model(det)

    def side(listings_of_side: pa.Table) -> Side:
        rows = det.filter(pc.is_in(det["listing_id"], listings_of_side["listing_id"])) if det.num_rows else det
        return build_side(listings_of_side, rows)

    return side(lost_l), side(found_l), embed_model, text_model, superseded


def _return_freed_memory() -> None:
    """Arrow's allocator (mimalloc) and glibc keep freed pages for reuse. After loading, that is gigabytes scoring
    never reuses (measured at 500k photos: RSS 8.7 GB → 2.5 GB once both hand them back to the OS)."""
    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _run(settings, store, runs, run_id, versions, params, k, tile, dev, use_ray, t0) -> dict[str, Any]:
    cfg = settings.match
    listings = store.read("listings", version=versions["listings"]) if versions["listings"] is not None else None
    if listings is None or listings.num_rows == 0:
        listings = pa.Table.from_pylist([], schema=schema.LISTINGS)
    lost, found, embed_model, text_model, superseded = _load_sides(settings, store, versions["detections"], listings)
    _return_freed_memory()
    params = background_stats(lost, found, params)
    key_args = dict(
        base_radius_km=cfg.base_radius_km,
        max_speed_km_per_day=cfg.max_speed_km_per_day,
        max_radius_km=cfg.max_radius_km,
        max_days=cfg.max_days,
        grace_days=cfg.found_before_lost_grace_days,
    )
    lost_keys = listing_keys(lost.species.numpy(), lost.lat.numpy(), lost.lon.numpy(), lost.day.numpy(), **key_args)
    found_keys = listing_keys(
        found.species.numpy(), found.lat.numpy(), found.lon.numpy(), found.day.numpy(), **key_args
    )
    blocks = make_blocks(lost_keys, found_keys) if lost.n and found.n else []
    candidate_pairs = sum(b.pairs for b in blocks)
    log.info("match %s: %d lost × %d found listings, %d blocks, %d candidate pairs on %s",
             run_id, lost.n, found.n, len(blocks), candidate_pairs, dev)  # fmt: skip
    t_score = time.perf_counter()
    rl, rf, _rs, rrank, cl, cf, cs = _score_all(lost, found, params, blocks, k, tile, dev, use_ray, settings)
    score_s = time.perf_counter() - t_score
    cl, cf, _, crank = best_per_found(cl.astype(np.int64), cf.astype(np.int64), cs, k)

    pairs: dict[tuple[int, int], list[Any]] = {}
    for a, b, r in zip(rl.astype(np.int64).tolist(), rf.astype(np.int64).tolist(), rrank.tolist(), strict=True):
        pairs[(a, b)] = [r, None]
    for a, b, r in zip(cl.tolist(), cf.tolist(), crank.tolist(), strict=True):
        pairs.setdefault((a, b), [None, None])[1] = r
    keys = sorted(pairs)
    li = np.array([p[0] for p in keys], dtype=np.int64)
    fi = np.array([p[1] for p in keys], dtype=np.int64)
    terms = Scorer(lost, found, params, "cpu").pairs(li, fi)
    n = len(keys)
    matches = pa.table(
        {
            "run_id": pa.array([run_id] * n, pa.string()),
            "lost_listing_id": pa.array(lost.listing_ids[li].tolist() if n else [], pa.string()),
            "found_listing_id": pa.array(found.listing_ids[fi].tolist() if n else [], pa.string()),
            "score": pa.array(terms["score"], pa.float64()),
            "image_sim": _nullable(terms["image_sim"]),
            "text_sim": _nullable(terms["text_sim"]),
            "attribute_score": _nullable(terms["attribute_score"]),
            "geo_score": _nullable(terms["geo_score"]),
            "time_score": _nullable(terms["time_score"]),
            "distance_km": _nullable(terms["distance_km"]),
            "days_apart": _nullable(terms["days_apart"]),
            "photos_agreeing": pa.array(terms["photos_agreeing"], pa.int32()),
            "rank_for_lost": pa.array([pairs[p][0] for p in keys], pa.int32()),
            "rank_for_found": pa.array([pairs[p][1] for p in keys], pa.int32()),
            "no_photo": pa.array(terms["no_photo"], pa.bool_()),
            "lost_photo_id": pa.array(terms["lost_photo_id"].tolist(), pa.string()),
            "found_photo_id": pa.array(terms["found_photo_id"].tolist(), pa.string()),
            "explanation": pa.array(terms["explanation"].tolist(), pa.string()),
        }
    )
    summary: dict[str, Any] = {
        "run_id": run_id,
        "status": "published",
        "lost_listings": lost.n,
        "found_listings": found.n,
        "blocks": len(blocks),
        "candidate_pairs": candidate_pairs,
        "matches": n,
        "embed_model": embed_model,
        "text_model": text_model,
        "superseded_vectors": superseded,
        "lance_versions": versions,
        "device": dev,
        "pairs_per_s": round(candidate_pairs / score_s, 1) if score_s > 0 else None,
        "no_photo_matches": int(terms["no_photo"].sum()),
    }
    summary["duration_s"] = round(time.perf_counter() - t0, 3)
    _publish(runs, run_id, matches, listings, summary)
    return summary


def _nullable(values: np.ndarray) -> pa.Array:
    v = np.asarray(values, dtype=np.float64)
    return pa.array(v, pa.float64(), mask=~np.isfinite(v))
