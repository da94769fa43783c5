"""``homeward bench load`` at a small size, and the synthetic region it generates (distributions from real datasets)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.config import Settings
from ray_jobs.bench.synthetic import Region, RegionModel, load_region_model


@pytest.fixture(scope="module")
def datasets_dir(shared_dir: Path) -> Path:
    datasets = shared_dir / "data" / "datasets"
    if not datasets.is_dir():
        pytest.skip(f"needs the real datasets folder {datasets}")
    return datasets


@pytest.fixture(scope="module")
def region_model(datasets_dir: Path) -> RegionModel:
    return load_region_model(datasets_dir)


def test_region_has_the_requested_sizes_and_planted_reunions(region_model: RegionModel) -> None:
    region = Region(region_model, n_listings=3000, n_photos=7000, seed=3)
    assert len(region.kind) == 3000 and int(region.n_photos_of.sum()) == 7000
    assert set(region.kind) == {"lost", "found", "shelter", "adoptable"}
    assert set(region.species) <= {"dog", "cat", "other"} and {"dog", "cat"} <= set(region.species)
    # every planted reunion: a lost listing and a found-side listing of the same animal, with the same looks
    lost, found = region.reunions[:, 0], region.reunions[:, 1]
    assert len(region.reunions) > 100
    assert set(region.kind[lost]) == {"lost"} and set(region.kind[found]) <= {"found", "shelter"}
    assert (region.animal[found] == lost).all() and (region.species[found] == region.species[lost]).all()
    for name in ("colors", "breed", "sex", "size", "age_group"):
        assert (region.attr[name][found] == region.attr[name][lost]).all(), name
    # deterministic per seed, different across seeds
    again = Region(region_model, n_listings=3000, n_photos=7000, seed=3)
    other = Region(region_model, n_listings=3000, n_photos=7000, seed=4)
    assert (again.n_photos_of == region.n_photos_of).all() and (again.reunions == region.reunions).all()
    assert not np.array_equal(other.n_photos_of, region.n_photos_of)

    items = [it for chunk in region.items(chunk=700) for it in chunk]
    assert len(items) == 3000 and sum(len(it["photos"]) for it in items) == 7000
    assert len({it["listing_id"] for it in items}) == 3000
    tables = list(region.detections(dim=16, text_dim=8, embed_model="m", chunk=2500))
    assert sum(t.num_rows for t in tables) == 7000
    keys = {p["photo_key"] for it in items for p in it["photos"]}
    assert {k for t in tables for k in t.column("photo_key").to_pylist()} == keys


def test_bench_load_small_reports_every_stage(
    settings: Settings, datasets_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through the CLI, as a user runs it: every stage's row counts add up, the planted reunions are found, the JSON
    is the last stdout line, and the throw-away data dir is gone."""
    from ray_jobs.cli import main

    sizes = {"listings": 1500, "photos": 3500, "dim": 64, "text-dim": 16, "chunk": 400, "flush-items": 600,
             "vector-chunk": 1000, "datasets-dir": datasets_dir, "new": 60}  # fmt: skip
    argv = ["--data-dir", settings.data_dir, "bench", "load"]
    argv += [a for flag, value in sizes.items() for a in (f"--{flag}", str(value))]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["ingest"]["listings"] == 1500 and out["ingest"]["photos"] == 3500
    assert out["ingest"]["flushes"] >= 3
    assert out["vectors"]["detections"] == 3500
    m = out["match"]
    assert m["lost_listings"] + m["found_listings"] == 1500
    assert m["candidate_pairs"] > 0 and m["matches"] > 0
    assert m["planted_reunions"] == out["generate"]["planted_reunions"] > 50
    assert m["recall_at_k"] >= 0.8, m
    for stage in ("ingest", "vectors", "match"):
        assert out[stage]["peak_rss_mb"] > 0
    assert out["peak_rss_mb"] >= max(out[s]["peak_rss_mb"] for s in ("ingest", "vectors", "match")) * 0.99
    inc = out["incremental"]  # 60 more listings: an incremental match, then a full rematch of the same data
    assert inc["mode"] == "incremental" and inc["identical"] is True and inc["rows_differing"] == 0
    assert inc["changes"]["lost_new"] + inc["changes"]["found_new"] == 60
    assert 0 < inc["pairs_scored"] < inc["full_pairs_scored"] and inc["seconds"] > 0 and inc["full_seconds"] > 0
    # the new listings' vectors come from LanceDB, every other listing's from the full match's vector cache
    assert inc["vectors_read"] == 3640 - 3500 and inc["vectors_cached"] == 3500, inc
    assert out["data_dir"] is None and not list(Path(settings.data_dir).glob("bench-load-*"))


def test_bench_load_without_the_datasets_is_a_clear_error(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ray_jobs.cli import main

    missing = tmp_path / "no-datasets"
    argv = ["--data-dir", settings.data_dir, "bench", "load", "--listings", "100", "--datasets-dir", str(missing)]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"homeward: error: datasets folder {missing} is missing (set HW_DATASETS_DIR or pass datasets_dir)"
    )
    assert not list(Path(settings.data_dir).glob("bench-load-*"))
