"""``homeward demo`` end to end: real HTTP mirror, Scrapy, Ray, models, LanceDB and DuckDB on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import Settings
from engine.storage import LanceStore, RunsDB
from ray_jobs.demo import demo


def _check_stores(settings: Settings, summary: dict) -> None:
    lance = LanceStore(settings.lance)
    posts = summary["crawl"]["items"]
    assert lance.count("listings") == posts == summary["listings"]
    assert lance.count("photos", "status = 'ok'") == summary["photos"] == posts
    assert lance.count("detections") >= posts, "every photo yields a detection (or a full-frame fallback)"
    db = RunsDB(settings.duckdb)
    for table in ("crawl_runs", "enrich_runs", "match_runs"):
        assert db.query(f"SELECT count(*) FROM {table} WHERE status IN ('ok', 'published')")[0][0] == 1, table
    assert summary["matches"] == db.query("SELECT count(*) FROM matches")[0][0] > 0


@pytest.mark.slow
def test_demo_finds_planted_reunions_in_real_photos(settings: Settings, shared_dir: Path, ray_local: None) -> None:
    summary = demo(settings, reunions=6, distractors=12, shared_dir=str(shared_dir))
    assert summary["profile"] == "cpu" and "dogfacenet" in summary["photos_from"]
    _check_stores(settings, summary)
    assert summary["planted_reunions"] == 6
    assert summary["reunions_top5"] == 6
    assert summary["reunions_rank1"] >= 5


@pytest.mark.slow
def test_demo_runs_without_the_team_data(settings: Settings, tmp_path: Path, ray_local: None) -> None:
    summary = demo(settings, reunions=3, distractors=4, shared_dir=str(tmp_path / "no-shared"))
    assert summary["profile"] == "tiny" and summary["photos_from"] == "synthetic"
    _check_stores(settings, summary)
    assert summary["planted_reunions"] == 3
    assert 0 <= summary["reunions_rank1"] <= summary["reunions_top5"] <= 3
