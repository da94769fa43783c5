"""``homeward search --photo``: nearest listings by photo with the same scoring as match; clear messages."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import engine.models
from engine import ids, schema
from engine.config import Settings
from engine.errors import HomewardError
from engine.models import Detection
from engine.search import search
from engine.storage import LanceStore, upsert_listings
from ray_jobs.cli import main

SEATTLE = (47.6062, -122.3321)


def animal_image(seed: int, size: int = 96) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize((size, size), Image.NEAREST)


class PixelEmbedder:
    """Deterministic stand-in for the profile's embedder: the 8×8 thumbnail, centred and L2-normalised."""

    model_id = "test:pixels"
    dim = 192

    def embed(self, images: list[Image.Image], species: Sequence[str] | None = None) -> np.ndarray:
        v = np.stack([np.asarray(im.convert("RGB").resize((8, 8)), dtype=np.float32).ravel() for im in images])
        v -= 127.5
        return v / np.linalg.norm(v, axis=1, keepdims=True)


class BoxDetector:
    """Finds one dog filling the frame, or nothing when ``empty``."""

    model_id = "test:box"

    def __init__(self, empty: bool = False) -> None:
        self.empty = empty

    def detect(self, images: list[Image.Image]) -> list[list[Detection]]:
        if self.empty:
            return [[] for _ in images]
        return [[Detection("dog", 0.9, (0.0, 0.0, float(im.width), float(im.height)))] for im in images]


@pytest.fixture()
def fake_models(monkeypatch: pytest.MonkeyPatch) -> dict:
    state = {"detector": BoxDetector()}
    monkeypatch.setattr(engine.models, "load_detector", lambda settings, **kw: state["detector"])
    monkeypatch.setattr(engine.models, "load_embedder", lambda settings, **kw: PixelEmbedder())
    return state


def index(settings: Settings, embedder, n: int = 12, model: str | None = None, far: tuple[int, ...] = ()) -> list[str]:
    listings, dets = [], []
    vectors = embedder.embed([animal_image(i) for i in range(n)])
    for i in range(n):
        lid = ids.listing_id("synthetic", f"s{i}")
        lat, lon = (55.75, 37.6) if i in far else (SEATTLE[0] + 0.01 * (i % 3), SEATTLE[1])
        listings.append(dict(listing_id=lid, source="synthetic", source_id=f"s{i}", url=f"https://example.org/{i}",
                             kind=["lost", "found", "shelter"][i % 3], status="active", species="dog", lat=lat,
                             lon=lon, photo_ids=[f"p{i}"]))  # fmt: skip
        dets.append(dict(detection_id=f"d{i}", photo_id=f"p{i}", listing_id=lid, species="dog", confidence=0.9,
                         embedding=vectors[i].tolist(), embed_model=model or embedder.model_id,
                         status="ok"))  # fmt: skip
    store = LanceStore(settings.lance)
    upsert_listings(store, listings)
    store.upsert("detections", dets, key="detection_id",
                 table_schema=schema.detections_schema(vectors.shape[1], 8))  # fmt: skip
    return [r["listing_id"] for r in listings]


def query_photo(tmp_path: Path, seed: int, noise: float = 8.0) -> str:
    arr = np.asarray(animal_image(seed), dtype=np.float32)
    arr += np.random.default_rng(99).normal(0, noise, arr.shape)
    path = tmp_path / f"query-{seed}.jpg"
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
    return str(path)


def test_nearest_listing_first_with_link(
    settings: Settings, tmp_path: Path, fake_models: dict, capsys: pytest.CaptureFixture
) -> None:
    ids_ = index(settings, PixelEmbedder())
    out = search(settings, photo=query_photo(tmp_path, 4), k=3)
    assert out["model"] == "test:pixels" and not out["fallback_full_frame"] and out["species"] == "dog"
    assert [r["rank"] for r in out["results"]] == [1, 2, 3]
    best = out["results"][0]
    assert best["listing_id"] == ids_[4] and best["url"] == "https://example.org/4" and best["kind"] == "found"
    assert best["image_sim"] > 0.95 and best["score"] > out["results"][1]["score"]
    assert "https://example.org/4" in capsys.readouterr().out.splitlines()[0]


def test_no_animal_falls_back_to_whole_image(
    settings: Settings, tmp_path: Path, fake_models: dict, capsys: pytest.CaptureFixture
) -> None:
    ids_ = index(settings, PixelEmbedder())
    fake_models["detector"] = BoxDetector(empty=True)
    out = search(settings, photo=query_photo(tmp_path, 7), k=2)
    assert out["fallback_full_frame"] and out["detections"][0]["full_frame"]
    assert "no animal detected" in out["message"] and "no animal detected" in capsys.readouterr().out
    assert out["results"][0]["listing_id"] == ids_[7]


