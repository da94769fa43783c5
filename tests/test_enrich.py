"""``homeward enrich`` on Ray: bad photos are recorded with a reason while the job goes on, reruns skip finished photos
and retry failed ones, and the real cpu profile finds the dog."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import test_images as make
import torch
from PIL import Image

from engine import ids
from engine.config import Settings
from engine.storage import LanceStore, RunsDB, open_stores, upsert_listings, upsert_photos
from ray_jobs.enrich import DECODE_CPUS, actor_cpu_share, enrich

pytestmark = pytest.mark.timeout(900)


def _seed(settings: Settings, photos: dict[str, bytes | None], descriptions: dict[str, str] | None = None) -> dict:
    """One listing per photo name (``photos[name]`` = bytes, or None for a photo whose file is missing)."""
    lance, _, store = open_stores(settings)
    listings, rows, keys = [], [], {}
    for name, data in photos.items():
        lid = ids.listing_id("test", name)
        listings.append(
            {"listing_id": lid, "source": "test", "source_id": name, "description": (descriptions or {}).get(name)}
        )
        if data is None:
            pid, uri = "0" * 64, store.uri_for("0" * 64, "jpg")
        else:
            pid, uri = store.put(data, "img")
        key = ids.content_hash(lid, name)
        keys[name] = key
        rows.append(
            {
                "photo_key": key,
                "photo_id": pid,
                "listing_id": lid,
                "source_url": f"http://test/{name}",
                "uri": uri,
                "status": "ok",
            }
        )
    upsert_listings(lance, listings)
    upsert_photos(lance, rows)
    return keys


def _photos(settings: Settings) -> dict[str, dict]:
    return {r["photo_key"]: r for r in LanceStore(settings.lance).read("photos").to_pylist()}


def _detections(settings: Settings) -> list[dict]:
    return LanceStore(settings.lance).read("detections").to_pylist()


@pytest.fixture()
def tiny(settings: Settings) -> Settings:
    # inline_max_photos 0: these tests are about the Ray pipeline (tests/test_loop.py runs small batches inline)
    return settings.with_overrides({"enrich": {"profile": "tiny", "batch_size": 4, "inline_max_photos": 0}})


def test_bad_inputs_each_get_a_reason_and_the_job_goes_on(tiny: Settings, ray_local: None) -> None:
    good = Image.effect_noise((160, 120), 50).convert("RGB")
    photos = {
        "good": make.jpeg(good),
        "rotated": make.exif_rotated(),
        "cmyk": make.cmyk(),
        "sixteen_bit": make.sixteen_bit(),
        "palette": make.palette_transparent(),
        "animated": make.animated_gif(),
        "huge_jpeg": make.jpeg_claiming(),
        "bomb_png": make.png_bomb(),
        "truncated": make.truncated(),
        "corrupt": make.corrupt(),
        "html": make.html(),
        "missing_file": None,
        "no_animal": make.jpeg(make.scene_without_animals()),
    }
    keys = _seed(tiny, photos, {"good": "Lost brown dog, very friendly"})
    result = enrich(tiny)
    expected_failed = {
        "bomb_png": "too_large",
        "truncated": "truncated",
        "corrupt": "corrupt_image",
        "html": "not_an_image",
        "missing_file": "fetch_failed",
    }
    assert result["status"] == "ok"
    assert result["photos"] == len(photos)
    assert result["failed"] == len(expected_failed)
    assert result["ok"] + result["no_animal"] == len(photos) - len(expected_failed)
    assert result["errors_by_reason"] == {reason: 1 for reason in expected_failed.values()}
    rows = _photos(tiny)
    for name, key in keys.items():
        row = rows[key]
        if name in expected_failed:
            assert row["enrich_status"] == "failed", name
            assert row["enrich_error"].split(":")[0] == expected_failed[name], (name, row["enrich_error"])
        else:
            assert row["enrich_status"] in ("ok", "no_animal"), (name, row["enrich_error"])
            assert row["enrich_error"] is None
        assert row["enriched_at"] is not None
        assert row["source_url"] == f"http://test/{name}"  # crawl columns untouched by the partial update
    dets = _detections(tiny)
    by_key: dict[str, list[dict]] = {}
    for d in dets:
        by_key.setdefault(d["photo_key"], []).append(d)
    assert set(by_key) == {keys[n] for n in photos if n not in expected_failed}  # every decodable photo has a vector
    assert len(dets) == result["detections"]
    for key, ds in by_key.items():
        if rows[key]["enrich_status"] == "no_animal":
            [d] = ds
            assert d["full_frame"] and d["species"] == "unknown"
        for d in ds:
            assert len(d["embedding"]) == result["models"]["embed_dim"]
            assert abs(np.linalg.norm(d["embedding"]) - 1) < 1e-4
            assert abs(np.linalg.norm(d["text_embedding"]) - 1) < 1e-4
            assert d["embed_model"] == "timm:test_efficientnet:random-seed0"
            assert d["text_model"].startswith("sentence:") and d["detector_model"].startswith("yolo:")
            assert json.loads(d["attributes"])["captioner"].startswith("attributes:")
    # full-frame boxes are in the photo's own (upright, full-resolution) pixels
    rotated = by_key[keys["rotated"]][0]
    if rotated["full_frame"]:
        assert list(rotated["bbox"]) == [0.0, 0.0, 40.0, 80.0]
    huge = by_key[keys["huge_jpeg"]][0]
    if huge["full_frame"]:
        assert list(huge["bbox"]) == [0.0, 0.0, 20000.0, 20000.0]
    # the run is recorded
    [(status, ok, no_animal, failed, n_det, errors, models)] = RunsDB(tiny.duckdb).query(
        "SELECT status, ok, no_animal, failed, detections, errors_by_reason::VARCHAR, models::VARCHAR FROM enrich_runs"
    )
    assert (status, ok, no_animal, failed, n_det) == ("ok", result["ok"], result["no_animal"], 5, len(dets))
    assert json.loads(errors) == result["errors_by_reason"]
    assert json.loads(models)["embed_dim"] == result["models"]["embed_dim"]

    # rerun: finished photos are skipped, failed ones retried (and fail again with the same reasons)
    again = enrich(tiny)
    assert again["photos"] == len(expected_failed) and again["failed"] == len(expected_failed)
    assert len(_detections(tiny)) == len(dets)
    assert enrich(tiny, retry_failed=False)["photos"] == 0


def test_failed_photo_is_retried_and_succeeds(tiny: Settings, ray_local: None) -> None:
    data = make.jpeg(make.scene_without_animals())
    keys = _seed(tiny, {"later": None})
    first = enrich(tiny)
    assert first["failed"] == 1 and first["errors_by_reason"] == {"fetch_failed": 1}
    # the file arrives at the URI the photo row points at
    row = _photos(tiny)[keys["later"]]
    Path(row["uri"]).parent.mkdir(parents=True, exist_ok=True)
    Path(row["uri"]).write_bytes(data)
    second = enrich(tiny)
    assert second["photos"] == 1 and second["failed"] == 0
    assert second["vector_index"]["action"] == "none"  # a few rows, below search.index_min_rows: brute force
    assert _photos(tiny)[keys["later"]]["enrich_status"] in ("ok", "no_animal")
    assert len(_detections(tiny)) >= 1
    assert enrich(tiny)["photos"] == 0  # nothing new


def test_same_image_in_two_listings_and_profile_switch(tiny: Settings, ray_local: None, tmp_path: Path) -> None:
    data = make.jpeg(Image.effect_noise((100, 100), 40).convert("RGB"))
    keys = _seed(tiny, {"a": data, "b": data}, {"a": "black cat lost", "b": "found a small dog"})
    result = enrich(tiny)
    assert result["photos"] == 2
    dets = _detections(tiny)
    assert {d["photo_key"] for d in dets} == set(keys.values())
    da = next(d for d in dets if d["photo_key"] == keys["a"])
    db = next(d for d in dets if d["photo_key"] == keys["b"])
    assert da["detection_id"] != db["detection_id"]
    np.testing.assert_allclose(da["embedding"], db["embedding"], atol=1e-6)  # one image, one vector
    assert not np.allclose(da["text_embedding"], db["text_embedding"])  # different listing text
    # another embedder (same dimension, other weights): every photo is enriched again, old vectors stay apart
    other = tmp_path / "other.yaml"
    other.write_text("base: tiny\nembedder: {seed: 1}\n")
    switched = enrich(tiny, profile=str(other))
    assert switched["photos"] == 2 and switched["models"]["embed_model"] == "timm:test_efficientnet:random-seed1"
    models = sorted(d["embed_model"] for d in _detections(tiny))
    assert models == ["timm:test_efficientnet:random-seed0"] * 2 + ["timm:test_efficientnet:random-seed1"] * 2
    assert enrich(tiny, profile=str(other))["photos"] == 0


def test_nothing_to_do_needs_no_ray(tiny: Settings) -> None:
    import ray

    was_running = ray.is_initialized()
    result = enrich(tiny)  # no photos table yet
    assert (result["status"], result["photos"], result["detections"]) == ("ok", 0, 0)
    assert ray.is_initialized() == was_running  # no Ray started for nothing
    assert RunsDB(tiny.duckdb).query("SELECT status, photos FROM enrich_runs") == [("ok", 0)]


@pytest.mark.shared
def test_cpu_profile_real_photos(settings: Settings, models_dir: Path, shared_dir: Path, ray_local: None) -> None:
    if not (models_dir / "yolo11n_coco_recon_from_int8.pt").is_file():
        pytest.skip("needs ../shared/models")
    s = settings.with_overrides({"models_dir": str(models_dir), "enrich": {"profile": "cpu"}})
    dog = (shared_dir / "data/images/dog_bicycle_truck.jpg").read_bytes()
    src = Image.open(shared_dir / "data/images/dog_bicycle_truck.jpg").convert("RGB").crop((125, 210, 320, 550))
    five = Image.new("RGB", (1300, 420), (235, 235, 225))
    for i in range(5):
        five.paste(src, (20 + i * 255, 40))
    keys = _seed(
        s,
        {
            "dog": dog,
            "five": make.jpeg(five),
            "empty": make.jpeg(make.scene_without_animals()),
            "bad": make.truncated(),
        },
        {"dog": "Found a black and tan dog near the bicycle shop"},
    )
    result = enrich(s)
    assert (result["ok"], result["no_animal"], result["failed"]) == (2, 1, 1)
    rows = _photos(s)
    assert rows[keys["dog"]]["enrich_status"] == "ok" and rows[keys["five"]]["enrich_status"] == "ok"
    assert rows[keys["empty"]]["enrich_status"] == "no_animal"
    assert rows[keys["bad"]]["enrich_error"].startswith("truncated")
    dets = _detections(s)
    [the_dog] = [d for d in dets if d["photo_key"] == keys["dog"]]
    assert the_dog["species"] == "dog" and the_dog["confidence"] > 0.8 and not the_dog["full_frame"]
    x1, y1, x2, y2 = the_dog["bbox"]
    assert abs(x1 - 132) < 15 and abs(y1 - 218) < 15 and abs(x2 - 311) < 15 and abs(y2 - 541) < 15
    attrs = json.loads(the_dog["attributes"])
    assert attrs["species"] == "dog" and attrs.get("breed") and "black" in attrs["colors"]
    assert len(the_dog["embedding"]) == 2 * 1280 + 12 * 4 * 4 and len(the_dog["text_embedding"]) == 384  # 2 nets, coat
    assert sum(d["photo_key"] == keys["five"] for d in dets) == 5
    [empty] = [d for d in dets if d["photo_key"] == keys["empty"]]
    assert empty["full_frame"] and empty["species"] == "unknown"
    assert enrich(s, retry_failed=False)["photos"] == 0


def test_bench_enrich_prints_its_figures_as_json(
    settings: Settings, ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ray_jobs.cli import main

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(10):
        (folder / f"p{i}.jpg").write_bytes(make.jpeg(Image.effect_noise((200 + i, 150), 30 + i).convert("RGB")))
    code = main(
        [
            "bench",
            "enrich",
            "--images",
            "10",
            "--images-dir",
            str(folder),
            "--profile",
            "tiny",
            "--data-dir",
            settings.data_dir,
            "--set",
            "ray.num_cpus=2",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["bench"] == "enrich" and out["profile"] == "tiny" and out["images"] == 10 and out["device"] == "cpu"
    stages = out["pipeline_stages_images_per_s"]
    assert set(stages) == {"decode", "detect", "embed+caption", "text"}
    assert out["slowest_stage"] == min(stages, key=stages.get)
    assert out["efficiency"] == pytest.approx(
        out["end_to_end_images_per_s"] / stages[out["slowest_stage"]], rel=0.05, abs=2e-3
    )
    assert sum(out["enrich_counts"].values()) == 10 and out["enrich_counts"]["failed"] == 0
    assert out["pipeline_peak_rss_mb"] > 100 and out["standalone_peak_rss_mb"] > 100
    assert out["passes_bar"] == (out["efficiency"] >= 0.8)


def test_bench_enrich_without_pipeline_times_models_alone(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ray_jobs.cli import main

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        (folder / f"p{i}.jpg").write_bytes(make.jpeg(Image.effect_noise((120 + i, 90), 30 + i).convert("RGB")))
    argv = ["bench", "enrich", "--images", "4", "--images-dir", str(folder), "--profile", "tiny"]
    assert main([*argv, "--no-pipeline", "--data-dir", settings.data_dir]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["device"] == "cpu" and set(out["standalone_images_per_s"]) >= {"decode", "detect", "embed", "text"}
    assert "end_to_end_images_per_s" not in out and "passes_bar" not in out
    if not torch.cuda.is_available():
        assert main([*argv, "--device", "cuda", "--no-pipeline", "--data-dir", settings.data_dir]) == 2
        assert "no CUDA device" in capsys.readouterr().err


def test_other_dimension_is_refused_before_any_write(tiny: Settings, ray_local: None, tmp_path: Path) -> None:
    from engine.storage import StorageError

    keys = _seed(tiny, {"x": make.jpeg(Image.effect_noise((90, 90), 40).convert("RGB"))})
    assert enrich(tiny)["photos"] == 1
    before = _photos(tiny)[keys["x"]]
    clip = tmp_path / "clip.yaml"
    clip.write_text(
        "base: tiny\nembedder:\n  kind: open_clip\n  arch: tiny\n  config:\n    embed_dim: 32\n"
        "    vision_cfg: {image_size: 32, layers: 1, width: 32, patch_size: 16, head_width: 16}\n"
        "    text_cfg: {context_length: 16, vocab_size: 64, width: 32, heads: 2, layers: 1}\n"
    )
    with pytest.raises(StorageError, match="cannot share a table"):
        enrich(tiny, profile=str(clip))
    assert _photos(tiny)[keys["x"]]["enriched_at"] == before["enriched_at"]  # nothing marked done
    assert len(_detections(tiny)) == 1
    [(status, message)] = RunsDB(tiny.duckdb).query(
        "SELECT status, message FROM enrich_runs WHERE parameters::VARCHAR LIKE '%clip.yaml%'"
    )
    assert status == "failed" and "StorageError" in message


def test_vlm_captioner_runs_as_its_own_actor_stage(tiny: Settings, ray_local: None, tmp_path: Path) -> None:
    from test_models import make_tiny_blip

    models = tmp_path / "models"
    make_tiny_blip(models / "tiny-blip")
    prof = tmp_path / "vlm.yaml"
    prof.write_text("base: tiny\ncaptioner: {kind: vlm, model: tiny-blip, max_new_tokens: 5, batch_size: 4}\n")
    s = tiny.with_overrides({"models_dir": str(models)})
    keys = _seed(s, {"p": make.jpeg(make.scene_without_animals())}, {"p": "grey cat seen in the garden"})
    result = enrich(s, profile=str(prof))
    assert result["photos"] == 1 and result["failed"] == 0
    assert result["models"]["caption_model"].startswith("vlm:tiny-blip:")
    [d] = [d for d in _detections(s) if d["photo_key"] == keys["p"]]
    attrs = json.loads(d["attributes"])
    assert attrs["source"] == "vlm" and attrs["captioner"].startswith("vlm:tiny-blip:")
    assert isinstance(d["caption"], str) and d["caption"]


def test_actor_cpu_share_leaves_room_for_decoding() -> None:
    assert actor_cpu_share(0.5, 3, 2.0) == 0.5  # 1.5 CPUs of actors + decode fit on 2
    share = actor_cpu_share(0.5, 4, 2.0)  # the VLM stage makes four: they must not take the last core
    assert share * 4 + DECODE_CPUS <= 2.0 and share > 0
    assert actor_cpu_share(1.0, 4, 64.0) == 1.0 and actor_cpu_share(0.5, 4, 0.0) == 0.5


def test_a_crop_is_embedded_as_the_detector_species_else_the_listings() -> None:
    from ray_jobs.enrich.stages import crop_species

    cat_box = {"species": "cat", "full_frame": False}
    whole = {"species": "unknown", "full_frame": True}
    row = {"targets": [{"species": "dog"}, {"species": "dog"}]}
    assert crop_species(row, cat_box) == "cat"  # the detector saw a cat: the post's word does not override it
    assert crop_species(row, whole) == "dog"
    # listings of one photo that disagree, or none: nothing is assumed
    assert crop_species({"targets": [{"species": "dog"}, {"species": "cat"}]}, whole) == "unknown"
    assert crop_species({"targets": []}, whole) == "unknown"
