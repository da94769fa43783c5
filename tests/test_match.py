"""``homeward match`` end to end on LanceDB rows written directly: planted pairs, hard rules, missing data, model
checks, atomic publication, tiling invariance, Ray fan-out."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

import numpy as np
import pytest

from engine import ids, schema
from engine.config import Settings
from engine.errors import HomewardError
from engine.storage import LanceStore, RunsDB, upsert_listings
from ray_jobs import match as match_job
from ray_jobs.match import match

DIM, TEXT_DIM = 48, 12
BASE = dt.date(2026, 5, 1)
SEATTLE = (47.6062, -122.3321)
TACOMA = (47.2529, -122.4443)


@dataclass
class World:
    """Synthetic listings with known structure: each planted animal has an identity vector; its photos are that
    vector plus noise, so a lost post and a found post of one animal are far more similar than two animals."""

    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    listings: list[dict] = field(default_factory=list)
    detections: list[dict] = field(default_factory=list)
    model: str = "test-embedder/1"

    def vec(self, v: np.ndarray, noise: float) -> list[float]:
        w = v + self.rng.normal(0, noise, v.shape)
        return (w / np.linalg.norm(w)).astype(np.float32).tolist()

    def identity(self) -> np.ndarray:
        return self.rng.normal(0, 1, DIM)

    def add(self, kind: str, sid: str, animal: np.ndarray | None, *, day: int | None = 0, lat: float | None = None,
            lon: float | None = None, species: str = "dog", photos: int = 1, model: str | None = None,
            status: str = "active", text: bool = True, det_species: str | None = None, confidence: float = 0.9,
            **attrs) -> str:  # fmt: skip
        lid = ids.listing_id("synthetic", sid)
        lat = SEATTLE[0] + self.rng.normal(0, 0.03) if lat is None else lat
        lon = SEATTLE[1] + self.rng.normal(0, 0.03) if lon is None else lon
        row = dict(listing_id=lid, source="synthetic", source_id=sid, url=f"https://example.org/{sid}", kind=kind,
                   status=status, species=species, lat=None if np.isnan(lat) else lat,
                   lon=None if np.isnan(lon) else lon,
                   event_date=None if day is None else BASE + dt.timedelta(days=day),
                   photo_ids=[f"photo-{sid}-{i}" for i in range(photos)])  # fmt: skip
        row.update(attrs)
        self.listings.append(row)
        for i in range(photos if animal is not None else 0):
            self.detections.append(
                dict(
                    detection_id=f"det-{sid}-{i}",
                    photo_id=f"photo-{sid}-{i}",
                    listing_id=lid,
                    species=det_species or species,
                    confidence=confidence,
                    embedding=self.vec(animal, 0.35),
                    embed_model=model or self.model,
                    text_embedding=self.vec(self.rng.normal(0, 1, TEXT_DIM), 0.0) if text else None,
                    text_model="test-text/1" if text else None,
                    status="ok",
                    created_at=dt.datetime.now(dt.UTC),
                )
            )
        return lid

    def plant(self, n: int, distractors: int) -> list[tuple[str, str]]:
        pairs = []
        for i in range(n):
            animal = self.identity()
            lat, lon = SEATTLE[0] + self.rng.normal(0, 0.03), SEATTLE[1] + self.rng.normal(0, 0.03)
            lost = self.add("lost", f"lost-{i}", animal, day=i % 9, lat=lat, lon=lon, photos=1 + i % 2)
            found = self.add(["found", "shelter", "sighting", "adoptable"][i % 4], f"found-{i}", animal,
                             day=i % 9 + 2, lat=lat + 0.02, lon=lon, photos=1 + i % 3)  # fmt: skip
            pairs.append((lost, found))
        for i in range(distractors):
            self.add(["lost", "found"][i % 2], f"other-{i}", self.identity(), day=i % 9)
        return pairs

    def write(self, settings: Settings) -> LanceStore:
        store = LanceStore(settings.lance)
        upsert_listings(store, self.listings)
        store.upsert("detections", self.detections, key="detection_id",
                     table_schema=schema.detections_schema(DIM, TEXT_DIM))  # fmt: skip
        return store


@pytest.fixture(autouse=True)
def _majority_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The synthetic vectors come from no configured profile: the run takes the table's majority model."""
    monkeypatch.setattr(match_job, "configured_embed_model", lambda settings: None)


