"""Incremental and resumable crawls: unchanged cards are not fetched again, changed ones update their row, and a
crawl killed mid-way then restarted ends with exactly the rows of an uninterrupted crawl."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.storage import LanceStore
from ray_jobs.crawl import crawl
from tests.mock_site import ListingSite, MockSite, crawl_settings, listings, photos, site_source

REPO = Path(__file__).resolve().parents[1]
VOLATILE = {"scraped_at", "fetched_at"}


def _stable(rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {r[key]: {k: v for k, v in r.items() if k not in VOLATILE} for r in rows}


@pytest.mark.slow
def test_second_crawl_fetches_no_card_and_changed_cards_update(tmp_path: Path) -> None:
    with MockSite() as site:
        data = ListingSite(site, n=12, per_page=5)
        settings = crawl_settings(tmp_path, [site_source(site.url)])
        first = crawl(settings, source=["mock"])
        assert (first["new"], first["items"]) == (12, 12)
        store = LanceStore(settings.lance)
        version = store.version("listings")
        before = _stable(store.read("listings").to_pylist(), "listing_id")

        # 1. nothing changed: catalog pages are read, no card and no photo is fetched, no row or version is added
        site.clear_log()
        second = crawl(settings, source=["mock"])
        assert second["status"] == "ok"
        assert (second["items"], second["new"], second["updated"]) == (0, 0, 0)
        assert site.hits(prefix="/pets/") == 0 and site.hits(prefix="/photos/") == 0
        assert site.hits(prefix="/catalog/") == 3
        assert store.version("listings") == version
        assert _stable(store.read("listings").to_pylist(), "listing_id") == before
        assert second["runs"][0]["cards_skipped"] == 12

        # 2. a card changed and its catalog tile shows it (status): only that card is fetched, its row updated
        site.clear_log()
        data.change("f101", status="resolved", description="Back home, thank you all!")
        third = crawl(settings, source=["mock"])
        assert (third["items"], third["new"], third["updated"], third["unchanged"]) == (1, 0, 1, 0)
        assert [p for p in site.paths() if p.startswith("/pets/")] == ["/pets/f101.html"]
        assert site.hits(prefix="/photos/") == 0  # the photo row is ok already: reused, not downloaded
        rows = listings(settings)
        assert rows["f101"]["status"] == "resolved" and rows["f101"]["description"] == "Back home, thank you all!"
        assert len(rows) == 12

        # 3. a silent change (tile unchanged) is found by the re-check: a conditional GET per stored card,
        #    304 for the unchanged ones, 200 and an update for the changed one
        time.sleep(1.1)  # Last-Modified has one-second resolution
        data.change("l103", tile=False, description="Now wearing a blue collar.")
        sources_file = Path(settings.crawl.sources_file)
        sources_file.write_text(yaml.safe_dump({"sources": [site_source(site.url, recheck_hours=0)]}))
        site.clear_log()
        fourth = crawl(settings, source=["mock"])
        assert (fourth["items"], fourth["updated"]) == (1, 1)
        card_requests = [r for r in site.requests if r.path.startswith("/pets/")]
        assert len(card_requests) == 12
        assert all("If-Modified-Since" in r.headers for r in card_requests)
        assert listings(settings)["l103"]["description"] == "Now wearing a blue collar."
        assert len(listings(settings)) == 12


def _run(settings: Any, flush_items: int) -> subprocess.Popen[str]:
    settings_file = Path(settings.data_dir).parent / f"{Path(settings.data_dir).name}.settings.json"
    settings_file.write_text(json.dumps(settings.to_dict(), default=str))
    cmd = [sys.executable, "-m", "crawlers.run", "--source", "mock", "--settings-json", str(settings_file)]
    cmd += ["--set", f"HOMEWARD_FLUSH_ITEMS={flush_items}"]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


@pytest.mark.slow
def test_killed_crawl_resumes_to_the_rows_of_an_uninterrupted_one(tmp_path: Path) -> None:
    with MockSite() as site:
        data = ListingSite(site, n=30, per_page=5)
        for sid in data.posts:
            site.misbehave(data.card_path(sid), "slow", delay=0.15)
        source = [site_source(site.url)]
        killed = crawl_settings(tmp_path, source, data="killed")
        clean = crawl_settings(tmp_path, source, data="clean")

        proc = _run(killed, flush_items=3)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if LanceStore(killed.lance).count("listings") >= 6:
                break
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)  # no graceful shutdown: buffered rows are lost
        proc.wait()
        partial = LanceStore(killed.lance).count("listings")
        assert 6 <= partial < 30, partial

        site.clear_log()
        resumed = _run(killed, flush_items=3)
        out, _ = resumed.communicate(timeout=300)
        result = json.loads(out.strip().splitlines()[-1])
        assert result["status"] == "ok", result
        refetched = site.hits(prefix="/pets/")
        assert refetched <= 30 - partial + 3, (refetched, partial)  # stored cards are not fetched again

        uninterrupted = _run(clean, flush_items=3)
        out, _ = uninterrupted.communicate(timeout=300)
        assert json.loads(out.strip().splitlines()[-1])["new"] == 30

    a, b = LanceStore(killed.lance), LanceStore(clean.lance)
    assert _stable(a.read("listings").to_pylist(), "listing_id") == _stable(
        b.read("listings").to_pylist(), "listing_id"
    )
    pa_, pb = _stable(a.read("photos").to_pylist(), "photo_key"), _stable(b.read("photos").to_pylist(), "photo_key")
    for rows in (pa_, pb):
        for row in rows.values():
            row.pop("uri")  # the photo store differs by data dir; photo_id (sha256 of the bytes) must not
    assert pa_ == pb and len(pa_) == 30
    assert len(photos(killed)) == 30
