"""``homeward eval`` on a tiny generated identity set, with an injected embedder and with the ``tiny`` profile."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.config import Settings
from engine.degrade import degrade
from engine.errors import HomewardError
from engine.eval import evaluate, evaluate_with, list_identity_images
from engine.models import Detection
from ray_jobs.cli import main

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]


def make_identities(root: Path, per_identity: int = 3, size: int = 64) -> Path:
    rng = np.random.default_rng(0)
    for ident, colour in enumerate(COLOURS):
        folder = root / str(ident)
        folder.mkdir(parents=True)
        for n in range(per_identity):
            arr = np.clip(np.array(colour) + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(folder / f"{ident}.{n}.jpg", quality=95)
    (root / "notes.txt").write_text("not an identity folder")
    return root


class MeanColour:
    """A hand-made embedder: the mean colour of the image, centred. Identities differ by colour, so a correct
    protocol implementation must report a perfect clean score."""

    model_id = "test:mean-colour"

    def embed(self, images: list[Image.Image], species: Sequence[str] | None = None) -> np.ndarray:
        v = np.stack([np.asarray(im, dtype=np.float32).reshape(-1, 3).mean(0) for im in images]) - 115.0
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_injected_embedder_perfect_on_separable_identities(tmp_path: Path, settings: Settings) -> None:
    root = make_identities(tmp_path / "ids")
    out = evaluate_with(settings, str(root), embedder_builder=lambda s: MeanColour(), degrade=True, batch_size=4)
    assert out["n_images"] == 15 and out["n_identities"] == 5 and out["model"] == "test:mean-colour"
    assert out["top1"] == out["top5"] == out["map"] == out["auc"] == 1.0 and out["eer"] == 0.0
    for k in ("top1", "top5", "map", "eer", "auc"):
        assert 0.0 <= out[f"degraded_{k}"] <= 1.0
    # low light and blur shift the mean colour: degraded queries are measurably harder, never better
    assert out["degraded_map"] <= out["map"]
    assert out["pairs_same"] == 5 * 3 and out["pairs_different"] == 105 - 15


def test_limit_takes_whole_identities(tmp_path: Path) -> None:
    root = make_identities(tmp_path / "ids")
    paths, labels, names = list_identity_images(root, limit=7)
    assert len(paths) == 6 and names == ["0", "1"] and labels.tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(HomewardError, match="not a folder"):
        list_identity_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HomewardError, match="no images"):
        list_identity_images(tmp_path / "empty")


def test_degradations_are_seeded() -> None:
    rng = np.random.default_rng(1)
    im = Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    a, b, c = degrade(im, 7), degrade(im, 7), degrade(im, 8)
    assert a.size == im.size and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert np.asarray(a, dtype=float).mean() < np.asarray(im, dtype=float).mean()  # low light darkens


@pytest.mark.slow
def test_cli_eval_with_tiny_profile(tmp_path: Path, settings: Settings, capsys: pytest.CaptureFixture) -> None:
    root = make_identities(tmp_path / "ids", per_identity=2)
    code = main(["eval", str(root), "--data-dir", settings.data_dir, "--set", "enrich.profile=tiny",
                 "--batch-size", "4"])  # fmt: skip
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["n_images"] == 10 and out["n_identities"] == 5
    assert out["model"].startswith("timm:test_efficientnet")
    for k in ("top1", "top5", "map", "eer", "auc"):
        assert 0.0 <= out[k] <= 1.0
    assert "degraded_top1" not in out
    # same run, same figures: the protocol is deterministic
    assert (
        evaluate(settings.with_overrides({"enrich": {"profile": "tiny"}}), str(root), batch_size=4)["map"] == out["map"]
    )


class LeftHalf:
    """A hand-made detector: a dog in the left half of every image wider than it is tall, nothing in the others."""

    model_id = "test:left-half"

    def detect(self, images: list[Image.Image]) -> list[list[Detection]]:
        return [
            [Detection("dog", 0.9, (0.0, 0.0, im.width / 2, float(im.height)))] if im.width > im.height else []
            for im in images
        ]


def test_photos_are_detected_and_cropped_as_enrichment_does(tmp_path: Path, settings: Settings) -> None:
    """Identity colours fill the left half; the right half is noise in colours shared across identities. Only the
    shared crop rule's crop of the detected animal separates them perfectly; whole images do not."""
    rng = np.random.default_rng(3)
    root = tmp_path / "ids"
    for ident, colour in enumerate(COLOURS):
        (root / f"a{ident}").mkdir(parents=True)
        for n in range(3):
            arr = np.zeros((64, 128, 3), np.uint8)
            arr[:, :64] = np.clip(np.array(colour) + rng.normal(0, 8, (64, 64, 3)), 0, 255)
            arr[:, 64:] = rng.integers(0, 255, 3) if n < 2 else rng.integers(0, 255, (64, 64, 3))
            Image.fromarray(arr).save(root / f"a{ident}" / f"{n}.png")
    Image.fromarray(np.full((80, 40, 3), 128, np.uint8)).save(root / "a0" / "tall.png")  # no animal detected
    (tmp_path / "manifest.csv").write_text(
        "identity,species\n" + "".join(f"a{i},{'cat' if i < 2 else 'dog'}\n" for i in range(len(COLOURS)))
    )

    whole = evaluate_with(settings, str(root), embedder_builder=lambda s: MeanColour(), batch_size=4)
    cropped = evaluate_with(
        settings, str(root), embedder_builder=lambda s: MeanColour(), detector_builder=lambda s: LeftHalf(),
        degrade=True, batch_size=4,
    )  # fmt: skip
    assert "detected_share" not in whole and whole["detector"] is None
    assert cropped["detector"] == "test:left-half" and cropped["detected_share"] == round(15 / 16, 4)
    assert 0 < cropped["degraded_detected_share"] <= 1
    assert cropped["map"] > whole["map"] and cropped["top1"] == 15 / 16  # the undetected photo is the one miss
    assert set(cropped["by_species"]) == {"cat", "dog"}
    assert cropped["by_species"]["dog"]["n_identities"] == 3 and cropped["by_species"]["dog"]["top1"] == 1.0
    assert cropped["by_species"]["cat"]["n_images"] == 7 and "degraded_top1" in cropped["by_species"]["cat"]


def test_crops_tool_cuts_every_photo_once_and_keeps_the_manifest(tmp_path: Path, settings: Settings) -> None:
    from engine.train.crops import crop_folders

    root = make_identities(tmp_path / "src" / "images", per_identity=2)
    (tmp_path / "src" / "manifest.csv").write_text("identity,species\n0,dog\n1,cat\n")
    tiny = settings.with_overrides({"enrich": {"profile": "tiny"}})
    out = tmp_path / "cut"
    first = crop_folders(tiny, str(root), str(out))
    assert first["photos"] == first["cut_now"] == 10 and first["detector"].startswith("yolo:")
    cut = sorted(p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*.jpg"))
    assert cut == sorted(f"{i}/{i}.{n}.jpg" for i in range(5) for n in range(2))
    assert (out / "manifest.csv").read_text().startswith("identity,species")
    assert json.loads((out / "crops.json").read_text())["undetected_now"] == first["undetected_now"]
    assert crop_folders(tiny, str(root), str(out))["cut_now"] == 0  # a rerun skips what is cut
    with pytest.raises(HomewardError, match="must not be"):
        crop_folders(tiny, str(root), str(tmp_path / "src"))
