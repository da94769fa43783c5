"""Analyst views over a realistic DuckDB file (dashboards.sample): what each answers, what none may show, and the
README's example queries, executed."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import duckdb
import pytest

from dashboards import sample
from engine import views
from engine.storage import RunsDB

ROOT = Path(__file__).resolve().parents[1]
READMES = (ROOT / "README.md", ROOT / "dashboards" / "README.md")


@pytest.fixture()
def db(settings) -> dict[str, Any]:
    info = sample.populate(settings)
    runs = RunsDB(settings.duckdb)
    created = views.ensure_views(runs)
    return {"runs": runs, "info": info, "created": created, "settings": settings}


def q(runs: RunsDB, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    with runs.read() as con:
        return views.rows(con, sql, params)


def pair(lost: str, found: str) -> tuple[str, str]:
    return sample.lid(lost), sample.lid(found)


def pairs(rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(r["lost_listing_id"], r["found_listing_id"]) for r in rows}


def test_ensure_views_is_idempotent_and_visible_to_read_only_readers(db, settings):
    assert db["created"]["created"] is True
    again = views.ensure_views(db["runs"])
    assert again["created"] is False and again["version"] == db["created"]["version"]
    con = duckdb.connect(settings.duckdb, read_only=True)
    try:
        names = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        for name in views.VIEW_NAMES:
            con.sql(f"SELECT * FROM {name}").to_arrow_table()  # every view binds and answers
    finally:
        con.close()
    assert set(views.VIEW_NAMES) <= names
    assert len(views.statements()) == len(views.VIEW_NAMES) + 1  # and the shelter_key macro


def test_ensure_views_refreshes_a_stale_version(db):
    with db["runs"].write() as con:
        con.execute(f"CREATE OR REPLACE VIEW {views.VERSION_VIEW} AS SELECT 'stale' AS version")
        con.execute("DROP VIEW open_candidates")
    assert views.ensure_views(db["runs"])["created"] is True
    assert len(q(db["runs"], "SELECT * FROM open_candidates")) == 4


def test_latest_matches_show_only_the_latest_published_run(db):
    rows = q(db["runs"], "SELECT * FROM latest_matches")
    assert {r["run_id"] for r in rows} == {"match-latest"}
    assert len(rows) == 5
    assert pair(*sample.GHOST_PAIR) not in pairs(rows)  # only the running run has it
    buddy = next(r for r in rows if (r["lost_listing_id"], r["found_listing_id"]) == pair("lost_buddy", "shelter_a101"))
    assert buddy["score"] == pytest.approx(0.91)  # the latest published score, not the running run's 0.95
    assert buddy["shelter_key"] == "petango:SEAS" and buddy["shelter_name"] == "Seattle Animal Shelter"
    assert buddy["lost_url"].startswith("https://seattle.craigslist.org/")
    assert buddy["verdict"] == "confirmed"
    cat = next(r for r in rows if r["found_listing_id"] == sample.lid("found_cat"))
    assert cat["shelter_key"] == "pet911" and cat["shelter_name"] == "pet911"  # no shelter_id: grouped by source


def test_shelter_key_scopes_a_shelter_id_by_its_source(db):
    """A shelter id is page text: another source claiming "SEAS" gets its own key, and no spelling of a source or an
    id makes a shelter key equal another source's key (the source part escapes ':' and '%')."""
    impostor = sample.add_impostor(db["settings"])
    keys = {r["found_listing_id"]: r["shelter_key"] for r in q(db["runs"], "SELECT * FROM latest_matches")}
    assert keys[impostor] == "rehome-board:SEAS" and keys[sample.lid("shelter_a101")] == "petango:SEAS"
    assert q(db["runs"], "SELECT count(*) AS n FROM open_candidates WHERE shelter_key = 'petango:SEAS'")[0]["n"] == 2
    cases = [("a:b", "c"), ("a", "b:c"), ("a", None), ("a", "  "), ("a%3Ab", "c"), ("a", " c "), (None, None)]
    got = q(
        db["runs"],
        "SELECT shelter_key(s, i) AS k FROM (VALUES " + ", ".join(["(?, ?)"] * len(cases)) + ") t(s, i)",
        [v for case in cases for v in case],
    )
    assert [r["k"] for r in got] == ["a%3Ab:c", "a:b:c", "a", "a", "a%253Ab:c", "a:c", "unknown"]


