"""Analysts never block jobs: ``<data_dir>/analyst.duckdb`` is republished after each job while an analyst in
another process holds it open and queries it; ``homeward export --parquet`` writes every table and view."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import yaml

from crawlers.mirror import Mirror
from dashboards import sample
from dashboards.report import report
from engine import analyst
from engine.config import Settings
from engine.views import VIEW_NAMES
from ray_jobs import cli
from ray_jobs.crawl import crawl
from ray_jobs.demo import demo_source
from ray_jobs.demo_site import build_demo_site
from ray_jobs.enrich import enrich
from ray_jobs.match import match

# The analyst: one read-only connection held for the whole run, querying a table and two views until told to stop.
ANALYST = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import duckdb
    path, ready, stop, out = sys.argv[1:]
    con = duckdb.connect(path, read_only=True)
    queries = errors = 0
    failures = []
    Path(ready).write_text("open")
    while not Path(stop).exists():
        for sql in ("SELECT count(*) FROM crawl_runs", "SELECT count(*) FROM crawl_health",
                    "SELECT count(*) FROM latest_matches"):
            try:
                con.sql(sql).fetchall()
                queries += 1
            except duckdb.Error as exc:
                failures.append(str(exc))
        time.sleep(0.05)
    Path(out).write_text(json.dumps({"queries": queries, "failures": failures}))
    """
)


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "the analyst exited"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_an_open_analyst_connection_never_blocks_the_jobs(settings: Settings, tmp_path: Path, ray_local: None) -> None:
    settings = settings.with_overrides({"enrich": {"profile": "tiny"}})
    site = build_demo_site(Path(settings.data_dir) / "site", reunions=2, distractors=2)
    with Mirror(site.root) as mirror:
        sources_file = tmp_path / "sources.yaml"
        sources_file.write_text(yaml.safe_dump({"sources": [demo_source(mirror.url)]}))
        settings = settings.with_overrides({"crawl": {"sources_file": str(sources_file)}})
        crawled = crawl(settings, source=["demo"])
    assert crawled["status"] == "ok", crawled
    path = analyst.analyst_path(settings)
    assert crawled["runs"][0]["analyst_db"] == str(path)

    ready, stop, out = tmp_path / "ready", tmp_path / "stop", tmp_path / "analyst.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", ANALYST, str(path), str(ready), str(stop), str(out)], stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for(ready, proc)
        enriched = enrich(settings)
        matched = match(settings)
        reported = report(settings, all=True)
    finally:
        stop.write_text("stop")
        proc.wait(timeout=60)
    held = json.loads(out.read_text())
    assert held["failures"] == [] and held["queries"] > 0

    for result in (enriched, matched, reported):
        assert result.get("analyst_db") == str(path), result
        assert "analyst_db_error" not in result
    assert enriched["status"] == "ok" and matched["status"] == "published"
    with duckdb.connect(str(path), read_only=True) as fresh:
        (latest,) = fresh.sql("SELECT run_id FROM latest_match_run").fetchall()
        assert latest[0] == matched["run_id"]
        assert fresh.execute("SELECT count(*) FROM latest_matches").fetchone()[0] == matched["matches"] > 0
        assert fresh.execute("SELECT count(*) FROM enrich_runs WHERE status = 'ok'").fetchone()[0] == 1
    assert sorted(p.name for p in path.parent.iterdir() if ".tmp-" in p.name) == []


def test_export_writes_every_table_and_view_as_parquet(settings: Settings, tmp_path: Path, capsys) -> None:
    sample.populate(settings)
    assert not analyst.analyst_path(settings).exists()  # the export publishes the copy it reads
    assert cli.main(["--data-dir", settings.data_dir, "export", "--parquet", str(tmp_path / "bi")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tables = {"crawl_runs", "enrich_runs", "match_runs", "matches", "feedback", "listings"}
    assert tables | set(VIEW_NAMES) <= set(result["rows"])
    with duckdb.connect(settings.duckdb, read_only=True) as con:
        for name in [*tables, *VIEW_NAMES]:
            expected = con.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
            assert pq.read_table(tmp_path / "bi" / f"{name}.parquet").num_rows == expected == result["rows"][name]
    assert result["rows"]["latest_matches"] > 0


def test_a_failed_publish_names_its_reason_and_keeps_the_old_copy(settings: Settings, monkeypatch) -> None:
    sample.populate(settings)
    path = Path(analyst.publish(settings)["analyst_db"])
    before = path.read_bytes()

    def disk_full(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(analyst.os, "replace", disk_full)
    failed = analyst.publish(settings)
    assert "cannot publish the analyst copy" in failed["analyst_db_error"]
    assert "No space left" in failed["analyst_db_error"]
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir() if ".tmp-" in p.name] == []  # the half-published file is gone
