"""``homeward bench load``: a synthetic region (default 200k listings, 500k photos) through crawl-ingest → match.

What runs, in one process, into a throw-away data dir (``<data_dir>/bench-load-*``, removed unless ``keep``):

1. **generate** — :class:`ray_jobs.bench.synthetic.Region` samples every field from distributions read at run time from
   ``../shared/data/datasets`` (kind, species, looks, photos per listing, delays, geography; planted reunions).
2. **ingest** — the crawl's real LanceDB writer stage (:class:`crawlers.pipelines.lance.LanceWriterPipeline`, on
   a Scrapy crawler that never downloads) receives every listing item with its photo rows and writes them in bulk
   (``flush_items`` items per flush: one ``merge_insert`` per table per flush). Reference, same run, same rows: a
   plain LanceDB ``add`` (append, no upsert) of the same listing and photo rows into a scratch table;
   ``ingest.ratio_to_append`` = pipeline rows/s ÷ append rows/s.
3. **vectors** — one detection per photo with a synthetic unit vector (animal identity + noise), upserted into
   ``detections`` in chunks like enrich's writer. Enrichment itself is not run: 500k photos through YOLO (~6 img/s)
   and an embedder (~26 img/s) on 2 CPUs is about a day; ``homeward bench enrich`` measures that stage.
4. **match** — ``homeward match`` as is (pinned versions, blocking, tiled all-pairs, fused scores, atomic
   publication to DuckDB). Reference: the plain torch matrix-product rate on this machine for the same vector
   dimension (``match.reference_pairs_per_s``); ``match.ratio_to_matmul`` = candidate photo-pairs/s ÷ that.
   The recall of the planted reunions (rank of the found listing among its lost listing's matches) checks that the
   scores are right at scale, not just fast.

Peak memory (RSS) is sampled every 50 ms per stage; ``peak_rss_mb`` is the process maximum. Figures print as one
JSON object on the last line.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from engine.config import Settings
from ray_jobs.memory import PeakRss

log = logging.getLogger(__name__)


def _stub_crawler(settings: Settings, flush_items: int) -> Any:
    """A Scrapy crawler (settings, stats, signals) for the writer stage, with a spider that never crawls."""
    import scrapy
    from scrapy.utils.test import get_crawler

    from crawlers.settings import homeward_keys

    class SyntheticSpider(scrapy.Spider):
        name = "synthetic"
        source = "synthetic"

    crawler = get_crawler(SyntheticSpider, {**homeward_keys(settings), "HOMEWARD_FLUSH_ITEMS": int(flush_items)})
    crawler.spider = SyntheticSpider()
    return crawler


def ingest(settings: Settings, region: Any, chunk: int, flush_items: int, reference: bool = True) -> dict[str, Any]:
    """Feed every listing item of ``region`` through the crawl's LanceDB writer stage; time it (and the append
    reference on the same rows)."""
    import lancedb
    import pyarrow as pa

    from crawlers.items import ListingItem
    from crawlers.pipelines.lance import LanceWriterPipeline, listing_row
    from engine import schema

    crawler = _stub_crawler(settings, flush_items)
    writer = LanceWriterPipeline(crawler)
    writer.open_spider()
    scratch = Path(settings.data_dir) / "append-reference"
    ref_db = lancedb.connect(str(scratch)) if reference else None
    ref_tables: dict[str, Any] = {}
    gen_s = ingest_s = ref_s = 0.0
    n_items = n_photos = 0
    with PeakRss() as peak:
        chunks = region.items(chunk)
        while True:
            t0 = time.perf_counter()
            items = next(chunks, None)
            if items is None:
                break
            listing_items = [ListingItem(**it) for it in items]
            t1 = time.perf_counter()
            gen_s += t1 - t0
            if ref_db is not None:
                lrows = pa.Table.from_pylist([listing_row(i) for i in listing_items], schema=schema.LISTINGS)
                prows = pa.Table.from_pylist([p for it in items for p in it["photos"]], schema=schema.PHOTOS)
                t2 = time.perf_counter()
                for name, rows in (("listings", lrows), ("photos", prows)):
                    if name in ref_tables:
                        ref_tables[name].add(rows)
                    else:
                        ref_tables[name] = ref_db.create_table(name, data=rows)
                ref_s += time.perf_counter() - t2
            t3 = time.perf_counter()
            for item in listing_items:
                writer.process_item(item)
            ingest_s += time.perf_counter() - t3
            n_items += len(items)
            n_photos += sum(len(it["photos"]) for it in items)
            print(f"  ingest: {n_items} listings, {n_photos} photos, {ingest_s:.0f}s", file=sys.stderr, flush=True)
        t4 = time.perf_counter()
        writer.close_spider()
        ingest_s += time.perf_counter() - t4
    if crawler.stats.get_value("homeward/writer_failed"):
        raise RuntimeError("the LanceDB writer failed during the load ingest (see the log)")
    shutil.rmtree(scratch, ignore_errors=True)
    rows = n_items + n_photos
    out = {
        "listings": n_items,
        "photos": n_photos,
        "seconds": round(ingest_s, 2),
        "listings_per_s": round(n_items / ingest_s, 1),
        "photos_per_s": round(n_photos / ingest_s, 1),
        "rows_per_s": round(rows / ingest_s, 1),
        "flushes": int(crawler.stats.get_value("homeward/flushes") or 0),
        "generate_seconds": round(gen_s, 2),
        "peak_rss_mb": round(peak.peak, 1),
    }
    if reference:
        out["append_reference_rows_per_s"] = round(rows / ref_s, 1)
        out["ratio_to_append"] = round((rows / ingest_s) / (rows / ref_s), 3)
    return out


def write_vectors(settings: Settings, region: Any, dim: int, text_dim: int, embed_model: str, chunk: int) -> dict:
    from engine import schema
    from engine.storage import LanceStore

    store = LanceStore(settings.lance, settings.storage_options)
    det_schema = schema.detections_schema(dim, text_dim)
    gen_s = write_s = 0.0
    n = 0
    with PeakRss() as peak:
        tables = region.detections(dim, text_dim, embed_model, chunk=chunk)
        while True:
            t0 = time.perf_counter()
            table = next(tables, None)
            if table is None:
                break
            t1 = time.perf_counter()
            gen_s += t1 - t0
            store.upsert("detections", table, key="detection_id", table_schema=det_schema)
            write_s += time.perf_counter() - t1
            n += table.num_rows
            print(f"  vectors: {n} detections, {write_s:.0f}s", file=sys.stderr, flush=True)
    return {
        "detections": n,
        "dim": dim,
        "text_dim": text_dim,
        "seconds": round(write_s, 2),
        "rows_per_s": round(n / write_s, 1) if write_s else None,
        "generate_seconds": round(gen_s, 2),
        "peak_rss_mb": round(peak.peak, 1),
    }


def matmul_pairs_per_s(dim: int, n: int = 4096, reps: int = 3) -> float:
    """Plain torch ``a @ b.T`` rate (pairs/s) for ``n × dim`` blocks: the roofline the match scorer runs against."""
    import torch

    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, dim, generator=g)
    b = torch.randn(n, dim, generator=g)
    (a @ b.T).sum()  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        (a @ b.T).sum()
    return n * n * reps / (time.perf_counter() - t0)


def reunion_ranks(settings: Settings, region: Any, run_id: str) -> dict[str, Any]:
    import pyarrow as pa

    from engine.storage import RunsDB

    pairs = pa.table(
        {
            "lost_listing_id": [region.listing_id(int(i)) for i in region.reunions[:, 0]],
            "found_listing_id": [region.listing_id(int(i)) for i in region.reunions[:, 1]],
        }
    )
    with RunsDB(settings.duckdb).read() as con:
        con.register("planted", pairs)
        ranks = [
            r[0]
            for r in con.execute(
                "SELECT m.rank_for_lost FROM planted p LEFT JOIN matches m ON m.run_id = ? "
                "AND m.lost_listing_id = p.lost_listing_id AND m.found_listing_id = p.found_listing_id",
                [run_id],
            ).fetchall()
        ]
    total = len(ranks)
    return {
        "planted_reunions": total,
        "recall_at_1": round(sum(r == 1 for r in ranks) / total, 4) if total else None,
        "recall_at_k": round(sum(r is not None for r in ranks) / total, 4) if total else None,
    }


def bench_load(
    settings: Settings,
    *,
    listings: int = 200_000,
    photos: int = 500_000,
    dim: int = 512,
    text_dim: int = 384,
    seed: int = 1,
    chunk: int = 10_000,
    flush_items: int = 10_000,
    vector_chunk: int = 50_000,
    top_k: int | None = None,
    use_ray: bool = False,
    datasets_dir: str | None = None,
    reference: bool = True,
    skip_match: bool = False,
    keep: bool = False,
    new: int = 0,
) -> dict:
    """Synthetic region (realistic fields) through crawl-ingest → match: throughput per stage and peak memory.

    Args:
        listings: listings in the region.
        photos: photos in the region (spread over listings like the real photos-per-post distributions).
        dim: image vector dimension (512: CLIP ViT-B/32; the cpu profile's ensemble gives 2752).
        text_dim: text vector dimension (384: all-MiniLM-L6-v2).
        seed: makes the region reproducible.
        chunk: listing items generated and handed to the writer per batch.
        flush_items: items per LanceDB flush of the crawl writer (HOMEWARD_FLUSH_ITEMS).
        vector_chunk: detection rows per upsert.
        top_k: matches kept per listing (default: match.top_k).
        use_ray: let match fan blocks out as Ray tasks (default off: one process, so its memory is measured).
        datasets_dir: the real datasets the distributions come from (default ../shared/data/datasets).
        reference: also time the plain LanceDB append of the same rows (ingest reference).
        skip_match: stop after the vectors (match is quadratic in the listings of a block: see docs/SCALE_OUT.md).
        keep: keep the generated data dir (its path is in the output).
        new: after the match, add this many new listings (same distributions, their own photos and vectors), then
            time an incremental match and a full rematch of the same data and compare what they publish.
    """
    from ray_jobs.bench.synthetic import Region, load_region_model
    from ray_jobs.match import configured_embed_model

    started = time.perf_counter()
    root = Path(settings.data_dir)
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-load-", dir=root))
    run_settings = settings.with_overrides(
        {"data_dir": str(work), "lance_uri": None, "duckdb_path": None, "photo_store": None}, "bench load"
    )
    try:
        t0 = time.perf_counter()
        with PeakRss() as peak:
            model = load_region_model(datasets_dir)
            region = Region(model, n_listings=listings, n_photos=photos, seed=seed)
        generate = {"seconds": round(time.perf_counter() - t0, 2), "peak_rss_mb": round(peak.peak, 1),
                    "distributions": model.summary(), "planted_reunions": len(region.reunions)}  # fmt: skip
        print(f"[1/3] ingest {listings} listings / {photos} photos", file=sys.stderr, flush=True)
        ingested = ingest(run_settings, region, chunk, flush_items, reference)
        # the synthetic vectors claim the configured embedder's id, so match takes them as the run's model
        embed_model = configured_embed_model(run_settings) or "synthetic-vectors/1"
        print(f"[2/3] synthetic vectors ({dim}-d image, {text_dim}-d text)", file=sys.stderr, flush=True)
        vectors = write_vectors(run_settings, region, dim, text_dim, embed_model, vector_chunk)
        matched = None if skip_match else _match_stage(run_settings, region, dim, top_k, use_ray)
        incremental = None
        if new and not skip_match:
            extra = dict(dim=dim, text_dim=text_dim, embed_model=embed_model, chunk=chunk, flush_items=flush_items)
            incremental = _incremental_stage(run_settings, region, new, top_k, use_ray, **extra)
        disk_mb = round(sum(f.stat().st_size for f in work.rglob("*") if f.is_file()) / 2**20, 1)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return {
        "listings": listings,
        "photos": photos,
        "generate": generate,
        "ingest": ingested,
        "vectors": vectors,
        "match": matched,
        **({"incremental": incremental} if incremental is not None else {}),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "cpus": os.cpu_count(),
        "seconds": round(time.perf_counter() - started, 1),
        "data_dir": str(work) if keep else None,
        "disk_mb": disk_mb,
        "seed": seed,
    }


def _match_stage(settings: Settings, region: Any, dim: int, top_k: int | None, use_ray: bool) -> dict[str, Any]:
    from ray_jobs.match import match

    print("[3/3] match", file=sys.stderr, flush=True)
    ref_rate = matmul_pairs_per_s(dim)
    t0 = time.perf_counter()
    with PeakRss() as peak:
        result = match(settings, top_k=top_k, use_ray=use_ray)
    match_s = time.perf_counter() - t0
    return {
        "seconds": round(match_s, 2),
        "lost_listings": result["lost_listings"],
        "found_listings": result["found_listings"],
        "blocks": result.get("blocks"),
        "candidate_pairs": result["candidate_pairs"],
        "candidate_pairs_per_s": round(result["candidate_pairs"] / match_s, 1),
        "matches": result["matches"],
        "peak_rss_mb": round(peak.peak, 1),
        "phase_seconds": result["seconds"],
        "phase_peak_rss_mb": result["peak_rss_mb"],
        "reference_pairs_per_s": round(ref_rate, 1),
        "ratio_to_matmul": round(result["candidate_pairs"] / match_s / ref_rate, 4),
        **reunion_ranks(settings, region, result["run_id"]),
    }


def _incremental_stage(
    settings: Settings,
    region: Any,
    new: int,
    top_k: int | None,
    use_ray: bool,
    *,
    dim: int,
    text_dim: int,
    embed_model: str,
    chunk: int,
    flush_items: int,
) -> dict[str, Any]:
    """``new`` more listings of the region's distributions (own seed and ids, as many photos per listing, their
    vectors), then ``match`` incrementally and ``match --full`` of the same data, each timed; ``identical``: the two
    published runs' matches are equal, every column but the run id."""
    from engine.storage import RunsDB
    from ray_jobs.bench.synthetic import Region
    from ray_jobs.match import match

    class NewListings(Region):
        """More listings of the same region, with ids of their own (``<kind>n<index>``): none replaces one."""

        def source_id(self, i: int) -> str:
            return f"{self.kind[i][0]}n{i:07d}"

    print(f"[4/4] {new} new listings: incremental match, then a full rematch", file=sys.stderr, flush=True)
    photos = round(new * region.n_photos / max(region.n_listings, 1))
    added = NewListings(region.model, n_listings=new, n_photos=photos, seed=region.seed + 1)
    ingest(settings, added, chunk, flush_items, reference=False)
    write_vectors(settings, added, dim, text_dim, embed_model, chunk)
    timed = {}
    for name, full in (("incremental", False), ("full", True)):
        t0 = time.perf_counter()
        timed[name] = (match(settings, top_k=top_k, use_ray=use_ray, full=full), time.perf_counter() - t0)
    (inc, inc_s), (ful, full_s) = timed["incremental"], timed["full"]
    with RunsDB(settings.duckdb).read() as con:
        differ = con.execute(
            "WITH a AS (SELECT * EXCLUDE (run_id) FROM matches WHERE run_id = ?), "
            "b AS (SELECT * EXCLUDE (run_id) FROM matches WHERE run_id = ?) "
            "SELECT (SELECT count(*) FROM (SELECT * FROM a EXCEPT SELECT * FROM b)) "
            "+ (SELECT count(*) FROM (SELECT * FROM b EXCEPT SELECT * FROM a))",
            [inc["run_id"], ful["run_id"]],
        ).fetchone()[0]
    return {
        "new_listings": new,
        "seconds": round(inc_s, 2),
        "full_seconds": round(full_s, 2),
        "ratio": round(inc_s / full_s, 4),
        "identical": differ == 0 and inc["matches"] == ful["matches"],
        "rows_differing": differ,
        "mode": inc["mode"],
        "mode_reason": inc["mode_reason"],
        "full_mode_reason": ful["mode_reason"],
        "changes": inc["changes"],
        "pairs_scored": inc["pairs_scored"],
        "full_pairs_scored": ful["pairs_scored"],
        "vectors_read": inc["vectors_read"],
        "vectors_cached": inc["vectors_cached"],
        "phases": inc["seconds"],
        "full_phases": ful["seconds"],
        "matches": inc["matches"],
    }


__all__ = ["bench_load", "ingest", "matmul_pairs_per_s", "write_vectors"]