def test_publishing_a_run_switches_every_view_at_once(db):
    now = db["info"]["now"]
    with db["runs"].write() as con:
        con.execute("UPDATE match_runs SET status = 'published', finished = ? WHERE run_id = 'match-running'", [now])
    rows = q(db["runs"], "SELECT * FROM latest_matches")
    assert {r["run_id"] for r in rows} == {"match-running"}
    assert pairs(rows) == {pair("lost_buddy", "shelter_a101"), pair(*sample.GHOST_PAIR)}
    with db["runs"].write() as con:
        con.execute("UPDATE match_runs SET status = 'failed' WHERE run_id = 'match-running'")
    assert {r["run_id"] for r in q(db["runs"], "SELECT run_id FROM latest_matches")} == {"match-latest"}


def test_open_candidates_drop_rejected_pairs_and_keep_the_latest_verdict(db):
    rows = q(db["runs"], "SELECT * FROM open_candidates")
    got = pairs(rows)
    assert pair("lost_luna", "shelter_a101") not in got  # rejected
    assert pair("lost_rex", "shelter_k9") in got  # rejected, then confirmed: the latest verdict wins
    assert pair("lost_buddy", "shelter_a101") in got  # confirmed stays, marked
    assert len(rows) == 4
    verdicts = {(r["lost_listing_id"], r["found_listing_id"]): r["verdict"] for r in rows}
    assert verdicts[pair("lost_rex", "shelter_k9")] == "confirmed"
    assert verdicts[pair("lost_misha", "found_cat")] is None
    # A new rejection removes the pair at once.
    with db["runs"].write() as con:
        con.execute(
            "INSERT INTO feedback VALUES (?, ?, 'rejected', 'test', now(), NULL)", list(pair("lost_misha", "found_cat"))
        )
    assert pair("lost_misha", "found_cat") not in pairs(q(db["runs"], "SELECT * FROM open_candidates"))


def test_matches_this_week_are_pairs_first_published_in_the_last_7_days(db):
    rows = q(db["runs"], "SELECT * FROM matches_this_week")
    # buddy/a101 and rex/k9 were first published 8 days ago, so they are not new this week.
    assert pairs(rows) == {
        pair("lost_buddy", "shelter_a102"),
        pair("lost_misha", "found_cat"),
        pair("lost_luna", "shelter_a101"),
    }
    assert all(r["first_matched_at"] >= db["info"]["now"] - dt.timedelta(days=7) for r in rows)


def test_source_yield(db):
    rows = {r["source"]: r for r in q(db["runs"], "SELECT * FROM source_yield")}
    assert set(rows) == {"craigslist", "pet911", "austin", "petango", "petharbor"}
    assert rows["petango"]["listings"] == 2 and rows["petango"]["matched_listings"] == 2
    assert rows["petango"]["pairs"] == 3  # buddy/a101, buddy/a102, luna/a101
    assert rows["petango"]["confirmed_pairs"] == 1 and rows["petango"]["rejected_pairs"] == 1
    assert rows["petharbor"]["confirmed_pairs"] == 1
    assert rows["pet911"]["pairs"] == 1 and rows["pet911"]["yield"] == pytest.approx(1.0)
    # A listing nobody matched lowers its source's yield.
    with db["runs"].write() as con:
        con.execute("INSERT INTO listings (listing_id, source, kind, species) VALUES ('x1', 'pet911', 'lost', 'dog')")
    again = {r["source"]: r for r in q(db["runs"], "SELECT * FROM source_yield")}
    assert again["pet911"]["listings"] == 3 and again["pet911"]["yield"] == pytest.approx(2 / 3)


def test_time_to_reunion_counts_days_from_loss(db):
    info = db["info"]
    rows = {r["lost_listing_id"]: r for r in q(db["runs"], "SELECT * FROM time_to_reunion")}
    assert set(rows) == {sample.lid("lost_buddy"), sample.lid("lost_rex")}
    snap = {r["listing_id"]: r["event_date"] for r in q(db["runs"], "SELECT listing_id, event_date FROM listings")}
    fb = q(
        db["runs"],
        "SELECT lost_listing_id, min(created_at) AS at FROM feedback WHERE verdict = 'confirmed' GROUP BY ALL",
    )
    for r in fb:
        # DuckDB casts to DATE in its session time zone, which is also the zone of the datetimes it returns
        want = (r["at"].date() - snap[r["lost_listing_id"]]).days
        assert rows[r["lost_listing_id"]]["days_to_reunion"] == want
    rex = rows[sample.lid("lost_rex")]
    assert rex["confirmed_at"] == info["now"] - dt.timedelta(days=2)  # the confirmation, not the earlier rejection
    assert rex["days_to_match"] == (rex["first_matched_at"].date() - snap[sample.lid("lost_rex")]).days
    assert rex["first_matched_at"] == info["now"] - dt.timedelta(days=8) + dt.timedelta(seconds=95)


