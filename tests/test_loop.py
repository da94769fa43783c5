"""`homeward schedule` as the service loop: crawl → enrich → match → deliver in rounds, every step a row; steps run
only after crawls that brought listings, a stopped round resumes at its step, failures back off and alert once."""

from __future__ import annotations

import copy
import email
import email.policy
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dashboards.report import slug
from engine import ids
from engine.config import Settings
from engine.storage import LanceStore, RunsDB, upsert_listings
from ray_jobs import loop
from ray_jobs.crawl import begin_run, finish_run
from ray_jobs.operator_alerts import incidents
from ray_jobs.schedule import due_sources, schedule, sources
from tests.mock_site import ListingSite, MockSite, crawl_settings, site_source
from tests.test_report import Inbox, free_port

BUILTIN_OFF = [{"name": n, "enabled": False} for n in ("pet911", "poiskzoo", "petfinder", "petango", "petharbor")]


def _steps(settings: Settings) -> list[list[tuple[str, str]]]:
    """Per round, oldest first: its (step, status) rows (crawl steps as crawl:<source>)."""
    rows = RunsDB(settings.duckdb).query(
        "SELECT s.round_id, s.step || CASE WHEN s.source = '' THEN '' ELSE ':' || s.source END, s.status "
        "FROM loop_steps s JOIN loop_rounds r USING (round_id) ORDER BY r.started, s.started, s.attempt"
    )
    rounds: dict[str, list[tuple[str, str]]] = {}
    for round_id, step, status in rows:
        rounds.setdefault(round_id, []).append((step, status))
    return list(rounds.values())


def _age_s(settings: Settings, table: str, seconds: int) -> None:
    with RunsDB(settings.duckdb).write() as con:
        con.execute(
            f"UPDATE {table} SET started = started - to_seconds(?::BIGINT), "
            "finished = finished - to_seconds(?::BIGINT)",
            [seconds, seconds],
        )


def _add_post(data: ListingSite, sid: str) -> None:
    post = copy.deepcopy(next(iter(data.posts.values())))
    post.update(identifier=sid, name=f"Pet {sid}", image=[f"/photos/{sid}.jpg"])
    data.posts[sid] = post
    data.site.page(f"/photos/{sid}.jpg", ListingSite.photo(len(data.posts) + 7), content_type="image/jpeg")
    data.render()


@pytest.fixture()
def tiny_site(tmp_path: Path):
    with MockSite() as site:
        data = ListingSite(site, n=3)
        settings = crawl_settings(tmp_path, [site_source(site.url, name="alpha"), *BUILTIN_OFF])
        yield data, settings.with_overrides({"enrich": {"profile": "tiny", "batch_size": 4}})


@pytest.mark.slow
def test_steps_run_only_after_crawls_that_brought_listings_and_a_stopped_round_resumes(tiny_site, monkeypatch) -> None:
    data, settings = tiny_site
    first = schedule(settings, once=True)
    assert first["status"] == "ok", first
    _age_s(settings, "crawl_runs", 3600)
    second = schedule(settings, once=True)  # the site did not change: the crawl brings nothing
    assert second["launched"] == ["alpha"] and second["status"] == "ok"

    # a new post; the scheduler stops in the middle of the match step
    _add_post(data, "l110")
    _age_s(settings, "crawl_runs", 3600)

    def killed(_settings: Settings) -> dict[str, Any]:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setitem(loop.JOBS, "match", killed)
        with pytest.raises(KeyboardInterrupt):
            schedule(settings, once=True)
    runs = RunsDB(settings.duckdb)
    with runs.write() as con:  # what a SIGKILL would leave: the step still 'running'
        con.execute("UPDATE loop_steps SET status = 'running', finished = NULL WHERE step = 'match' AND status <> 'ok'")
    resumed = schedule(settings, once=True)  # continues at match: no second crawl (alpha is not due), no enrich
    assert resumed["launched"] == [] and resumed["status"] == "ok", resumed

    pipeline = [("enrich", "ok"), ("match", "ok"), ("deliver:reports", "ok"), ("deliver:owner_alerts", "ok")]
    assert _steps(settings) == [
        [("crawl:alpha", "ok"), *pipeline],
        [("crawl:alpha", "ok")],
        [("crawl:alpha", "ok"), ("enrich", "ok"), ("match", "interrupted"), *pipeline[1:]],
    ]
    assert runs.query("SELECT count(*) FROM crawl_runs")[0][0] == 3
    changed = runs.query("SELECT changed_listings, status, latency_s FROM loop_rounds ORDER BY started")
    assert [(c, s) for c, s, _ in changed] == [(3, "ok"), (0, "ok"), (1, "ok")]
    assert changed[0][2] > 0 and changed[1][2] is None and changed[2][2] > 0
    # the third round enriched only the new post's photo, in this process (no Ray actor pool for a small round)
    assert [n for (n,) in runs.query("SELECT photos FROM enrich_runs ORDER BY started")] == [3, 1]
    # each delivery wrote the report of its match run for the shelter with new candidates
    for (run_id,) in runs.query("SELECT run_id FROM match_runs WHERE status = 'published'"):
        assert (Path(settings.reports) / run_id / f"{slug('alpha')}.html").is_file()

    state = sources(settings)
    alpha = next(s for s in state["sources"] if s["source"] == "alpha")
    assert alpha["consecutive_failures"] == 0 and alpha["latency_s"] == pytest.approx(changed[2][2], abs=0.1)
    assert state["loop"]["last_round"]["latency_s"] == changed[2][2]
    assert state["loop"]["open_round"] is None and state["loop"]["failing_steps"] == {}