def current(settings: Settings, lost: str, found: str):
    rows = RunsDB(settings.duckdb).query(
        "SELECT rank_for_lost, rank_for_found, score, no_photo, distance_km, days_apart, explanation "
        "FROM current_matches WHERE lost_listing_id = ? AND found_listing_id = ?",
        [lost, found],
    )
    return rows[0] if rows else None


def test_planted_pairs_rank_first_with_every_term(settings: Settings) -> None:
    world = World()
    pairs = world.plant(12, distractors=40)
    store = world.write(settings)
    out = match(settings, top_k=5)
    assert out["status"] == "published" and out["embed_model"] == world.model
    assert out["lost_listings"] == 32 and out["found_listings"] == 32
    for lost, found in pairs:
        rank_lost, rank_found, score, no_photo, dist, days, expl = current(settings, lost, found)
        assert rank_lost == 1 and rank_found == 1, (lost, found)
        assert score > 0.9 and not no_photo and 1.0 < dist < 4.0 and days == 2
        assert "image" in expl and "km apart" in expl
    db = RunsDB(settings.duckdb)
    # top-k per lost and per found listing, every column filled
    per_lost = db.query(
        "SELECT max(c) FROM (SELECT count(rank_for_lost) c FROM current_matches GROUP BY lost_listing_id)"
    )
    per_found = db.query(
        "SELECT max(c) FROM (SELECT count(rank_for_found) c FROM current_matches GROUP BY found_listing_id)"
    )
    assert per_lost[0][0] == 5 and per_found[0][0] == 5
    nulls = db.query(
        "SELECT count(*) FILTER (image_sim IS NULL), count(*) FILTER (geo_score IS NULL), "
        "count(*) FILTER (lost_photo_id IS NULL), count(*) FILTER (explanation IS NULL) FROM current_matches"
    )
    assert nulls == [(0, 0, 0, 0)]
    # multi-photo planted pairs report agreeing photo pairs
    assert db.query("SELECT max(photos_agreeing) FROM current_matches")[0][0] >= 2
    # the run is recorded with the LanceDB versions it read, and a listing snapshot for joins
    run = db.query("SELECT status, lance_versions, embed_model, matches, candidate_pairs FROM match_runs")
    assert run[0][0] == "published" and run[0][2] == world.model and run[0][3] == out["matches"]
    versions = json.loads(run[0][1])
    assert versions["listings"] == store.version("listings") and versions["detections"] == store.version("detections")
    assert db.query("SELECT count(*) FROM listings")[0][0] == len(world.listings)
    joined = db.query(
        "SELECT l.url FROM current_matches m JOIN listings l ON l.listing_id = m.found_listing_id "
        "WHERE m.lost_listing_id = ? AND m.rank_for_lost = 1",
        [pairs[0][0]],
    )
    assert joined == [("https://example.org/found-0",)]
    # the analysts' views exist after a match run, without a dashboard or report ever having run
    assert (
        db.query("SELECT count(*) FROM latest_matches")[0][0] == db.query("SELECT count(*) FROM current_matches")[0][0]
    )


def test_hard_rules_and_missing_data(settings: Settings) -> None:
    world = World()
    animal = world.identity()
    lost = world.add("lost", "lost", animal, day=10, colors=["black"], sex="male", lat=SEATTLE[0], lon=SEATTLE[1])
    # a month later 33 km away: beyond match.max_radius_km (a shelter transfer needs a wider setting)
    beyond_cap = world.add("found", "beyond-cap", animal, day=40, lat=SEATTLE[0] + 0.3, lon=SEATTLE[1])
    # 20 km away but placed at its shelter: the shelter's place slack (match.place_slack_km) keeps it
    at_shelter = world.add("found", "at-shelter", animal, day=12, lat=SEATTLE[0] + 0.18, lon=SEATTLE[1],
                           geo_source="shelter")  # fmt: skip
    too_early = world.add("found", "too-early", animal, day=2)  # 8 days before the loss, beyond 3 days of grace
    in_grace = world.add("found", "in-grace", animal, day=8)
    too_far = world.add("found", "too-far", animal, day=11, lat=55.75, lon=37.6)  # Moscow, a day later
    cat = world.add("found", "cat", animal, day=11, species="cat")
    unknown_species = world.add("found", "unknown-species", animal, day=11, species="unknown")
    # a page without a species takes its photos' only when the detector is sure of it (its guesses block pairs)
    guessed_cat = world.add("found", "guessed", animal, day=11, species="unknown", det_species="cat", confidence=0.4)
    sure_cat = world.add("found", "sure-cat", animal, day=11, species="unknown", det_species="cat", confidence=0.95)
    no_coords = world.add("found", "no-coords", animal, day=12, lat=float("nan"), lon=float("nan"))
    no_date = world.add("found", "no-date", animal, day=None)
    no_photo = world.add("found", "no-photo", None, day=12, colors=["black"], sex="male")
    resolved = world.add("found", "resolved", animal, day=12, status="resolved")
    for i in range(20):
        world.add("found", f"other-{i}", world.identity(), day=12)
    world.write(settings)
    match(settings, top_k=30)
    for ruled_out in (too_early, too_far, beyond_cap, cat, sure_cat, resolved):
        assert current(settings, lost, ruled_out) is None
    for kept in (in_grace, unknown_species, guessed_cat, no_coords, no_date, no_photo, at_shelter):
        assert current(settings, lost, kept) is not None
    assert current(settings, lost, no_coords)[4] is None  # no distance, no geo prior
    assert current(settings, lost, no_date)[5] is None
    row = current(settings, lost, no_photo)
    assert row[3] is True and "no photo on the found side" in row[6]
    # photo evidence of the same animal outranks a photo-less post with agreeing attributes
    assert current(settings, lost, in_grace)[0] < row[0]


