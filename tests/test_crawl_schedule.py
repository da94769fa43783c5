"""`homeward schedule` and `homeward sources`: cadence, no overlapping crawls, resume after a restart, health."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.storage import RunsDB
from ray_jobs.crawl import CrawlBusyError, crawl
from ray_jobs.schedule import due_sources, schedule, sources
from tests.mock_site import ListingSite, MockSite, crawl_settings, listings, site_source

BUILTIN = ("pet911", "poiskzoo", "petfinder", "petango", "petharbor")


def _runs(settings: object) -> list[tuple[str, str]]:
    return RunsDB(settings.duckdb).query("SELECT source, status FROM crawl_runs ORDER BY started")  # type: ignore[attr-defined]


@pytest.mark.slow
def test_schedule_runs_due_sources_once_per_cadence_and_resumes_after_restart(tmp_path: Path) -> None:
    with MockSite() as site:
        ListingSite(site, n=3)
        site.misbehave("/pets/f102.html", "404")
        settings = crawl_settings(
            tmp_path,
            [
                site_source(site.url, name="alpha", cadence_minutes=60),
                site_source(site.url, name="beta", cadence_minutes=60),
                site_source(site.url, name="off", enabled=False),
                *({"name": n, "enabled": False} for n in BUILTIN),  # the real sites are out of reach here
            ],
        )
        first = schedule(settings, once=True, pipeline=False)
        assert sorted(first["launched"]) == ["alpha", "beta"] and first["status"] == "ok"
        assert sorted(_runs(settings)) == [("alpha", "ok"), ("beta", "ok")]
        assert {r["source_id"] for r in listings(settings).values()} == {"l100", "f101"}

        # a restarted scheduler: nothing is due within the cadence
        again = schedule(settings, max_cycles=2, poll_seconds=0.1, pipeline=False)
        assert again["launched"] == [] and again["cycles"] == 2
        later = datetime.now(UTC) + timedelta(minutes=61)
        assert sorted(due_sources(settings, now=later)) == ["alpha", "beta"]

        # a scheduler killed mid-crawl leaves a 'running' row whose processes are gone: the next round closes it
        # as interrupted and crawls the source again at once
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        owner = {"owner": {"host": __import__("socket").gethostname(), "pid": int(dead.stdout)}}
        with RunsDB(settings.duckdb).write() as con:
            con.execute(
                "INSERT INTO crawl_runs (run_id, source, started, status, parameters) VALUES (?, ?, ?, 'running', ?)",
                ["deadrun", "alpha", datetime.now(UTC), json.dumps(owner)],
            )
        assert due_sources(settings) == []  # alpha's last finished run is recent...
        with RunsDB(settings.duckdb).write() as con:  # ...so pretend the killed crawl had been the due one
            con.execute("UPDATE crawl_runs SET started = started - INTERVAL 2 HOUR WHERE status = 'ok'")
        resumed = schedule(settings, once=True, source=["alpha"], pipeline=False)
        assert resumed["launched"] == ["alpha"]
        statuses = dict(RunsDB(settings.duckdb).query("SELECT run_id, status FROM crawl_runs WHERE source='alpha'"))
        assert statuses.pop("deadrun") == "interrupted"
        assert sorted(statuses.values()) == ["ok", "ok"]

        # sources: last success, lag, error rate (the 404 card fails in every run)
        table = {s["source"]: s for s in sources(settings)["sources"]}
        assert table["alpha"]["last_status"] == "ok" and table["alpha"]["runs"] == 3
        assert table["alpha"]["lag_minutes"] is not None and table["alpha"]["lag_minutes"] < 1
        # run 1: 2 items + the 404; run 2 skips the 2 stored cards and retries only the failed one: 2 / (2 + 2)
        assert table["alpha"]["error_rate"] == 0.5 and table["beta"]["error_rate"] == pytest.approx(1 / 3, abs=1e-3)
        assert table["alpha"]["top_errors"] == {"http_404": 2}
        assert table["off"]["enabled"] is False and table["off"]["last_success"] is None
        assert table["pet911"]["runs"] == 0 and table["pet911"]["spider"] == "pet911"  # built-in, switched off


@pytest.mark.slow
def test_never_two_crawls_of_one_source_at_once(tmp_path: Path) -> None:
    with MockSite() as site:
        data = ListingSite(site, n=6, per_page=3)
        for sid in data.posts:
            site.misbehave(data.card_path(sid), "slow", delay=1.0)
        settings = crawl_settings(tmp_path, [site_source(site.url)])
        outcome: dict[str, object] = {}
        worker = threading.Thread(target=lambda: outcome.update(first=crawl(settings, source=["mock"])))
        worker.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if RunsDB(settings.duckdb).query("SELECT 1 FROM crawl_runs WHERE status = 'running'"):
                break
            time.sleep(0.1)
        with pytest.raises(CrawlBusyError, match="already being crawled"):
            crawl(settings, source=["mock"])
        assert due_sources(settings, ["mock"]) == []  # the scheduler sees it in flight
        busy = schedule(settings, once=True, source=["mock"], pipeline=False)
        assert busy["launched"] == []
        worker.join(timeout=120)
        assert outcome["first"]["status"] == "ok"  # type: ignore[index]
        assert _runs(settings) == [("mock", "ok")]