def test_listings_over_time(db):
    rows = q(db["runs"], "SELECT * FROM listings_over_time")
    assert sum(r["listings"] for r in rows) == len(sample.LISTINGS)
    by_kind: dict[str, int] = {}
    for r in rows:
        by_kind[r["kind"]] = by_kind.get(r["kind"], 0) + r["listings"]
    assert by_kind == {"lost": 4, "shelter": 3, "found": 1}
    assert {r["species"] for r in rows} == {"dog", "cat"}


def test_crawl_health(db):
    rows = {r["source"]: r for r in q(db["runs"], "SELECT * FROM crawl_health")}
    assert rows["petango"]["last_status"] == "ok" and rows["petango"]["lag_hours"] == pytest.approx(4.98, abs=0.05)
    assert rows["pet911"]["last_status"] == "failed" and rows["pet911"]["last_errors"] == 9
    assert rows["pet911"]["last_success"] is not None  # from the earlier ok run
    assert rows["pet911"]["lag_hours"] == pytest.approx(72 - 1 / 60, abs=0.05)
    assert rows["craigslist"]["last_success"] is None and rows["craigslist"]["lag_hours"] is None
    assert rows["petharbor"]["items_7d"] == 0  # its only run is 20 days old
    assert rows["pet911"]["items_7d"] == 120 and rows["pet911"]["errors_7d"] == 13
    assert rows["pet911"]["error_rate_7d"] == pytest.approx(13 / 133)


def test_job_throughput_and_score_distribution(db):
    jobs = {r["run_id"]: r for r in q(db["runs"], "SELECT * FROM job_throughput")}
    assert jobs["enrich-1"]["items_per_s"] == pytest.approx(4.0)
    assert jobs["match-latest"]["items_per_s"] == pytest.approx(96 / 120)
    assert jobs["match-running"]["items_per_s"] is None
    bins = q(db["runs"], "SELECT * FROM score_distribution")
    assert sum(b["pairs"] for b in bins) == 5
    assert sum(b["confirmed"] for b in bins) == 2 and sum(b["rejected"] for b in bins) == 1
    assert all(0 <= b["bin"] <= 0.95 for b in bins)


def readme_sql_blocks(readme: Path) -> list[tuple[str, str]]:
    text = readme.read_text()
    blocks = re.findall(r"```sql\n(.*?)```", text, flags=re.S)
    out = []
    for block in blocks:
        m = re.match(r"--\s*question:\s*(.+)", block.strip())
        assert m, f"every sql block in {readme.relative_to(ROOT)} starts with '-- question: ...': {block[:60]!r}"
        out.append((m.group(1).strip(), block))
    return out


ALL_BLOCKS = [(q, sql) for readme in READMES for q, sql in readme_sql_blocks(readme)]
BLOCK_IDS = [f"{readme.relative_to(ROOT)}: {q}" for readme in READMES for q, _ in readme_sql_blocks(readme)]


@pytest.mark.parametrize("readme", READMES, ids=lambda p: str(p.relative_to(ROOT)))
def test_readme_has_the_three_first_questions(readme):
    questions = [name for name, _ in readme_sql_blocks(readme)]
    for needed in ("lost pets matched this week", "sources that yield matches", "median days to reunion"):
        assert needed in questions


@pytest.mark.parametrize("question,sql", ALL_BLOCKS, ids=BLOCK_IDS)
def test_readme_query_runs_read_only(db, settings, question, sql):
    con = duckdb.connect(settings.duckdb, read_only=True)
    try:
        got = con.sql(sql).to_arrow_table().to_pylist()
    finally:
        con.close()
    assert got, f"README query {question!r} returned no rows on the sample database"
    if question == "lost pets matched this week":
        assert got == [{"lost_pets_matched": 3}]
    elif question == "sources that yield matches":
        assert got[0]["confirmed_pairs"] == 1 and {r["source"] for r in got} >= {"petango", "pet911"}
    elif question == "median days to reunion":
        ttr = q(RunsDB(settings.duckdb), "SELECT days_to_reunion FROM time_to_reunion")
        days = sorted(r["days_to_reunion"] for r in ttr)
        assert got[0]["reunions"] == 2 and got[0]["median_days_to_reunion"] == pytest.approx(sum(days) / 2)