def test_lost_listing_without_photo_matched_on_text_and_attributes(settings: Settings) -> None:
    world = World()
    lost = world.add("lost", "lost", None, day=0, colors=["red"], sex="female", size="small", breed="corgi")
    twin = world.add("found", "twin", world.identity(), day=1, colors=["ginger"], sex="female", size="small",
                     breed="Pembroke Welsh Corgi")  # fmt: skip
    for i in range(10):
        world.add("found", f"other-{i}", world.identity(), day=1, colors=["black"], sex="male", size="large",
                  breed="rottweiler")  # fmt: skip
    world.write(settings)
    out = match(settings, top_k=3)
    assert out["no_photo_matches"] >= 3
    assert current(settings, lost, twin)[0] == 1
    assert current(settings, lost, twin)[3] is True


def test_vectors_of_another_model_are_refused(settings: Settings) -> None:
    world = World()
    world.plant(3, distractors=2)
    world.add("found", "odd", world.identity(), model="other-embedder/7")
    world.write(settings)
    with pytest.raises(HomewardError, match=r"'other-embedder/7' for 1 photos .*'test-embedder/1'"):
        match(settings)
    db = RunsDB(settings.duckdb)
    assert db.query("SELECT status FROM match_runs") == [("failed",)]
    assert db.query("SELECT count(*) FROM matches") == [(0,)]


def test_vectors_superseded_by_the_run_model_are_ignored(settings: Settings) -> None:
    world = World()
    pairs = world.plant(4, distractors=4)
    # the profile changed earlier: every photo also carries a stale vector of the old model (same dimension)
    for d in list(world.detections):
        world.detections.append(dict(d, detection_id=d["detection_id"] + "-old", embed_model="old-embedder/0",
                                     embedding=world.vec(world.identity(), 0.0)))  # fmt: skip
    world.write(settings)
    out = match(settings, top_k=3)
    assert out["embed_model"] == world.model and out["superseded_vectors"] == len(world.detections) // 2
    assert all(current(settings, *p)[0] == 1 for p in pairs)


