from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from engine import ids, run_rows, schema
from engine.config import Settings
from engine.storage import LanceStore, PhotoStore, RunsDB, StorageError, open_stores, upsert_listings


def _listing(source_id: str, **fields: object) -> dict[str, object]:
    row = schema.empty_row(schema.LISTINGS)
    row.update(
        listing_id=ids.listing_id("t", source_id),
        source="t",
        source_id=source_id,
        kind="lost",
        species="dog",
        scraped_at=datetime(2026, 1, 1, tzinfo=UTC),
        colors=["black"],
        photo_ids=[],
    )
    row.update(fields)
    return row


def test_upsert_inserts_then_replaces_by_key(tmp_path: Path) -> None:
    store = LanceStore(str(tmp_path / "lance"))
    assert upsert_listings(store, [_listing("1"), _listing("2")]) == 2
    v1 = store.version("listings")
    upsert_listings(store, [_listing("2", species="cat"), _listing("3")])
    table = store.read("listings").to_pylist()
    assert sorted(r["source_id"] for r in table) == ["1", "2", "3"]
    assert {r["source_id"]: r["species"] for r in table}["2"] == "cat"
    pinned = store.read("listings", version=v1).to_pylist()
    assert {r["source_id"]: r["species"] for r in pinned} == {"1": "dog", "2": "dog"}
    assert store.count("listings", "species = 'cat'") == 1


def test_schema_conflict_is_refused(tmp_path: Path) -> None:
    store = LanceStore(str(tmp_path / "lance"))
    store.ensure("detections", schema.detections_schema(8, 4))
    with pytest.raises(StorageError, match="Vectors of different models"):
        store.ensure("detections", schema.detections_schema(16, 4))


def test_duckdb_write_is_all_or_nothing(tmp_path: Path) -> None:
    db = RunsDB(str(tmp_path / "h.duckdb"))
    with pytest.raises(RuntimeError), db.write() as con:
        con.execute("INSERT INTO match_runs (run_id, started, status) VALUES ('r1', now(), 'published')")
        raise RuntimeError("crash mid-publication")
    assert db.query("SELECT count(*) FROM match_runs") == [(0,)]
    with db.write() as con:
        con.execute("INSERT INTO match_runs (run_id, started, status) VALUES ('r2', now(), 'published')")
    with db.read() as con:
        assert con.execute("SELECT run_id FROM match_runs").fetchall() == [("r2",)]


def test_photo_store_is_content_addressed(tmp_path: Path) -> None:
    photos = PhotoStore(str(tmp_path / "photos"))
    pid, uri = photos.put(b"\xff\xd8jpeg-bytes", "jpg")
    assert pid == ids.photo_id(b"\xff\xd8jpeg-bytes")
    assert photos.put(b"\xff\xd8jpeg-bytes", "jpg") == (pid, uri)
    assert photos.get(uri) == b"\xff\xd8jpeg-bytes"
    assert uri.endswith(f"/{pid[:2]}/{pid[2:4]}/{pid}.jpg")


def test_open_stores_creates_everything(tmp_path: Path) -> None:
    lance, runs, photos = open_stores(Settings(data_dir=str(tmp_path / "d")))
    assert Path(lance.uri).is_dir() and Path(runs.path).is_file() and Path(photos.root).is_dir()
    tables = {r[0] for r in runs.query("SELECT table_name FROM information_schema.tables")}
    assert {
        "crawl_runs",
        "enrich_runs",
        "match_runs",
        "matches",
        "match_pairs",
        "match_members",
        "feedback",
        "listings",
    } <= tables


def test_threads_share_one_duckdb_file_safely(tmp_path: Path) -> None:
    """Many threads opening, creating and writing one file in one process: no write-write conflicts."""
    import threading

    path = str(tmp_path / "shared.duckdb")
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            db = RunsDB(path)
            with db.write() as con:
                con.execute(
                    "INSERT INTO crawl_runs (run_id, source, started, status) VALUES (?, 's', now(), 'ok')", [str(i)]
                )
            assert db.query("SELECT count(*) FROM crawl_runs")[0][0] >= 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert RunsDB(path).query("SELECT count(*) FROM crawl_runs") == [(8,)]


