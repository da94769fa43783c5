"""The match vector cache (``ray_jobs.match_cache``): an incremental run copies the vectors of unchanged listings
from it, reads only the changed ones from LanceDB, and still publishes what a full rematch does; a cache it cannot
trust is ignored."""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.config import Settings
from engine.storage import RunsDB
from ray_jobs import match as match_job
from ray_jobs import match_cache, match_vectors
from ray_jobs.match import match
from tests.test_match import World, _published


@pytest.fixture(autouse=True)
def _majority_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(match_job, "configured_embed_model", lambda settings: None)


def _cache(settings: Settings) -> Path:
    return Path(settings.data_dir) / "cache" / "match-vectors"


def _record_reads(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Listing ids whose vectors are read from LanceDB, over every side read."""
    read = match_vectors.SideVectors.read
    listings: set[str] = set()

    def recording(self: match_vectors.SideVectors, table, mask: np.ndarray) -> int:
        listings.update(self.side.listing_ids[mask].tolist())
        return read(self, table, mask)

    monkeypatch.setattr(match_vectors.SideVectors, "read", recording)
    return listings


def _world(settings: Settings) -> tuple[World, list[tuple[str, str]]]:
    world = World()
    pairs = world.plant(12, distractors=30)  # 1-3 photos a listing: text vectors are sums of several rows
    world.write(settings)
    return world, pairs


def test_incremental_runs_copy_unchanged_vectors_and_publish_what_a_full_rematch_does(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings.with_overrides({"match": {"background_drift": 10.0}})
    world, pairs = _world(settings)
    first = match(settings, top_k=3)
    total_rows = len(world.detections)
    assert first["mode"] == "full" and first["vectors_read"] == total_rows and first["vectors_cached"] == 0
    meta = json.loads((_cache(settings) / "found" / "meta.json").read_text())
    assert meta["embed_model"] == world.model and meta["image_dim"] == len(world.detections[0]["embedding"])

    # a lost listing's photo re-embedded (same detection row, another vector, a new write stamp): its cached
    # vectors are stale and must not be copied; one new found listing of that animal; one listing's colour edited
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    lost_id = pairs[0][0]
    animal = world.identity()
    redone = next(row for row in world.detections if row["listing_id"] == lost_id)
    redone.update(embedding=world.vec(animal, 0.0), created_at=later)
    new_found = world.add("found", "new-found", animal, day=3)
    edited = next(row for row in world.listings if row["listing_id"] == pairs[1][1])
    edited["colors"] = ["white"]
    world.write(settings)

    with monkeypatch.context() as patched:
        read = _record_reads(patched)
        incremental = match(settings, top_k=3)
    assert incremental["mode"] == "incremental", incremental["mode_reason"]
    assert read == {lost_id, new_found, pairs[1][1]}  # everything else was copied
    rows_of = {lid: sum(row["listing_id"] == lid for row in world.detections) for lid in read}
    assert incremental["vectors_read"] == sum(rows_of.values())
    assert incremental["vectors_cached"] == len(world.detections) - incremental["vectors_read"]
    # a few rows from LanceDB: the cache was not rewritten (it still has the first run's listings)
    assert json.loads((_cache(settings) / "found" / "meta.json").read_text())["listings"] == meta["listings"]

    rematch = match(settings, top_k=3, full=True)
    assert rematch["vectors_read"] == len(world.detections) and rematch["vectors_cached"] == 0
    db = RunsDB(settings.duckdb)
    assert _published(db, incremental["run_id"]) == _published(db, rematch["run_id"])
    assert db.query("SELECT count(*) FROM matches WHERE run_id = ? AND lost_listing_id = ? AND found_listing_id = ?",
                    [incremental["run_id"], lost_id, new_found]) == [(1,)]  # fmt: skip
    assert json.loads((_cache(settings) / "found" / "meta.json").read_text())["listings"] == meta["listings"] + 1


def _garbage_vectors(folder: Path) -> None:
    (folder / "det_emb.npy").write_bytes(b"not a numpy file")


def _inconsistent_offsets(folder: Path) -> None:
    offsets = np.load(folder / "offsets.npy")
    offsets[-1] += 5
    np.save(folder / "offsets.npy", offsets)


def _meta_without_its_size(folder: Path) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "listings"}))


def _another_model(folder: Path) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "embed_model": "another-embedder/2"}))


@pytest.mark.parametrize(
    ("spoil", "warns"),
    [(_garbage_vectors, True), (_inconsistent_offsets, True), (_meta_without_its_size, True), (_another_model, False)],
    ids=["garbage-file", "inconsistent-offsets", "meta-without-size", "another-model"],
)
def test_a_cache_it_cannot_use_is_ignored(
    settings: Settings, caplog: pytest.LogCaptureFixture, spoil, warns: bool
) -> None:
    settings = settings.with_overrides({"match": {"background_drift": 10.0}})
    world, _ = _world(settings)
    match(settings, top_k=3)
    for side in ("lost", "found"):
        spoil(_cache(settings) / side)
    world.add("found", "new-found", world.identity(), day=3)
    world.write(settings)

    with caplog.at_level(logging.WARNING, logger="ray_jobs.match_cache"):
        incremental = match(settings, top_k=3)
    assert incremental["mode"] == "incremental" and incremental["vectors_cached"] == 0
    assert any("ignoring the vector cache" in r.getMessage() for r in caplog.records) == warns
    rematch = match(settings, top_k=3, full=True)
    db = RunsDB(settings.duckdb)
    assert _published(db, incremental["run_id"]) == _published(db, rematch["run_id"])
    again = match(settings, top_k=3)  # the full run rewrote it
    assert again["vectors_cached"] == len(world.detections) and again["vectors_read"] == 0


def test_a_cache_swapped_in_while_a_run_reads_it_is_not_mixed_in(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another match run may replace the cache while this one reads it: every file comes from the folder opened."""
    settings = settings.with_overrides({"match": {"background_drift": 10.0}})
    world, _ = _world(settings)
    match(settings, top_k=3)
    world.add("found", "new-found", world.identity(), day=3)
    world.write(settings)
    pair = match_cache.VectorCache._pair
    swapped: list[Path] = []

    def swap_then_pair(cached, side, fingerprints):
        if not swapped:  # the lost side, opened: swap in a cache of the same listings whose vectors are all zero
            folder = _cache(settings) / "lost"
            other = folder.with_name(".lost.other")
            shutil.copytree(folder, other)
            np.save(other / "det_emb.npy", np.zeros_like(np.load(folder / "det_emb.npy")))
            shutil.rmtree(folder)
            other.rename(folder)
            swapped.append(folder)
        return pair(cached, side, fingerprints)

    with monkeypatch.context() as patched:
        patched.setattr(match_cache.VectorCache, "_pair", staticmethod(swap_then_pair))
        incremental = match(settings, top_k=3)
    assert swapped and incremental["mode"] == "incremental" and incremental["vectors_cached"] > 0
    rematch = match(settings, top_k=3, full=True)
    db = RunsDB(settings.duckdb)
    assert _published(db, incremental["run_id"]) == _published(db, rematch["run_id"])