def test_failures_back_off_never_block_other_sources_and_alert_once(tmp_path: Path, monkeypatch) -> None:
    """Crawls are stand-ins writing real run rows (a good source adds a listing, a broken one fails): this is about
    the loop's bookkeeping, not Scrapy."""
    inbox, port = Inbox(), free_port()
    controller = pytest.importorskip("aiosmtpd.controller", reason="aiosmtpd is a dev dependency").Controller(
        inbox, hostname="127.0.0.1", port=port
    )
    settings = crawl_settings(
        tmp_path, [site_source("http://good.test", name="good"), site_source("http://broken.test", name="broken"),
                   *BUILTIN_OFF]
    ).with_overrides({
        "enrich": {"profile": "tiny"},
        "schedule": {"backoff_base_s": 60, "backoff_max_s": 3600},
        "alerts": {"operator_email": "ops@homeward.test", "failures": 2},
        "report": {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_sender": "loop@homeward.test"},
    })  # fmt: skip
    runs = RunsDB(settings.duckdb)

    def crawl(settings: Settings, names: list[str], **_: Any) -> list[dict[str, Any]]:
        out = []
        for name in names:
            run_id = begin_run(runs, name, {}, settings.data_dir)
            result = {"run_id": run_id, "source": name, "status": "ok", "items": 1, "new": 1}
            if name == "good":
                lid = ids.listing_id("good", "g1")
                upsert_listings(LanceStore(settings.lance), [{"listing_id": lid, "source": "good", "source_id": "g1",
                                                              "kind": "lost", "status": "active", "species": "dog",
                                                              "scraped_at": datetime.now(UTC)}])  # fmt: skip
            else:
                result.update(status="failed", items=0, new=0, message="ConnectionRefusedError: broken.test")
            finish_run(runs, result)
            out.append(result)
        return out

    enrich_down = True

    def enrich(settings: Settings) -> dict[str, Any]:
        if enrich_down:
            raise RuntimeError("model server down")
        return loop._enrich(settings)

    monkeypatch.setattr("ray_jobs.schedule.run_sources", crawl)
    monkeypatch.setitem(loop.JOBS, "enrich", enrich)
    controller.start()
    try:
        first = schedule(settings, once=True)
        assert first["status"] == "partial" and sorted(first["launched"]) == ["broken", "good"]
        # the good source's listing went on to the pipeline though the broken one failed; enrich failed, match waits
        [steps] = _steps(settings)
        assert sorted(steps[:2]) == [("crawl:broken", "failed"), ("crawl:good", "ok")] and steps[2:] == [
            ("enrich", "failed")
        ]
        now = datetime.now(UTC)
        assert due_sources(settings, now=now + timedelta(seconds=30)) == []  # backoff 60 s, not the 60 min cadence
        assert due_sources(settings, now=now + timedelta(seconds=61)) == ["broken"]

        _age_s(settings, "crawl_runs", 61)
        second = schedule(settings, once=True)  # broken fails twice in a row: alert; enrich still backs off
        assert second["launched"] == ["broken"]
        assert second["rounds"][0]["steps"][0]["status"] == "waiting"
        _age_s(settings, "crawl_runs", 121)
        _age_s(settings, "loop_steps", 61)
        third = schedule(settings, once=True)  # broken: 3rd failure, same incident; enrich: 2nd failure: alert
        assert third["launched"] == ["broken"] and [a["subject"] for a in third["alerts"]] == ["step:enrich"]
        enrich_down = False
        _age_s(settings, "loop_steps", 121)
        fourth = schedule(settings, once=True)  # broken waits 240 s now; enrich, match and reports go through
        assert fourth["launched"] == [] and fourth["status"] == "ok"
        deadline = time.monotonic() + 5
        while len(inbox.messages) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        controller.stop()

    assert [(s, st) for s, st in _steps(settings)[0] if not s.startswith("crawl")] == [
        ("enrich", "failed"), ("enrich", "failed"), ("enrich", "ok"), ("match", "ok"), ("deliver:reports", "ok"),
        ("deliver:owner_alerts", "ok"),
    ]  # fmt: skip
    subjects = sorted(
        email.message_from_bytes(raw, policy=email.policy.default)["Subject"] for _, raw in inbox.messages
    )
    assert subjects == ["Homeward alert: broken failing", "Homeward alert: step:enrich failing"]
    assert all(rcpt == ["ops@homeward.test"] for rcpt, _ in inbox.messages)
    table = {s["source"]: s for s in sources(settings)["sources"]}
    assert table["broken"]["consecutive_failures"] == 3 and "ConnectionRefused" in table["broken"]["last_error"]
    assert table["good"]["consecutive_failures"] == 0 and table["good"]["latency_s"] > 0
    assert runs.query("SELECT count(*) FROM loop_alerts")[0][0] == 2


def test_a_long_pipeline_step_does_not_hold_back_crawls_falling_due(tmp_path: Path, monkeypatch) -> None:
    """The pipeline steps run beside the crawl loop: while a round's enrich runs (a long match at national size, in
    service), a source that falls due is crawled on time. Crawls are stand-ins writing real run rows."""
    settings = crawl_settings(
        tmp_path, [site_source("http://new.test", name="new"),
                   site_source("http://often.test", name="often", cadence_minutes=0.001), *BUILTIN_OFF]
    ).with_overrides({"enrich": {"profile": "tiny"}})  # fmt: skip
    runs = RunsDB(settings.duckdb)
    enriching, crawled_meanwhile = threading.Event(), threading.Event()
    launched_while_enriching: list[bool] = []

    def crawl(settings: Settings, names: list[str], **_: Any) -> list[dict[str, Any]]:
        out = []
        for name in names:
            during_enrich = enriching.is_set()
            if name == "often":
                launched_while_enriching.append(during_enrich)
            run_id = begin_run(runs, name, {}, settings.data_dir)
            if name == "new":
                lid = ids.listing_id("new", "n1")
                upsert_listings(LanceStore(settings.lance), [{"listing_id": lid, "source": "new", "source_id": "n1",
                                                              "kind": "found", "status": "active", "species": "cat",
                                                              "scraped_at": datetime.now(UTC)}])  # fmt: skip
            result = {"run_id": run_id, "source": name, "status": "ok", "items": 1, "new": int(name == "new")}
            finish_run(runs, result)
            if name == "often" and during_enrich:  # launched, not only finished, while enrich ran
                crawled_meanwhile.set()
            out.append(result)
        return out

    def slow_enrich(settings: Settings) -> dict[str, Any]:
        enriching.set()
        try:  # the old loop ran steps in its own thread: no crawl could start before this returned
            if not crawled_meanwhile.wait(timeout=20):
                raise RuntimeError("no crawl was launched while enrich ran")
        finally:
            enriching.clear()
        return loop._enrich(settings)

    monkeypatch.setattr("ray_jobs.schedule.run_sources", crawl)
    monkeypatch.setitem(loop.JOBS, "enrich", slow_enrich)
    result = schedule(settings, max_cycles=12, poll_seconds=0.2)

    assert result["status"] == "ok", result
    assert any(launched_while_enriching), launched_while_enriching
    [steps] = [[s for s in r if not s[0].startswith("crawl")] for r in _steps(settings) if ("crawl:new", "ok") in r]
    assert steps == [("enrich", "ok"), ("match", "ok"), ("deliver:reports", "ok"), ("deliver:owner_alerts", "ok")]
    assert runs.query("SELECT count(*) FROM crawl_runs WHERE source = 'new'")[0][0] == 1


def test_overdue_source_is_an_incident_keyed_by_its_last_success(settings: Settings) -> None:
    now = datetime(2026, 11, 1, 11, tzinfo=UTC)
    row = {"source": "s", "enabled": True, "configured": True, "cadence_minutes": 60, "consecutive_failures": 0,
           "failing_since": None, "failing_since_run": None, "last_error": None, "last_status": "ok",
           "first_run": "2026-10-01T00:00:00+00:00",
           "last_success": "2026-11-01T08:30:00+00:00"}  # fmt: skip
    assert incidents(settings, [row], {}, now=now) == []
    [overdue] = incidents(settings, [row], {}, now=now + timedelta(minutes=31))  # 3 cadences since 08:30
    assert overdue["kind"] == "overdue" and overdue["incident"] == "since 2026-11-01T08:30:00+00:00"
    assert incidents(settings, [{**row, "enabled": False}], {}, now=now + timedelta(hours=5)) == []
