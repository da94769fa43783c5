"""``homeward demo`` end to end: real HTTP mirror, Scrapy, Ray, models, LanceDB and DuckDB on disk.

The site generator and the summary's figures are checked fast on their own; the two end-to-end runs are slow.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
from parsel import Selector
from PIL import Image

from crawlers.spiders.configurable import listing_from_jsonld
from engine.config import Settings
from engine.normalize import normalize_listing
from engine.storage import LanceStore, RunsDB
from ray_jobs.demo import demo, detected_shares
from ray_jobs.demo_site import DemoSite, DemoSiteError, build_demo_site, manifest_species

# identity folder -> (species in the manifest, photos); the names say the species, which the site must not repeat
IDENTITIES = {
    "cat-tom": ("Cat", 5),
    "cat-kitty": ("cat", 2),
    "dog-rex": ("dog", 4),
    "dog-lassie": ("Dog", 3),
    "dog-solo": ("dog", 1),
    "fox-unlisted": (None, 3),
}


def _colour(n: int) -> tuple[int, int, int]:
    # far apart in RGB, so a re-encoded JPEG still says which source image it was
    return (20 + 50 * (n % 5), 20 + 50 * (n // 5 % 5), 20 + 50 * (n // 25))


def _identity_folder(root: Path, identities: dict[str, tuple[str | None, int]] = IDENTITIES) -> dict[tuple, str]:
    """Write ``root/images/<identity>/<n>.jpg`` (one flat colour each) and ``root/manifest.csv``; colour → file."""
    colours: dict[tuple, str] = {}
    rows = []
    for identity, (species, count) in identities.items():
        (root / "images" / identity).mkdir(parents=True)
        for n in range(count):
            colour = _colour(len(colours))
            Image.new("RGB", (64, 48), colour).save(root / "images" / identity / f"{n}.jpg", quality=95)
            colours[colour] = f"{identity}/{n}.jpg"
            if species:
                rows.append({"identity": identity, "species": species, "path": f"images/{identity}/{n}.jpg"})
    with (root / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, ["identity", "species", "path"])
        writer.writeheader()
        writer.writerows(rows)
    return colours


def _source_file(photo: Path, colours: dict[tuple, str]) -> str:
    with Image.open(photo) as img:
        got = img.convert("RGB").getpixel((32, 24))
    nearest = min(colours, key=lambda c: sum((a - b) ** 2 for a, b in zip(c, got, strict=True)))
    return colours[nearest]


def _posts(site: DemoSite) -> dict[str, tuple[dict, str]]:
    """source_id → (the card's JSON-LD object, the card's HTML)."""
    posts = {}
    for page in (site.root / "pets").glob("*.html"):
        text = page.read_text(encoding="utf-8")
        obj = json.loads(Selector(text).css('script[type="application/ld+json"]::text').get())
        posts[obj["identifier"]] = (obj, text)
    return posts


def test_site_from_identity_folder(tmp_path: Path) -> None:
    colours = _identity_folder(tmp_path)
    site = build_demo_site(tmp_path / "site", reunions=3, distractors=6, images_dir=tmp_path / "images", seed=3)
    posts = _posts(site)
    assert len(site.reunions) == 3 and site.posts == len(posts) == len(site.post_identity)
    reunion_identities = {r.identity for r in site.reunions}
    assert "dog-solo" not in reunion_identities, "an identity with one photo cannot be seen twice"

    files: dict[str, list[str]] = {}
    for source_id, (obj, text) in posts.items():
        photos = [site.root / url.lstrip("/") for url in obj["image"]]
        assert 1 <= len(photos) <= 3 and len(photos) == site.post_photos[source_id]
        files[source_id] = [_source_file(p, colours) for p in photos]
        assert {f.split("/")[0] for f in files[source_id]} == {site.post_identity[source_id]}
        # the true species stays off the site: no species field, no species word, no folder name
        raw = listing_from_jsonld(obj, f"http://127.0.0.1/pets/{source_id}.html")
        assert "species" not in raw and normalize_listing(raw)["species"] == "unknown"
        assert not re.search(r"\b(dogs?|cats?|pupp(y|ies)|kittens?|fox)\b", text, re.I), text
        assert site.post_identity[source_id] not in text
    every_file = [f for fs in files.values() for f in fs]
    assert len(every_file) == len(set(every_file)), "no photo is posted twice"
    for reunion in site.reunions:
        lost, found = files[reunion.lost_source_id], files[reunion.found_source_id]
        assert not set(lost) & set(found) and posts[reunion.lost_source_id][0]["kind"] == "lost"
    distractors = [
        s for s in posts if s not in {x for r in site.reunions for x in (r.lost_source_id, r.found_source_id)}
    ]
    assert {site.post_identity[s] for s in distractors}.isdisjoint(reunion_identities)
    assert sum(len(files[s]) for s in distractors) <= 3 * len(distractors)

    assert site.species == {
        "cat-tom": "cat",
        "cat-kitty": "cat",
        "dog-rex": "dog",
        "dog-lassie": "dog",
        "dog-solo": "dog",
    }
    assert site.species_of("fox-unlisted") == "unknown"
    stats = site.photos_per_post()
    assert stats["min"] >= 1 and stats["max"] <= 3 and sum(stats["posts_with"].values()) == site.posts
    assert sum(int(n) * c for n, c in stats["posts_with"].items()) == len(every_file)


def test_a_small_folder_reuses_distractor_animals_without_unplanted_reunions(tmp_path: Path) -> None:
    _identity_folder(tmp_path)
    site = build_demo_site(tmp_path / "site", reunions=2, distractors=30, images_dir=tmp_path / "images", seed=5)
    kinds: dict[str, set[str]] = {}
    for source_id, (obj, _) in _posts(site).items():
        kinds.setdefault(site.post_identity[source_id], set()).add(obj["kind"])
    planted = {r.identity for r in site.reunions}
    assert all(len(k) == 1 for identity, k in kinds.items() if identity not in planted)
    # 18 photos: the rest after the reunions fill fewer than 30 distractors, and the site says so
    assert site.posts - 4 < 30 and any("distractors of 30" in w for w in site.warnings)


def test_distractors_from_a_folder_of_other_animals(tmp_path: Path) -> None:
    """``distractor_photos``: every image under the folder (any depth) is one other animal with one post; the
    reunions still come from the identity folder, and a folder overlapping it is refused."""
    colours = _identity_folder(tmp_path / "ids", {"a": ("dog", 3), "b": ("cat", 2), "solo": ("dog", 1)})
    others = tmp_path / "others"
    for n, sub in enumerate(["cat", "cat", "dog", "dog/deeper", "dog"]):
        (others / sub).mkdir(parents=True, exist_ok=True)
        colour = _colour(50 + n)
        Image.new("RGB", (64, 48), colour).save(others / sub / f"{n}.jpg", quality=95)
        colours[colour] = f"other/{n}"
    (others / "notes.txt").write_text("not a photo")
    site = build_demo_site(tmp_path / "site", reunions=2, distractors=4, images_dir=tmp_path / "ids" / "images",
                           distractor_photos=others, seed=2)  # fmt: skip
    planted = {x for r in site.reunions for x in (r.lost_source_id, r.found_source_id)}
    assert {r.identity for r in site.reunions} == {"a", "b"} and site.posts == 4 + 4
    for source_id, (obj, _) in _posts(site).items():
        files = [_source_file(site.root / url.lstrip("/"), colours) for url in obj["image"]]
        if source_id in planted:
            assert all(not f.startswith("other/") for f in files)
        else:  # one photo of one other animal, never the identity folder's leftovers ("solo", a's third photo)
            assert len(files) == 1 and files[0].startswith("other/")
            assert site.post_identity[source_id].startswith("other:")
    with pytest.raises(DemoSiteError, match="overlap"):
        build_demo_site(tmp_path / "site", images_dir=tmp_path / "ids" / "images", distractor_photos=tmp_path / "ids")
    (tmp_path / "empty").mkdir()
    for folder, message in ((tmp_path / "empty", "holds no images"), (tmp_path / "none", "not a directory")):
        with pytest.raises(DemoSiteError, match=message):
            build_demo_site(tmp_path / "site", images_dir=tmp_path / "ids" / "images", distractor_photos=folder)


def test_unreadable_images_are_skipped_and_named(tmp_path: Path) -> None:
    _identity_folder(tmp_path, {"a": ("dog", 2), "b": ("dog", 2), "c": ("cat", 2)})
    (tmp_path / "images" / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    site = build_demo_site(tmp_path / "site", reunions=3, distractors=0, images_dir=tmp_path / "images", seed=1)
    assert len(site.reunions) == 3 and site.posts == 6
    assert any("broken.jpg" in w for w in site.warnings)


@pytest.mark.parametrize(
    ("identities", "message"),
    [({}, "not a directory"), ({"a": ("dog", 1), "b": ("cat", 1)}, "no identity folder with two or more images")],
)
def test_a_folder_without_pairs_is_refused(tmp_path: Path, identities: dict, message: str) -> None:
    if identities:
        _identity_folder(tmp_path, identities)
    with pytest.raises(DemoSiteError, match=message):
        build_demo_site(tmp_path / "site", reunions=2, distractors=2, images_dir=tmp_path / "images")


def test_manifest_species_columns(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    assert manifest_species(tmp_path / "images") == {}, "no manifest: every species unknown"
    (tmp_path / "manifest.csv").write_text("identity,path,sha1\n0,images/0/0.0.jpg,abc\n")  # DogFaceNet's columns
    assert manifest_species(tmp_path / "images") == {}
    (tmp_path / "manifest.csv").write_text("path,species\nimages/0/0.0.jpg,dog\n")
    with pytest.raises(DemoSiteError, match="no 'identity' column"):
        manifest_species(tmp_path / "images")


def test_detected_shares_overall_and_per_species() -> None:
    total, by_species = detected_shares(
        ok_photos={"p1", "p2", "p3", "p4"},
        detected={"p1", "p3", "gone"},
        post_photos={"l1": ["p1", "p2"], "f1": ["p3"], "f2": ["p4", "failed"]},
        post_species={"l1": "dog", "f1": "cat", "f2": "cat"},
    )
    assert total == 0.5 and by_species == {"cat": 0.5, "dog": 0.5}
    assert detected_shares(set(), set(), {}, {}) == (None, {})


def test_demo_refuses_a_missing_photos_folder(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(DemoSiteError, match="not a directory"):
        demo(settings, photos=str(tmp_path / "nowhere"))


def _check_stores(settings: Settings, summary: dict) -> None:
    lance = LanceStore(settings.lance)
    posts = summary["crawl"]["items"]
    photos = sum(int(n) * count for n, count in summary["photos_per_post"]["posts_with"].items())
    assert lance.count("listings") == posts == summary["listings"]
    assert lance.count("photos", "status = 'ok'") == summary["photos"] == photos
    assert lance.count("detections") >= photos, "every photo yields a detection (or a full-frame fallback)"
    assert 0 <= summary["detected_share"] <= 1
    db = RunsDB(settings.duckdb)
    for table in ("crawl_runs", "enrich_runs", "match_runs"):
        assert db.query(f"SELECT count(*) FROM {table} WHERE status IN ('ok', 'published')")[0][0] == 1, table
    assert summary["matches"] == db.query("SELECT count(*) FROM matches")[0][0] > 0


@pytest.mark.slow
def test_demo_finds_planted_reunions_in_real_photos(
    settings: Settings, shared_dir: Path, tmp_path: Path, ray_local: None
) -> None:
    # --photos on a folder of 18 DogFaceNet identities with a manifest, as `--photos ../shared/data/realpets/images`
    source = shared_dir / "data" / "dogfacenet" / "images"
    identities = sorted(p.name for p in source.iterdir())[:18]
    for identity in identities:
        shutil.copytree(source / identity, tmp_path / "pets" / "images" / identity)
    (tmp_path / "pets" / "manifest.csv").write_text("identity,species\n" + "".join(f"{i},dog\n" for i in identities))

    summary = demo(settings, photos=str(tmp_path / "pets" / "images"), reunions=6, distractors=12)
    assert summary["profile"] == "cpu" and summary["photos_dir"] == str(tmp_path / "pets" / "images")
    _check_stores(settings, summary)
    assert summary["planted_reunions"] == 6
    assert summary["reunions_top5"] == 6
    assert summary["reunions_rank1"] >= 5
    assert summary["photos_per_post"]["max"] <= 3 and summary["photos"] > summary["listings"]
    dogs = summary["by_species"]["dog"]
    assert list(summary["by_species"]) == ["dog"] and dogs["detected_share"] == summary["detected_share"]
    assert (dogs["reunions"], dogs["rank1"], dogs["top5"]) == (6, summary["reunions_rank1"], 6)


@pytest.mark.slow
def test_demo_runs_without_the_team_data(settings: Settings, tmp_path: Path, ray_local: None) -> None:
    summary = demo(settings, reunions=3, distractors=4, shared_dir=str(tmp_path / "no-shared"))
    assert summary["profile"] == "tiny" and summary["photos_from"] == "synthetic" and summary["photos_dir"] is None
    _check_stores(settings, summary)
    assert summary["planted_reunions"] == 3 and summary["photos_per_post"]["max"] == 1
    assert 0 <= summary["reunions_rank1"] <= summary["reunions_top5"] <= 3
    assert list(summary["by_species"]) == ["unknown"] and summary["by_species"]["unknown"]["reunions"] == 3