@pytest.mark.parametrize("key", [", PRIMARY KEY (run_id, lost_listing_id, found_listing_id)", ""])
def test_a_file_made_when_matches_was_one_table_keeps_its_rows_behind_the_view(tmp_path: Path, key: str) -> None:
    """Files from when ``matches`` was a table (with its old primary key, or without): opened once, its rows move
    into ``match_pairs`` and ``match_members``, ``matches`` reads back every row and column (``fused`` included) in
    the old column order, the views that read it still do, and new pairs get ids of their own."""
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute(
            "CREATE TABLE matches (run_id VARCHAR NOT NULL, lost_listing_id VARCHAR NOT NULL, found_listing_id "
            "VARCHAR NOT NULL, score DOUBLE NOT NULL, image_sim DOUBLE, text_sim DOUBLE, attribute_score DOUBLE, "
            "geo_score DOUBLE, time_score DOUBLE, distance_km DOUBLE, days_apart DOUBLE, photos_agreeing INTEGER, "
            "rank_for_lost INTEGER, rank_for_found INTEGER, no_photo BOOLEAN DEFAULT FALSE, lost_photo_id VARCHAR, "
            f"found_photo_id VARCHAR, explanation VARCHAR{key})"
        )
        con.execute("ALTER TABLE matches ADD COLUMN fused DOUBLE")
        con.execute("INSERT INTO matches (run_id, lost_listing_id, found_listing_id, score, rank_for_lost, fused) "
                    "VALUES ('r1', 'l1', 'f1', 0.9, 1, 2.5), ('r1', 'l1', 'f2', 0.4, 2, -1.0), "
                    "('r2', 'l1', 'f1', 0.9, 1, 2.5)")  # fmt: skip
        con.execute("CREATE VIEW top_pairs AS SELECT run_id, found_listing_id FROM matches WHERE rank_for_lost = 1")
        before = con.execute("SELECT * FROM matches ORDER BY run_id, found_listing_id").fetchall()
        columns = [c[0] for c in con.execute("DESCRIBE matches").fetchall()]
    db = RunsDB(str(path))
    assert db.query("SELECT * FROM matches ORDER BY run_id, found_listing_id") == before
    assert [c[0] for c in db.query("DESCRIBE matches")] == columns
    assert db.query("SELECT * FROM top_pairs ORDER BY run_id") == [("r1", "f1"), ("r2", "f1")]
    assert db.query("SELECT table_name FROM duckdb_tables() WHERE table_name LIKE 'match%' ORDER BY 1") == [
        ("match_members",),
        ("match_pairs",),
        ("match_runs",),
    ]
    with db.write() as con:
        run_rows.insert_matches(con, pa.table({"run_id": ["r3"], "lost_listing_id": ["l2"],
                                               "found_listing_id": ["f2"], "score": [0.5]}))  # fmt: skip
    assert db.query("SELECT count(DISTINCT pair_id), count(*) FROM match_pairs") == [(4, 4)]
    assert db.query("SELECT lost_listing_id, score FROM matches WHERE run_id = 'r3'") == [("l2", 0.5)]


def test_a_run_s_pairs_are_deleted_with_the_values_no_other_run_lists(tmp_path: Path) -> None:
    """Deleting a run's pairs keeps the values of the pairs another run still lists (carried pairs)."""
    db = RunsDB(str(tmp_path / "runs.duckdb"))
    with db.write() as con:
        run_rows.insert_matches(con, pa.table({"run_id": ["a", "a"], "lost_listing_id": ["l1", "l2"],
                                               "found_listing_id": ["f1", "f2"], "score": [0.9, 0.8],
                                               "rank_for_lost": [1, 1]}))  # fmt: skip
        kept = con.execute("SELECT pair_id FROM match_pairs WHERE lost_listing_id = 'l1'").fetchall()[0][0]
        ranks = pa.table({"pair_id": [kept], "rank_for_lost": [2], "rank_for_found": [1]})
        assert run_rows.carry_matches(con, "b", ranks) == 1
        assert run_rows.delete_matches(con, "run_id = ?", ["a"]) == 2
    assert db.query("SELECT run_id, lost_listing_id, score, rank_for_lost, rank_for_found FROM matches") == [
        ("b", "l1", 0.9, 2, 1)
    ]
    assert db.query("SELECT count(*) FROM match_pairs") == [(1,)]
