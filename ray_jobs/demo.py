"""``homeward demo``: the whole job, end to end, on one machine, proving it finds planted reunions.

It builds a small lost-and-found website with reunions planted in it (``ray_jobs/demo_site.py``), serves it on
127.0.0.1, crawls it with the configurable spider, enriches every photo, matches lost × found, and then asks the
published DuckDB matches where each planted found post ranked for its lost post. Real components throughout: a real
HTTP server, Scrapy, Ray, the configured models, LanceDB and DuckDB on disk.

``--photos DIR`` plants the reunions from any folder of identity folders (``DIR/<identity>/<image>.jpg``, e.g.
``../shared/data/realpets/images``, dogs and cats); each post carries 1–3 photos of its animal and no species (the
detector tells it at enrich time), and the summary splits the figures by the true species that ``manifest.csv``
beside ``DIR`` gives (``unknown`` without one). Its default size is the issue's measurement, 100 lost/found pairs
among 310 listings. Without ``--photos``, with ``../shared`` beside the checkout it uses real dog photos (DogFaceNet
identities), 20 reunions among 100 listings; without ``../shared``, synthetic animals. The real weights come from
``../shared/models`` (or ``--models-dir``); without them the ``tiny`` model profile (random weights) runs, which shows
the plumbing works but says nothing about recognition quality — the summary says which one ran.

Besides the totals, the summary gives ``by_species`` (reunions, rank 1, top 5, and the share of that species' photos
the detector found an animal in), ``photos_per_post`` (min, max, mean, posts per count) and ``detected_share``: the
share of stored photos with at least one detection that is not the whole-frame fallback, which bounds how much of the
matching ran on crops.
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
from ray_jobs.demo_site import DemoSite, DemoSiteError, build_demo_site

log = logging.getLogger(__name__)

DEFAULT_SHARED = Path(__file__).resolve().parents[1].parent / "shared"
# the files the cpu profile needs from a models folder (its embedder ships with the code, breeds in a wheel)
CPU_PROFILE_WEIGHTS = ("yolo11n_coco_recon_from_int8.pt",)
DEFAULT_SIZE = (20, 60)  # reunions, distractors: 100 listings, about a minute on a laptop
PHOTOS_SIZE = (100, 110)  # the measurement: 100 lost/found pairs among 310 listings


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


def _figures(ranks: list[int | None]) -> dict[str, int]:
    return {
        "reunions": len(ranks),
        "rank1": sum(r == 1 for r in ranks),
        "top5": sum(r is not None and r <= 5 for r in ranks),
    }


def detected_shares(
    ok_photos: set[str], detected: set[str], post_photos: dict[str, list[str]], post_species: dict[str, str]
) -> tuple[float | None, dict[str, float | None]]:
    """Share of ``ok_photos`` in ``detected``, overall and per species of the posts carrying them (None: no photos)."""

    def share(photos: set[str]) -> float | None:
        return round(len(photos & detected) / len(photos), 3) if photos else None

    by_species: dict[str, set[str]] = {}
    for source_id, photos in post_photos.items():
        by_species.setdefault(post_species.get(source_id, "unknown"), set()).update(set(photos) & ok_photos)
    return share(ok_photos), {species: share(photos) for species, photos in sorted(by_species.items())}


def _column(table: Any, name: str) -> list[Any]:
    return table[name].to_pylist() if name in table.column_names else []


def _species_figures(settings: Settings, site: DemoSite, ranks: list[int | None]) -> dict[str, Any]:
    """``by_species`` and ``detected_share`` of the summary, from the site's true species and the stored tables."""
    lance = LanceStore(settings.lance, settings.storage_options)
    ok_photos = set(_column(lance.read("photos", "status = 'ok'", ["photo_id"]), "photo_id"))
    detected = set(_column(lance.read("detections", "full_frame = false", ["photo_id"]), "photo_id"))
    listings = lance.read("listings", "source = 'demo'", ["source_id", "photo_ids"])
    post_photos = dict(zip(_column(listings, "source_id"), _column(listings, "photo_ids"), strict=True))
    post_species = {post: site.species_of(identity) for post, identity in site.post_identity.items()}
    total, shares = detected_shares(ok_photos, detected, post_photos, post_species)
    by_rank: dict[str, list[int | None]] = {}
    for reunion, rank in zip(site.reunions, ranks, strict=True):
        by_rank.setdefault(site.species_of(reunion.identity), []).append(rank)
    by_species = {
        species: {**_figures(by_rank.get(species, [])), "detected_share": shares.get(species)}
        for species in sorted(set(by_rank) | set(shares))
    }
    return {"by_species": by_species, "detected_share": total}