def test_bad_photos_get_clear_errors(settings: Settings, tmp_path: Path, fake_models: dict) -> None:
    index(settings, PixelEmbedder())
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("<html>404 not found</html>")
    with pytest.raises(HomewardError, match=r"cannot use .*notes\.jpg.* as a photo \(not_an_image"):
        search(settings, photo=str(not_image))
    with pytest.raises(HomewardError, match="needs a photo"):
        search(settings, photo="")  # the CLI requires --photo; an empty one is still refused
    with pytest.raises(HomewardError, match="does not exist"):
        search(settings, photo=str(tmp_path / "missing.jpg"))
    with pytest.raises(HomewardError, match="--near expects LAT,LON"):
        search(settings, photo=query_photo(tmp_path, 1), near="Xyzzy Nowhere")
    with pytest.raises(HomewardError, match="needs --near"):
        search(settings, photo=query_photo(tmp_path, 1), radius_km=5)
    with pytest.raises(HomewardError, match="--species must be one of"):
        search(settings, photo=query_photo(tmp_path, 1), species="parrot")


def test_near_and_radius(settings: Settings, tmp_path: Path, fake_models: dict) -> None:
    ids_ = index(settings, PixelEmbedder(), far=(5,))
    near = f"{SEATTLE[0]},{SEATTLE[1]}"
    out = search(settings, photo=query_photo(tmp_path, 5), near=near, radius_km=50, k=20)
    assert ids_[5] not in [r["listing_id"] for r in out["results"]]  # the same animal, but in Moscow
    assert all(r["distance_km"] is not None and r["distance_km"] <= 50 for r in out["results"])
    out = search(settings, photo=query_photo(tmp_path, 2), near=near, k=1)
    assert out["results"][0]["listing_id"] == ids_[2] and out["results"][0]["distance_km"] < 5


def test_vectors_of_another_model_are_refused(settings: Settings, tmp_path: Path, fake_models: dict) -> None:
    index(settings, PixelEmbedder(), model="other:model")
    with pytest.raises(HomewardError, match=r"'test:pixels' but the stored vectors are of 'other:model'"):
        search(settings, photo=query_photo(tmp_path, 1))


def test_empty_index_says_so(settings: Settings, tmp_path: Path, fake_models: dict) -> None:
    out = search(settings, photo=query_photo(tmp_path, 1))
    assert out["results"] == [] and "nothing to search yet" in out["message"]


@pytest.mark.slow
def test_cli_search_with_tiny_profile(settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tiny = settings.with_overrides({"enrich": {"profile": "tiny"}})
    ids_ = index(tiny, engine.models.load_embedder(tiny))
    photo = tmp_path / "same.png"
    animal_image(3).save(photo)
    code = main(["search", "--photo", str(photo), "--k", "2", "--data-dir", settings.data_dir,
                 "--set", "enrich.profile=tiny"])  # fmt: skip
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    out = json.loads(lines[-1])
    assert out["model"].startswith("timm:test_efficientnet")
    assert out["results"][0]["listing_id"] == ids_[3]
    assert any("https://example.org/3" in line for line in lines[:-1])


def test_search_through_the_index_ranks_as_exact(settings: Settings, tmp_path: Path, fake_models: dict) -> None:
    """Past ``search.index_min_rows`` candidates come from the vector index and are re-ranked exactly: the same
    listings in the same order with the same scores as brute force (the background sample is the whole table at
    this size, as it is for brute force)."""
    from engine.search import search_image
    from engine.vector_index import refresh_index

    index(settings, PixelEmbedder(), n=1200)
    photo = Image.open(query_photo(tmp_path, 40))
    exact = search_image(settings, photo, k=5)
    low = settings.with_overrides({"search": {"index_min_rows": 1000, "index_partition_rows": 400}})
    assert refresh_index(LanceStore(settings.lance), settings.search)["action"] == "none"
    assert refresh_index(LanceStore(settings.lance), low.search)["action"] == "built"
    through = search_image(low, photo, k=5)
    assert exact.index is None and through.index == "IVF_HNSW_SQ"
    assert through.searched_listings < exact.searched_listings == 1200
    assert [h.listing_id for h in through.results] == [h.listing_id for h in exact.results]
    assert [h.score for h in through.results] == pytest.approx([h.score for h in exact.results], abs=1e-3)
    assert through.results[0].listing_id == ids.listing_id("synthetic", "s40")
    cats = search_image(low, photo, k=5, species="cat")  # every listing is a dog: widens to the whole table, none
    assert cats.results == [] and cats.index == "IVF_HNSW_SQ"
