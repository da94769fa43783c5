"""pet911.ru parser against the real saved pages: every EXPECTED_VALUES entry, every page design, edge cases,
the 2020 JSON API, and garbage/truncated input."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from crawlers.parsers import ParseError, pet911
from engine.normalize import normalize_listing

DESIGNS = ("2021", "20220430", "20220628", "20240114")
#: A saved 2021 page whose markup characters (<, >, ", /) were stripped when it was dumped: real garbage.
TAG_STRIPPED = "2021/petCard_rf494610_no_author.html.dump"


@pytest.fixture(scope="module")
def root(shared_dir: Path) -> Path:
    return shared_dir / "data" / "fixtures" / "pet911"


def read(path: Path) -> str:
    return path.read_bytes().decode("utf-8")


def card_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "data").glob("*/petCard_*.dump") if not str(p).endswith(TAG_STRIPPED))


def parse(root: Path, rel: str) -> tuple[dict[str, Any], dict[str, Any]]:
    path = root / rel if rel.startswith("data/") else root / "data" / rel
    raw = pet911.parse_card(read(path), "https://pet911.ru/catalog")
    return raw, normalize_listing(raw)


# ------------------------------------------------------------------------------------------ ground truth


def _check(key: str, want: Any, raw: dict[str, Any], norm: dict[str, Any]) -> None:
    checks = {
        "card_id": lambda: raw["source_id"] == want,
        "species": lambda: norm["species"] == want,
        "event_type": lambda: norm["kind"] == want,
        "event_date": lambda: norm["event_date"].isoformat() == want,
        "author_name": lambda: raw.get("author_name") == want,
        "description": lambda: raw["description"] == want,
        "sex": lambda: norm["sex"] == want,
        "photo_count": lambda: len(raw["photo_urls"]) == want,
        "photos_include": lambda: set(want) <= set(raw["photo_urls"]),
        "address": lambda: raw["location_text"] == want,
        "lat": lambda: raw["lat"] == pytest.approx(want, abs=1e-8),
        "lon": lambda: raw["lon"] == pytest.approx(want, abs=1e-8),
    }
    assert key in checks, f"EXPECTED_VALUES has a key this test does not check: {key}"
    assert checks[key](), f"{key}: expected {want!r}, raw={raw.get(key)!r}"


def test_every_expected_value(root: Path) -> None:
    expected = json.loads((root / "EXPECTED_VALUES.json").read_text(encoding="utf-8"))
    checked = 0
    for rel, facts in expected.items():
        if rel.startswith("_"):
            continue
        if "catalog" in rel:
            cards, pages = pet911.parse_catalog(read(root / rel), "https://pet911.ru/catalog")
            assert len(cards) == facts["card_count"]
            assert facts["contains"]["url"] in cards
            assert facts["contains"]["id"] in {pet911.card_id_from_url(u) for u in cards}
            assert pages == ["https://pet911.ru/catalog/page-2"]
            checked += 3
            continue
        raw, norm = parse(root, rel)
        for key, want in facts.items():
            _check(key, want, raw, norm)
            checked += 1
    assert checked >= 20


# -------------------------------------------------------------------------------------- every page design


@pytest.mark.parametrize("design", DESIGNS)
def test_every_card_of_every_design_parses(root: Path, design: str) -> None:
    files = [p for p in card_files(root) if p.parent.name == design]
    assert files, design
    for path in files:
        raw = pet911.parse_card(read(path), "https://pet911.ru/")
        norm = normalize_listing(raw)
        name = path.name
        assert pet911.CARD_ID_RE.match(raw["source_id"]), name
        if "_r" in name.replace("petCard__", ""):
            assert raw["source_id"] in name, name
        assert norm["kind"] == ("lost" if raw["source_id"].startswith("rl") else "found"), name
        assert norm["species"] in ("dog", "cat"), name
        assert norm["event_date"] is not None and norm["posted_at"] is not None, name
        assert norm["posted_at"].tzinfo is not None
        assert raw["location_text"], name
        assert raw["lat"] and raw["lon"], name
        assert pet911.card_id_from_url(raw["url"]) == raw["source_id"], name
        if "no_photo" in name:
            assert raw["photo_urls"] == [], name
        else:
            assert raw["photo_urls"], name
            assert all(u.startswith("https://") for u in raw["photo_urls"]), name
        if "rf494611_no_photo" in name:  # the finder wrote nothing: a warning, not an empty "ok"
            assert raw["description"] is None
            assert "description: no description" in raw["parse_warnings"]
        else:
            assert raw["description"], name
        allowed = ("colors", "description: no description")
        assert all(w.startswith(allowed) for w in norm["parse_warnings"]), (name, norm["parse_warnings"])


@pytest.mark.parametrize(
    ("rel", "species", "sex", "photos"),
    [
        ("2021/petCard_rf492825.html.dump", "dog", "male", 3),
        ("20220430/petCard_rl476712_lost_is_found.html.dump", "cat", "male", 4),
        ("20220628/petCard_rl518787.html.dump", "cat", "female", 7),
        ("20240114/petCard_rf777439_issue_52.html.dump", "dog", "male", 2),
    ],
)
def test_one_card_per_design_in_detail(root: Path, rel: str, species: str, sex: str, photos: int) -> None:
    raw, norm = parse(root, rel)
    assert raw["source_id"] and norm["kind"] in ("lost", "found")
    assert norm["species"] == species and norm["sex"] == sex
    assert len(raw["photo_urls"]) == photos
    assert len(raw["description"]) > 20


def test_2021_photos_are_full_size_absolute(root: Path) -> None:
    raw, _ = parse(root, "2021/petCard_rf492825.html.dump")
    assert raw["photo_urls"][0] == "https://pet911.ru/upload/Pet_163492926461730a70237913.59627594.jpeg"
    assert raw["author_name"] == "Екатерина"
    assert raw["event_date"] == "2021-08-12" and raw["posted_at"].startswith("2021-10-22")


def test_2024_breed_and_colour_phrase(root: Path) -> None:
    raw, norm = parse(root, "20240114/petCard_rf777439_issue_52.html.dump")
    assert raw["breed"] == "Хаски"
    assert norm["colors"] == ["black", "white"]  # "Окрас черно белый" in the description
    raw, norm = parse(root, "20240114/petCard_rl537378_lost_cat_male.html.dump")
    assert norm["colors"] == ["red"] and norm["sex"] == "male" and norm["species"] == "cat"


# ------------------------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("design", ["2021", "20220430", "20220628"])
def test_lost_then_found_is_resolved(root: Path, design: str) -> None:
    (path,) = (root / "data" / design).glob("petCard_*_lost_is_found.html.dump")
    raw = pet911.parse_card(read(path), "https://pet911.ru/")
    norm = normalize_listing(raw)
    assert norm["kind"] == "lost"
    assert norm["status"] == "resolved"
    assert norm["parse_warnings"] == []


def test_active_cards_stay_active(root: Path) -> None:
    for rel in ("20240114/petCard_rl518787.html.dump", "2021/petCard_rf492825.html.dump"):
        assert parse(root, rel)[1]["status"] == "active"


def test_found_pet_rehomed_is_resolved(root: Path) -> None:
    for rel in ("20220430/petCard_rf494610_no_author.html.dump", "20240114/petCard_rf494610_no_author.html.dump"):
        assert parse(root, rel)[1]["status"] == "resolved"


@pytest.mark.parametrize("design", DESIGNS)
def test_no_photo_no_author_no_sex(root: Path, design: str) -> None:
    folder = root / "data" / design
    for path in folder.glob("petCard_*no_photo*.dump"):
        assert pet911.parse_card(read(path), "https://pet911.ru/")["photo_urls"] == []
    for path in folder.glob("petCard_*no_author*.dump"):
        if str(path).endswith(TAG_STRIPPED):
            continue
        assert pet911.parse_card(read(path), "https://pet911.ru/").get("author_name") is None
    for path in folder.glob("petCard_*no_sex*.dump"):
        raw = pet911.parse_card(read(path), "https://pet911.ru/")
        assert normalize_listing(raw)["sex"] == "unknown"


def test_mojibake_2021_pages_are_repaired(root: Path) -> None:
    raw, norm = parse(root, "2021/petCard_rl476712_lost_is_found.html.dump")
    assert "Ð" not in (raw["description"] or "")
    assert raw["description"].startswith("Сломанных хвостик")
    assert norm["species"] == "cat" and norm["status"] == "resolved"


def test_tag_stripped_page_is_a_parse_error(root: Path) -> None:
    with pytest.raises(ParseError, match="no HTML markup"):
        pet911.parse_card(read(root / "data" / TAG_STRIPPED), "https://pet911.ru/")


# ---------------------------------------------------------------------------------------------- catalogs


@pytest.mark.parametrize(
    ("rel", "next_page"),
    [
        ("2021/catalog.html.dump", "https://pet911.ru/catalog?page=2"),
        ("20220430/catalog.html.dump", "https://pet911.ru/catalog?page=2"),
        ("20220628/catalog.html.dump", "https://pet911.ru/catalog?page=2"),
        ("20240114/catalog.html.dump", "https://pet911.ru/catalog/page-2"),
    ],
)
def test_catalog_pages(root: Path, rel: str, next_page: str) -> None:
    cards, pages = pet911.parse_catalog(read(root / "data" / rel), "https://pet911.ru/catalog")
    assert len(cards) == 20 and len(set(cards)) == 20
    assert all(pet911.is_card_url(u) and u.startswith("https://pet911.ru/") for u in cards)
    assert pages == [next_page]


def test_2021_search_results_page(root: Path) -> None:
    cards, pages = pet911.parse_catalog(read(root / "data/2021/searchResults.html.dump"), "https://pet911.ru/catalog")
    assert len(cards) == 20
    assert "rl476712" in {pet911.card_id_from_url(u) for u in cards}
    assert len(pages) == 1 and pages[0].endswith("page=2")


def test_catalog_links_resolve_against_a_mirror(root: Path) -> None:
    cards, pages = pet911.parse_catalog(read(root / "data/20240114/catalog.html.dump"), "http://127.0.0.1:8765/catalog")
    assert "http://127.0.0.1:8765/moskva/lost/cat/rl784284" in cards
    assert pages == ["https://pet911.ru/catalog/page-2"]  # the page links absolutely; the spider rebases it


# ------------------------------------------------------------------------------------------------ 2020 API


def test_api_card(root: Path) -> None:
    raw = pet911.parse_card(read(root.parent / "pet911_api/2020/petCard.json"), "https://pet911.ru/api/view-pet")
    norm = normalize_listing(raw)
    assert raw["source_id"] == "rl433516"
    assert norm["kind"] == "lost" and norm["species"] == "cat" and norm["sex"] == "male"
    assert raw["photo_urls"] == ["https://pet911.ru/images/Pet_1595770502.394647.jpg"]
    assert raw["lat"] == pytest.approx(56.523339) and raw["lon"] == pytest.approx(85.074015)
    assert norm["event_date"].isoformat() == "2020-07-24"
    assert raw["contact"]  # the (masked) phone: the pipeline hashes it
    assert "Петя" in raw["description"]


def test_api_card_list(root: Path) -> None:
    text = read(root.parent / "pet911_api/2020/petCards.json")
    cards = pet911.parse_api_cards(text, "https://pet911.ru/api/pets")
    assert len(cards) == 20
    for raw in cards:
        norm = normalize_listing(raw)
        assert norm["kind"] == ("lost" if raw["source_id"].startswith("rl") else "found")
        assert norm["species"] in ("dog", "cat")
        assert norm["event_date"] is not None and raw["description"]
    first = cards[0]
    assert first["source_id"] == "rl448775" and normalize_listing(first)["sex"] == "female"
    assert first["event_date"] == "2020-11-26"  # Moscow midnight, as the post says ("видели 26.11.2020")
    assert len(first["photo_urls"]) == 5
    with pytest.raises(ParseError, match="card list"):
        pet911.parse_card(text, "https://pet911.ru/api/pets")


# --------------------------------------------------------------------------------------- garbage, truncation


def _not_silently_empty(result: dict[str, Any]) -> None:
    complete = all(result.get(k) for k in ("source_id", "species", "description", "event_date"))
    assert complete or result.get("parse_warnings"), result


@pytest.mark.parametrize(
    "text",
    ["", "   \n", "garbage \x00\x01 not html", "<html><body><p>Hello</p></body></html>", '{"pet": ', "[1, 2"],
)
def test_garbage_raises_parse_error(text: str) -> None:
    with pytest.raises(ParseError):
        pet911.parse_card(text, "https://pet911.ru/")


def test_garbage_catalog_raises() -> None:
    with pytest.raises(ParseError):
        pet911.parse_catalog("<html><body>nothing</body></html>", "https://pet911.ru/catalog")
    with pytest.raises(ParseError):
        pet911.parse_catalog("", "https://pet911.ru/catalog")


@pytest.mark.parametrize(
    "rel",
    ["2021/petCard_rf492825.html.dump", "20220628/petCard_rl518787.html.dump", "20240114/petCard_rf518209.html.dump"],
)
def test_truncated_pages_raise_or_warn(root: Path, rel: str) -> None:
    text = read(root / "data" / rel)
    outcomes = set()
    for frac in (0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95):
        cut = text[: int(len(text) * frac)]
        try:
            result = pet911.parse_card(cut, "https://pet911.ru/x")
        except ParseError:
            outcomes.add("error")
            continue
        outcomes.add("parsed")
        _not_silently_empty(result)
    assert "error" in outcomes  # cut before the card block


@pytest.mark.parametrize(
    ("rel", "card_id"),
    [
        ("2021/petCard_rf492825.html.dump", "rf492825"),
        ("20220430/petCard_rf494618_no_sex.html.dump", "rf494618"),
        ("20240114/petCard_rf518209.html.dump", "rf518209"),
    ],
)
def test_truncated_right_after_the_card_id_warns(root: Path, rel: str, card_id: str) -> None:
    text = read(root / "data" / rel)
    m = re.search(rf">\s*{card_id}\s*<", text)  # the id's own element, not a share link
    assert m is not None
    cut = text[: m.end() - 1]
    raw = pet911.parse_card(cut, "https://pet911.ru/x")
    assert raw["source_id"] == card_id
    assert any(w.startswith("event_date") for w in raw["parse_warnings"])


def test_catalog_tile_fingerprints_ignore_what_changes_by_itself(root: Path) -> None:
    html = read(root / "data/2021/catalog.html.dump")
    tiles = pet911.catalog_tiles(html, "https://pet911.ru/catalog")
    cards, _ = pet911.parse_catalog(html, "https://pet911.ru/catalog")
    assert set(tiles) == set(cards)
    for text in tiles.values():
        assert "назад" not in text and " км" not in text  # "(2 дня назад)", "3062.4 км" change by themselves
    # a status badge appearing on a tile (the owner was found) changes that tile's fingerprint, and only that one
    marked = html.replace("3062.4 км </span>\n</div>", "3062.4 км </span>\n</div><span>Хозяин найден</span>", 1)
    changed = pet911.catalog_tiles(marked, "https://pet911.ru/catalog")
    assert sum(changed[u] != tiles[u] for u in tiles) == 1
    assert "Хозяин найден" in tiles[next(u for u in tiles if "rf494610" in u)]  # already marked on the saved page