def demo(
    settings: Settings,
    *,
    photos: str | None = None,
    reunions: int | None = None,
    distractors: int | None = None,
    distractor_photos: str | None = None,
    shared_dir: str | None = None,
    seed: int = 7,
) -> dict[str, Any]:
    """Crawl, enrich, match and report on a generated local site with planted reunions.

    Args:
        photos: plant reunions from DIR/<identity>/<image>.jpg, 1-3 photos a post (species: DIR/../manifest.csv)
        reunions: animals planted as a lost and a found post of each (default 100, or 20 without --photos)
        distractors: other animals' posts around them, same area and weeks (default 110, or 60 without --photos)
        distractor_photos: take the distractors from the images under DIR instead, one animal each (any layout)
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
    if photos is not None and not Path(photos).is_dir():
        raise DemoSiteError(f"--photos {photos}: not a directory (expected DIR/<identity>/<image>.jpg)")
    default_photos = shared / "data" / "dogfacenet" / "images" if shared else None
    images_dir = Path(photos) if photos else default_photos if default_photos and default_photos.is_dir() else None
    default_reunions, default_distractors = PHOTOS_SIZE if photos else DEFAULT_SIZE
    settings, profile = _choose_models(settings, shared)

    with ray_session(settings):  # joins or starts Ray first: an unreachable cluster fails before anything is written
        _stage(1, 5, "building the demo site with planted reunions")
        site = build_demo_site(
            Path(settings.data_dir) / "demo-site",
            reunions=default_reunions if reunions is None else reunions,
            distractors=default_distractors if distractors is None else distractors,
            images_dir=images_dir,
            distractor_photos=Path(distractor_photos) if distractor_photos else None,
            seed=seed,
        )
        print(
            f"      {site.posts} posts ({sum(site.post_photos.values())} photos), {len(site.reunions)} reunions "
            f"planted; photos: {site.photos_from}",
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
    summary = _summary(settings, site, ranks, profile, images_dir)
    summary.update(crawl=crawled, enrich=enriched, match=matched, seconds=round(time.monotonic() - started, 1))
    _print_summary(summary, settings, site, len(ranks))
    return summary


def _summary(
    settings: Settings, site: DemoSite, ranks: list[int | None], profile: str, images_dir: Path | None
) -> dict[str, Any]:
    """What the store holds after the demo and how the planted reunions ranked, overall and per species."""
    totals = _figures(ranks)
    lance = LanceStore(settings.lance, settings.storage_options)
    return {
        "listings": lance.count("listings"),
        "photos": lance.count("photos"),
        "detections": lance.count("detections"),
        "matches": RunsDB(settings.duckdb).query(
            "SELECT count(*) FROM matches JOIN match_runs USING (run_id) WHERE status = 'published'"
        )[0][0],
        "planted_reunions": totals["reunions"],
        "reunions_rank1": totals["rank1"],
        "reunions_top5": totals["top5"],
        **_species_figures(settings, site, ranks),
        "profile": profile,
        "photos_from": site.photos_from,
        "photos_dir": str(images_dir) if images_dir else None,
        "photos_per_post": site.photos_per_post(),
        "site_warnings": site.warnings,
        "lance": settings.lance,
        "duckdb": settings.duckdb,
        "photo_store": settings.photos,
    }


def _print_summary(summary: dict[str, Any], settings: Settings, site: DemoSite, planted: int) -> None:
    per_species = "".join(
        f"\n  {species}: rank 1 {f['rank1']}/{f['reunions']}, top 5 {f['top5']}/{f['reunions']}, "
        f"photos with a detection {f['detected_share']}"
        for species, f in summary["by_species"].items()
    )
    print(
        f"\nHomeward demo: {summary['listings']} listings, {summary['photos']} photos, "
        f"{summary['detections']} detections, {summary['matches']} matches in {summary['seconds']}s.\n"
        f"Planted reunions found at rank 1: {summary['reunions_rank1']}/{planted}, "
        f"in the top 5: {summary['reunions_top5']}/{planted} (profile {summary['profile']}, photos: "
        f"{site.photos_from}); photos with a detection: {summary['detected_share']}.{per_species}\n"
        f"LanceDB: {settings.lance}\nDuckDB:  {settings.duckdb}\nPhotos:  {settings.photos}",
        file=sys.stderr,
    )


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
