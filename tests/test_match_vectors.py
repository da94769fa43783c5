"""``homeward match`` reads vectors last and only where it scores: changed detection rows are found without reading a
vector, an incremental run never needs the vectors of listings it does not score, and chunked reading changes
nothing."""

from __future__ import annotations

import datetime as dt
import itertools

import numpy as np
import pyarrow as pa
import pytest
import torch

from engine.config import Settings
from engine.errors import HomewardError
from engine.scoring.sides import add_vectors, side_frame, unit_vectors
from engine.storage import RunsDB
from ray_jobs import match as match_job
from ray_jobs import match_vectors
from ray_jobs.match import match
from tests.test_match import World, _published


@pytest.fixture(autouse=True)
def _majority_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(match_job, "configured_embed_model", lambda settings: None)


def _poison_unread(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """After each side's read, NaN in every vector of the listings it was not asked for: a pair that needed one
    would get no finite value and drop out of the publication. → rows read, per side."""
    read = match_vectors.SideVectors.read
    counts: list[int] = []

    def poisoned(self: match_vectors.SideVectors, table, listings: np.ndarray) -> int:
        n = read(self, table, listings)
        unread = ~listings
        self.side.det_emb[torch.from_numpy(unread[self.side.det_owner.numpy()])] = float("nan")
        self.side.text[torch.from_numpy(unread)] = float("nan")
        counts.append(n)
        return n

    monkeypatch.setattr(match_vectors.SideVectors, "read", poisoned)
    return counts


def test_changed_detection_rows_are_rescored_and_unscored_vectors_never_read(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the vector cache off: its copies would fill listings outside the read (test_match_cache.py covers it)
    settings = settings.with_overrides({"match": {"background_drift": 10.0, "vector_cache": False}})
    world = World()
    pairs = world.plant(10, distractors=30)
    for i in range(40):  # cats: listings no change below reaches, whose vectors an incremental run must not need
        world.add(["lost", "found"][i % 2], f"cat-{i}", world.identity(), day=i % 9, species="cat")
    world.write(settings)
    assert match(settings, top_k=3)["mode"] == "full"
    total_rows = len(world.detections)

    by_listing = {row["listing_id"]: row for row in world.detections}
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    # a lost listing's photo re-embedded: the same detection row, a new vector and write stamp
    redone = by_listing[pairs[0][0]]
    redone.update(embedding=world.vec(world.identity(), 0.0), created_at=later)
    # a found listing whose only change is one more detection row (a photo enriched since)
    extra = dict(by_listing[pairs[1][1]], detection_id="det-extra", photo_id="photo-extra", created_at=later,
                 embedding=world.vec(world.identity(), 0.0))  # fmt: skip
    world.detections.append(extra)
    world.write(settings)

    with monkeypatch.context() as patched:
        patched.setattr(match_vectors, "CHUNK_BYTES", 4 * 60 * 3)  # three rows a chunk: text sums span chunks
        counts = _poison_unread(patched)
        incremental = match(settings, top_k=3)
    assert incremental["mode"] == "incremental", incremental["mode_reason"]
    changes = incremental["changes"]
    assert [changes[f"{side}_{what}"] for what in ("changed", "new") for side in ("lost", "found")] == [1, 1, 0, 0]
    assert 0 < sum(counts) == incremental["vectors_read"] <= total_rows - 40  # no cat's vector was read

    rematch = match(settings, top_k=3, full=True)
    assert rematch["vectors_read"] == total_rows + 1
    db = RunsDB(settings.duckdb)
    assert _published(db, incremental["run_id"]) == _published(db, rematch["run_id"])


def test_rows_without_a_write_stamp_are_rescored_every_run(settings: Settings) -> None:
    """``created_at`` stands for a row's vectors; a row without it cannot be trusted, so its listing is never
    carried."""
    world = World()
    world.plant(4, distractors=6)
    world.add("found", "unstamped", world.identity())
    world.detections[-1]["created_at"] = None
    world.write(settings)
    match(settings, top_k=3)
    again = match(settings, top_k=3)
    assert again["mode"] == "incremental"
    changes = again["changes"]
    assert (changes["found_new"], changes["lost_new"], changes["found_changed"]) == (1, 0, 0)
    assert changes["rescored_found"] >= 1 and again["pairs_scored"] > 0


def test_a_vector_without_its_model_is_a_clear_error(settings: Settings) -> None:
    """Which vectors a row has is read from its model columns (the vectors are read last); a row that breaks that is
    named when its vectors are read, not scored as a zero vector."""
    world = World()
    world.plant(3, distractors=2)
    world.detections[0]["text_model"] = None  # a text vector without its model
    world.write(settings)
    with pytest.raises(HomewardError, match="vector without its model"):
        match(settings, top_k=3)


def test_vectors_placed_an_arrow_chunk_at_a_time_equal_one_whole_copy() -> None:
    """``add_vectors`` normalises each Arrow chunk where Arrow holds it (sliced chunks, rows without a vector, a zero
    vector) and places it: bit for bit what normalising one copy of the whole column gives, with each listing's
    text vectors summed in row order across two reads."""
    rng = np.random.default_rng(3)
    owners = ["a", "a", "b", "c", "c", "c", "a", "b", "d", "d", "c"]  # a listing's rows apart, as row ids leave them
    has_image = np.array([1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1], bool)
    has_text = np.array([1, 0, 1, 1, 1, 0, 1, 1, 0, 1, 1], bool)
    image = rng.standard_normal((len(owners), 5)).astype(np.float32)
    image[4] = 0.0
    text = rng.standard_normal((len(owners), 3)).astype(np.float32)

    def column(vecs: np.ndarray, valid: np.ndarray) -> pa.FixedSizeListArray:
        return pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), vecs.shape[1], mask=pa.array(~valid))

    listings = pa.table({"listing_id": ["a", "b", "c", "d"], "species": pa.nulls(4, pa.string()),
                         "sex": pa.nulls(4, pa.string()), "size": pa.nulls(4, pa.string()),
                         "colors": pa.nulls(4, pa.list_(pa.string())), "breed": pa.nulls(4, pa.string()),
                         "lat": [0.0] * 4, "lon": [0.0] * 4})  # fmt: skip
    det = pa.table({"listing_id": owners, "photo_id": [f"p{i}" for i in range(len(owners))],
                    "species": pa.nulls(len(owners), pa.string()), "has_embedding": has_image,
                    "has_text_embedding": has_text})  # fmt: skip
    side, rows, order = side_frame(listings, det, 5, 3)
    at = np.argsort(order)  # the side row of each det row
    whole_image, whole_text = column(image, has_image), column(text, has_text)
    for part in (slice(0, 6), slice(6, None)):  # two reads; their chunks are slices of one array (offsets)
        lengths = (2, 1, 3) if part.start == 0 else (4, 1)
        bounds = np.cumsum((part.start, *lengths))
        image_col, text_col = (pa.chunked_array([c.slice(s, e - s) for s, e in itertools.pairwise(bounds)])
                               for c in (whole_image, whole_text))  # fmt: skip
        add_vectors(side, rows, at[part], image_col, text_col)

    expected_image = np.zeros_like(side.det_emb.numpy())
    expected_image[rows.image_slot[at][has_image]] = unit_vectors(pa.chunked_array([whole_image]).filter(has_image))
    assert np.array_equal(side.det_emb.numpy(), expected_image)
    expected_text = np.zeros_like(side.text.numpy())
    for owner, vec in zip(
        rows.owner[at][has_text], unit_vectors(pa.chunked_array([whole_text]).filter(has_text)), strict=True
    ):
        expected_text[owner] += vec
    assert np.array_equal(side.text.numpy(), expected_text)
    assert not side.det_emb.numpy()[rows.image_slot[at][4]].any()
