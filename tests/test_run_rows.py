"""engine.run_rows: each run row written through it reads back as the job recorded it, in the caller's transaction."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import pytest

from engine import run_rows
from engine.storage import RunsDB

T0 = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(minutes=5)


def test_crawl_rows(tmp_path: Path) -> None:
    db = RunsDB(str(tmp_path / "h.duckdb"))
    with db.write() as con:
        run_rows.start_crawl(con, "a", "src", T0, {"owner": {"pid": 1}})
        run_rows.start_crawl(con, "b", "src", T0, {})
        assert sorted(r[0] for r in run_rows.running_crawls(con, "src")) == ["a", "b"]
        assert run_rows.running_crawls(con, "other") == []
        run_rows.interrupt_crawl(con, "a", T1, "gone")
        # a result without a status is a failure; counts it lacks are 0
        run_rows.finish_crawl(con, {"run_id": "b", "new": 3, "errors_by_reason": {"http_404": 2}}, T1)
    rows = db.query("SELECT run_id, status, message, new_items, pages, errors_by_reason FROM crawl_runs ORDER BY 1")
    assert rows[0][:3] == ("a", "interrupted", "gone")
    assert rows[1][:5] == ("b", "failed", None, 3, 0) and json.loads(rows[1][5]) == {"http_404": 2}


def test_enrich_and_match_rows(tmp_path: Path) -> None:
    db = RunsDB(str(tmp_path / "h.duckdb"))
    with db.write() as con:
        run_rows.start_enrich(con, "e", T0, {"limit": None})
        run_rows.finish_enrich(con, {"run_id": "e", "finished": T1, "status": "ok", "models": {"embed_model": "m"},
                                     "photos": 4, "ok": 3, "no_animal": 1, "failed": 0, "detections": 5,
                                     "errors_by_reason": {}, "duration_s": 1.5})  # fmt: skip
        run_rows.start_match(con, "m1", T0, {"top_k": 5}, {"listings": 3})
        run_rows.start_match(con, "m2", T0, {"top_k": 5}, {"listings": 3})
        summary = {"lost_listings": 2, "found_listings": 3, "candidate_pairs": 6, "matches": 4, "duration_s": 0.2}
        run_rows.publish_match(con, "m1", T1, summary)
        run_rows.fail_match(con, "m2", T1, 0.1, "RuntimeError: boom")
    assert db.query("SELECT status, photos, detections, models->>'embed_model' FROM enrich_runs") == [("ok", 4, 5, "m")]
    assert db.query("SELECT run_id, status, matches, message FROM match_runs ORDER BY 1") == [
        ("m1", "published", 4, None),
        ("m2", "failed", 0, "RuntimeError: boom"),
    ]


def test_feedback_rows_and_a_bad_verdict(tmp_path: Path) -> None:
    db = RunsDB(str(tmp_path / "h.duckdb"))
    with db.write() as con:
        run_rows.add_feedback(con, "lost1", "found1", "confirmed", "desk", T0, None)
    with pytest.raises(duckdb.ConstraintException), db.write() as con:
        run_rows.add_feedback(con, "lost1", "found1", "maybe", "desk", T0, None)
    assert db.query("SELECT verdict, who FROM feedback") == [("confirmed", "desk")]