def test_configured_model_wins_over_majority(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    world = World()
    world.plant(3, distractors=2)
    world.write(settings)
    monkeypatch.setattr(match_job, "configured_embed_model", lambda s: "profile-embedder/2")
    with pytest.raises(HomewardError, match=r"'test-embedder/1' for \d+ photos .*'profile-embedder/2'.*configured"):
        match(settings)


def test_publication_is_atomic(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    world = World()
    pairs = world.plant(5, distractors=6)
    world.write(settings)
    first = match(settings, top_k=3)
    db = RunsDB(settings.duckdb)
    before = db.query("SELECT * FROM current_matches ORDER BY lost_listing_id, found_listing_id")
    snapshot_before = db.query("SELECT count(*) FROM listings")

    # more listings arrive, then the publication fails after the matches were inserted
    world.listings.clear()
    world.detections.clear()
    world.plant(3, distractors=0)
    for row in world.listings:
        row["source_id"] += "-new"
        row["listing_id"] = ids.listing_id("synthetic", row["source_id"])
    for d in world.detections:
        d["detection_id"] += "-new"
    world.detections.clear()
    world.write(settings)

    def boom(con, listings):
        assert con.execute("SELECT count(*) FROM matches WHERE run_id <> ?", [first["run_id"]]).fetchone()[0] > 0
        raise RuntimeError("disk full while publishing")

    refresh = match_job._refresh_listings_snapshot
    monkeypatch.setattr(match_job, "_refresh_listings_snapshot", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        match(settings, top_k=3)
    assert db.query("SELECT * FROM current_matches ORDER BY lost_listing_id, found_listing_id") == before
    assert db.query("SELECT count(*) FROM matches WHERE run_id <> ?", [first["run_id"]]) == [(0,)]
    assert db.query("SELECT count(*) FROM listings") == snapshot_before
    runs = db.query("SELECT run_id, status, message FROM match_runs ORDER BY started")
    assert [r[1] for r in runs] == ["published", "failed"] and "disk full" in runs[1][2]
    assert current(settings, *pairs[0])[0] == 1

    monkeypatch.setattr(match_job, "_refresh_listings_snapshot", refresh)
    second = match(settings, top_k=3)
    assert db.query("SELECT DISTINCT run_id FROM current_matches") == [(second["run_id"],)]
    assert db.query("SELECT count(*) FROM listings")[0][0] > snapshot_before[0][0]


def test_small_tiles_give_identical_results(settings: Settings) -> None:
    world = World()
    world.plant(15, distractors=30)
    world.write(settings)
    big = match(settings, top_k=4)
    small = match(settings.with_overrides({"match": {"tile_size": 7}}), top_k=4, full=True)
    db = RunsDB(settings.duckdb)
    cols = "lost_listing_id, found_listing_id, rank_for_lost, rank_for_found, round(score, 5), photos_agreeing"
    q = f"SELECT {cols} FROM matches WHERE run_id = ? ORDER BY 1, 2"
    assert db.query(q, [big["run_id"]]) == db.query(q, [small["run_id"]])
    assert big["matches"] == small["matches"] > 0


def test_publication_in_chunks_publishes_the_same_rows(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Matches are valued, explained and inserted a chunk at a time (``match.publish_chunk_rows``): every column of
    every row is the one a single chunk gives, explanations included."""
    world = World()
    world.plant(12, distractors=24)
    world.write(settings)
    whole = match(settings, top_k=3)
    chunks = []
    rows_of = match_job._match_rows
    monkeypatch.setattr(match_job, "_match_rows", lambda *a: chunks.append(rows_of(*a)) or chunks[-1])
    parts = match(settings.with_overrides({"match": {"publish_chunk_rows": 5}}), top_k=3, full=True)
    assert parts["matches"] == whole["matches"] > 10
    sizes = [c.num_rows for c in chunks]
    assert max(sizes) == 5 and sum(sizes) == whole["matches"] and len(sizes) == -(-whole["matches"] // 5)
    db = RunsDB(settings.duckdb)
    q = "SELECT * EXCLUDE (run_id) FROM matches WHERE run_id = ? ORDER BY lost_listing_id, found_listing_id"
    assert db.query(q, [whole["run_id"]]) == db.query(q, [parts["run_id"]])


def test_a_run_failing_after_its_chunks_leaves_no_rows_and_the_published_run_current(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks go in before the run is published, each in its own transaction; nobody sees them, and a run that fails
    afterwards takes them away again."""
    world = World()
    world.plant(6, distractors=10)
    world.write(settings)
    first = match(settings, top_k=3)
    db = RunsDB(settings.duckdb)
    before = db.query("SELECT * FROM current_matches ORDER BY lost_listing_id, found_listing_id")
    seen: list[int] = []

    def fail_at_publication(con, *args) -> None:
        seen.append(con.execute("SELECT count(*) FROM matches WHERE run_id <> ?", [first["run_id"]]).fetchone()[0])
        raise RuntimeError("publication failed")

    monkeypatch.setattr(match_job.run_rows, "record_match_lineage", fail_at_publication)
    with pytest.raises(RuntimeError, match="publication failed"):
        match(settings.with_overrides({"match": {"publish_chunk_rows": 4}}), top_k=3, full=True)
    assert seen and seen[0] == first["matches"]  # every chunk was in before the publishing transaction
    assert db.query("SELECT * FROM current_matches ORDER BY lost_listing_id, found_listing_id") == before
    assert db.query("SELECT DISTINCT run_id FROM matches") == [(first["run_id"],)]
    assert db.query("SELECT status FROM match_runs ORDER BY started") == [("published",), ("failed",)]


@pytest.mark.slow
def test_ray_fan_out_gives_the_same_matches(settings: Settings, ray_local: None) -> None:
    world = World()
    world.plant(8, distractors=20)
    # cats far away make a second block
    for i in range(6):
        world.add(["lost", "found"][i % 2], f"moscow-{i}", world.identity(), lat=55.75, lon=37.6, species="cat")
    world.write(settings)
    local = match(settings, top_k=3, use_ray=False)
    fanned = match(settings, top_k=3, use_ray=True, full=True)
    assert local["blocks"] >= 2
    db = RunsDB(settings.duckdb)
    q = (
        "SELECT lost_listing_id, found_listing_id, rank_for_lost, rank_for_found FROM matches "
        "WHERE run_id = ? ORDER BY 1, 2"
    )
    assert db.query(q, [local["run_id"]]) == db.query(q, [fanned["run_id"]])


def test_empty_inputs_publish_an_empty_run(settings: Settings) -> None:
    out = match(settings)
    assert out["status"] == "published" and out["matches"] == 0
    assert RunsDB(settings.duckdb).query("SELECT status FROM match_runs") == [("published",)]


def test_only_the_newest_runs_keep_their_pairs(settings: Settings) -> None:
    """Repeated runs (a scheduler matching every round) keep the pairs of the newest `match.keep_runs` published
    runs; older runs keep their match_runs row."""
    world = World()
    world.plant(4, distractors=6)
    world.write(settings)
    cfg = settings.with_overrides({"match": {"keep_runs": 2}})
    runs = [match(cfg, full=True)["run_id"] for _ in range(3)]
    db = RunsDB(settings.duckdb)
    with_pairs = {r for (r,) in db.query("SELECT DISTINCT run_id FROM matches")}
    assert with_pairs == {runs[1], runs[2]}
    assert db.query("SELECT count(*) FROM match_runs WHERE status = 'published'") == [(3,)]
    kept = db.query("SELECT count(*) FROM matches WHERE run_id = ?", [runs[2]])[0][0]
    assert kept > 0 and db.query("SELECT count(*) FROM matches WHERE run_id = ?", [runs[1]])[0][0] == kept


def _published(db: RunsDB, run_id: str) -> list[tuple]:
    """Every column of a run's matches but the run id, in pair order: what 'identical' compares."""
    return db.query(
        "SELECT * EXCLUDE (run_id) FROM matches WHERE run_id = ? ORDER BY lost_listing_id, found_listing_id", [run_id]
    )


@pytest.mark.parametrize("drivers", [1, 32], ids=["one-listing-calls", "batched-calls"])
def test_incremental_match_publishes_what_a_full_rematch_does(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, drivers: int
) -> None:
    """Rescored listings scored against the listings their blocks reach one by one, or several per call (the
    product over the union of their candidates): the same publication as a full rematch either way."""
    from engine.scoring import incremental as incremental_scoring

    monkeypatch.setattr(incremental_scoring, "DRIVERS_PER_CALL", drivers)
    settings = settings.with_overrides({"match": {"background_drift": 10.0}})
    world = World()
    pairs = world.plant(16, distractors=40)
    for i in range(100):  # cats: a block of their own that no change below touches
        world.add(["lost", "found"][i % 2], f"cat-{i}", world.identity(), day=i % 9, species="cat")
    for i in range(12):  # dogs of a town 40 km away: blocks of their own, which the new listings below also touch
        world.add(["lost", "found"][i % 2], f"far-{i}", world.identity(), day=i % 9, lat=TACOMA[0], lon=TACOMA[1],
                  geo_source="city" if i % 3 == 0 else "page")  # fmt: skip
    world.write(settings)
    first = match(settings, top_k=4)
    assert first["mode"] == "full" and first["mode_reason"] == "first match run"
    db = RunsDB(settings.duckdb)
    assert current(settings, *pairs[0])[0] == 1  # so closing found-0 must let lost-0's fifth pair back in

    by_id = {row["listing_id"]: row for row in world.listings}
    by_id[pairs[0][1]]["status"] = "resolved"  # a found listing in a top-k closes
    by_id[pairs[2][0]]["status"] = "resolved"  # a lost listing in a top-k closes
    by_id[pairs[1][0]]["colors"] = ["white"]  # a lost listing changes
    by_id[pairs[3][1]]["lat"] += 0.01  # a found listing moves
    new_pairs = [(world.add("lost", f"new-lost-{i}", a, day=3), world.add("found", f"new-found-{i}", a, day=4))
                 for i, a in enumerate(world.identity() for _ in range(3))]  # fmt: skip
    for i in range(6):
        world.add(["lost", "found"][i % 2], f"new-other-{i}", world.identity(), day=5)
    far = world.identity()
    far_lost = world.add("lost", "far-new-lost", far, day=3, lat=TACOMA[0], lon=TACOMA[1], geo_source="city")
    world.add("found", "far-new-found", far, day=4, lat=TACOMA[0] + 0.01, lon=TACOMA[1])
    # 20 km north at its shelter: only the places' slack (town 10 km, shelter 15 km) lets it pair
    at_shelter = world.add("found", "far-at-shelter", far, day=5, lat=TACOMA[0] + 0.18, lon=TACOMA[1],
                           geo_source="shelter")  # fmt: skip
    world.write(settings)

    incremental = match(settings, top_k=4)
    assert incremental["mode"] == "incremental", incremental["mode_reason"]
    changes = incremental["changes"]
    assert [changes[f"{side}_{what}"] for what in ("new", "changed", "removed") for side in ("lost", "found")] == [
        7, 8, 1, 1, 1, 1,
    ]  # fmt: skip
    assert 0 < incremental["pairs_scored"] == incremental["candidate_pairs"] and changes["matches_carried"] > 0, changes
    assert all(current(settings, *p)[0] == 1 for p in new_pairs)
    assert current(settings, far_lost, at_shelter) is not None
    snapshot = db.query("SELECT listing_id, status, colors, lat FROM listings ORDER BY listing_id")
    assert snapshot == sorted((r["listing_id"], r["status"], r.get("colors"), r["lat"]) for r in world.listings)
    assert current(settings, *pairs[0]) is None and current(settings, *pairs[2]) is None

    rematch = match(settings, top_k=4, full=True)
    assert rematch["mode"] == "full" and rematch["mode_reason"] == "--full requested"
    assert rematch["pairs_scored"] == rematch["candidate_pairs"] > incremental["candidate_pairs"]
    assert _published(db, incremental["run_id"]) == _published(db, rematch["run_id"])
    assert len(_published(db, rematch["run_id"])) == rematch["matches"]

    nothing = match(settings, top_k=4)  # no change at all: nothing scored, the same matches
    assert nothing["mode"] == "incremental" and nothing["pairs_scored"] == 0
    assert _published(db, nothing["run_id"]) == _published(db, rematch["run_id"])
    mode = db.query("SELECT mode, mode_reason, changes->>'pairs_scored' FROM match_runs WHERE run_id = ?",
                    [incremental["run_id"]])  # fmt: skip
    assert mode == [("incremental", incremental["mode_reason"], str(incremental["pairs_scored"]))]
    # matches has no key: the writer itself must never publish a pair twice in a run, chunks and carried rows alike
    twice = "SELECT run_id, lost_listing_id, found_listing_id FROM matches GROUP BY ALL HAVING count(*) > 1"
    assert db.query(twice) == []
    assert db.query("SELECT count(DISTINCT run_id) FROM matches") == [(4,)]


def test_scoring_or_population_changes_force_a_full_rematch(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World()
    world.plant(6, distractors=10)
    world.write(settings)
    match(settings, top_k=3)
    reweighted = match(settings.with_overrides({"match": {"weights": {"image": 0.9, "geo": 0.1}}}), top_k=3)
    assert reweighted["mode"] == "full" and "params" in reweighted["mode_reason"]
    more = match(settings.with_overrides({"match": {"weights": {"image": 0.9, "geo": 0.1}}}), top_k=5)
    assert more["mode"] == "full" and "top_k" in more["mode_reason"]
    # a third more vectors on each side: the frozen background no longer describes the population
    for i in range(8):
        world.add(["lost", "found"][i % 2], f"more-{i}", world.identity())
    world.write(settings)
    drifted = match(settings.with_overrides({"match": {"weights": {"image": 0.9, "geo": 0.1}}}), top_k=5)
    assert drifted["mode"] == "full" and "drifted" in drifted["mode_reason"]
    monkeypatch.setattr(match_job, "_scoring_code", lambda: "another version of the scoring modules")
    upgraded = match(settings.with_overrides({"match": {"weights": {"image": 0.9, "geo": 0.1}}}), top_k=5)
    assert upgraded["mode"] == "full" and upgraded["mode_reason"].endswith(": code")
