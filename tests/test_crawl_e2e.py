"""End-to-end crawls: real Scrapy in a subprocess against tests/mock_site.py, rows checked in LanceDB and DuckDB."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.storage import LanceStore, RunsDB
from ray_jobs.crawl import crawl
from tests.mock_site import ListingSite, MockSite, crawl_settings, listings, photos, site_source

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_jsonld_site_crawls_end_to_end(tmp_path: Path) -> None:
    with MockSite() as site:
        data = ListingSite(site, n=12, per_page=5)
        settings = crawl_settings(tmp_path, [site_source(site.url)])
        result = crawl(settings, source=["mock"])

        assert result["status"] == "ok", result
        assert (result["items"], result["new"], result["photos"]) == (12, 12, 12)
        rows = listings(settings)
        assert set(rows) == set(data.posts)
        lost = rows["l100"]
        assert (lost["kind"], lost["species"], lost["sex"], lost["status"]) == ("lost", "dog", "female", "active")
        assert lost["colors"] == ["brown"]
        assert str(lost["event_date"]) == "2026-10-01"
        assert lost["lat"] == pytest.approx(47.6) and lost["lon"] == pytest.approx(-122.3)
        assert lost["url"] == f"{site.url}/pets/l100.html"
        # privacy: the phone in the description is gone but hashed; the street address was never taken
        assert "555-0" not in lost["description"] and "[phone]" in lost["description"]
        assert lost["contact_hash"] and len(lost["contact_hash"]) == 32
        assert lost["location_text"] == "Springfield"
        assert all(len(r["photo_ids"]) == 1 for r in rows.values())

        prow = {p["source_url"].rsplit("/", 1)[1]: p for p in photos(settings)}
        assert len(prow) == 12 and all(p["status"] == "ok" for p in prow.values())
        first = prow["l100.jpg"]
        assert first["photo_id"] == lost["photo_ids"][0]
        stored = Path(first["uri"]).read_bytes()
        assert b"Owner Name" not in stored and b"Exif" not in stored[:200]  # EXIF stripped
        assert Image.open(io.BytesIO(stored)).getexif() == {}
        assert b"Owner Name" in ListingSite.photo(0)  # ... and it was there in the download

        run = RunsDB(settings.duckdb).query(
            "SELECT source, status, items, new_items, pages, photos, errors, errors_by_reason FROM crawl_runs"
        )
        assert len(run) == 1
        source, status, items, new, pages, nphotos, errors, by_reason = run[0]
        assert (source, status, items, new, pages, nphotos, errors) == ("mock", "ok", 12, 12, 15, 12, 0)
        assert json.loads(by_reason) == {}
        ua = {r.headers.get("User-Agent") for r in site.requests}
        assert ua == {"HomewardBot/0.1 (+https://github.com/homeward-pets/homeward)"}


@pytest.mark.slow
def test_cli_crawl_with_base_url(tmp_path: Path) -> None:
    """`homeward crawl --source NAME --base-url URL` against a local mirror (the entry points elsewhere)."""
    with MockSite() as site:
        ListingSite(site, n=4, per_page=10)
        settings = crawl_settings(tmp_path, [site_source("https://lost-pets.example.org")])
        cmd = [sys.executable, "-m", "ray_jobs.cli", "crawl", "--source", "mock", "--base-url", site.url]
        cmd += ["--data-dir", settings.data_dir, "--set", f"crawl.sources_file={settings.crawl.sources_file}"]
        cmd += ["--set", "crawl.download_delay_s=0", "--set", "crawl.autothrottle=false"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["status"] == "ok" and result["new"] == 4
        assert len(listings(settings)) == 4
        (params,) = RunsDB(settings.duckdb).query("SELECT parameters FROM crawl_runs")[0]
        assert json.loads(params)["base_url"] == site.url


@pytest.mark.slow
def test_scrapy_crawl_start_urls_outputs_parsed_listings(tmp_path: Path) -> None:
    """`cd crawlers && scrapy crawl configurable -a start_urls=… -O out.jsonl` re-checks single pages, no data dir."""
    with MockSite() as site:
        data = ListingSite(site, n=3)
        out = tmp_path / "out.jsonl"
        urls = ",".join(f"{site.url}{data.card_path(s)}" for s in ("l100", "f101"))
        cmd = [sys.executable, "-m", "scrapy", "crawl", "configurable", "-a", f"start_urls={urls}", "-O", str(out)]
        env = {"PATH": "/usr/bin:/bin", "HOMEWARD_DATA_DIR": str(tmp_path / "unused"), "PYTHONPATH": str(REPO)}
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO / "crawlers", timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        items = [json.loads(line) for line in out.read_text().splitlines()]
        assert sorted(i["source_id"] for i in items) == ["f101", "l100"]
        for item in items:
            assert item["species"] in ("dog", "cat") and item["listing_id"] and item["content_hash"]
            assert "contact" not in item and "[phone]" in item["description"]
        assert not (tmp_path / "unused").exists()  # nothing written, no photo downloaded
        assert site.hits(prefix="/photos/") == 0


@pytest.mark.slow
def test_several_sources_fan_out_as_ray_tasks(tmp_path: Path, ray_local: None) -> None:
    with MockSite() as one, MockSite() as two:
        ListingSite(one, n=3)
        ListingSite(two, n=4)
        settings = crawl_settings(tmp_path, [site_source(one.url, name="one"), site_source(two.url, name="two")])
        result = crawl(settings, source=["one", "two"], max_pages=3)
        assert result["status"] == "ok", result
        assert {r["source"]: r["new"] for r in result["runs"]} == {"one": 2, "two": 2}  # 3 pages: catalog + 2 cards
        rows = LanceStore(settings.lance).read("listings").to_pylist()
        assert sorted((r["source"], r["source_id"]) for r in rows) == [
            ("one", "f101"), ("one", "l100"), ("two", "f101"), ("two", "l100"),
        ]  # fmt: skip
        runs = RunsDB(settings.duckdb).query("SELECT source, status, pages FROM crawl_runs ORDER BY source")
        assert runs == [("one", "ok", 3), ("two", "ok", 3)]
