"""Petfinder API v2 parser against the real recorded responses (fixtures/petfinder_api/bodies, INDEX.json)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from crawlers.parsers import ParseError, petfinder
from engine.normalize import normalize_listing


@pytest.fixture(scope="module")
def bodies(shared_dir: Path) -> Path:
    return shared_dir / "data" / "fixtures" / "petfinder_api" / "bodies"


@pytest.fixture(scope="module")
def index(bodies: Path) -> list[dict[str, Any]]:
    return json.loads((bodies / "INDEX.json").read_text(encoding="utf-8"))


def _recorded_animals(bodies: Path, index: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Every animal object in every recorded v2 animals response, by id (the same animal recurs across pages)."""
    seen: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in index:
        if not entry["file"].startswith("animals_") or entry["status"] != 200:
            continue
        data = json.loads((bodies / entry["file"]).read_text(encoding="utf-8"))
        for animal in data.get("animals") or [data.get("animal")]:
            seen[str(animal["id"])].append(animal)
    return seen


def test_all_recorded_animals_parse(bodies: Path, index: list[dict[str, Any]]) -> None:
    recorded = _recorded_animals(bodies, index)
    parsed: dict[str, dict[str, Any]] = {}
    for entry in index:
        if not entry["file"].startswith("animals_") or entry["status"] != 200:
            continue
        text = (bodies / entry["file"]).read_text(encoding="utf-8")
        if petfinder.is_animal_url(entry["uri"]):
            items = [petfinder.parse_card(text, entry["uri"])]
        else:
            items, _ = petfinder.parse_animals(text, entry["uri"])
        for raw in items:
            parsed[raw["source_id"]] = raw
    assert len(parsed) == len(recorded) == 156
    with_photos = with_text = 0
    for sid, raw in parsed.items():
        animal = recorded[sid][-1]
        norm = normalize_listing(raw)
        assert norm["kind"] == "adoptable" and norm["status"] == "active"
        assert norm["species"] in ("dog", "cat")
        assert norm["sex"] in ("male", "female")
        assert norm["age_group"] in ("baby", "young", "adult", "senior")
        assert norm["size"] in ("small", "medium", "large", "xlarge")
        assert raw["shelter_id"] == animal["organization_id"]
        assert raw["name"] and raw["url"].startswith("https://www.petfinder.com/")
        assert norm["posted_at"] is not None and norm["posted_at"].tzinfo is not None
        # every recorded photo, full size; an animal recorded without photos says so instead of passing silently
        assert len(raw["photo_urls"]) == len(animal["photos"])
        assert all(u.startswith("https://") for u in raw["photo_urls"])
        if animal["photos"]:
            with_photos += 1
            assert raw["photo_urls"][0] == animal["photos"][0]["full"]
        else:
            assert "photo_urls: no photos" in raw["parse_warnings"]
        if animal["description"]:
            with_text += 1
            assert animal["description"].split()[0] in raw["description"]
        else:
            assert "description: no description" in raw["parse_warnings"]
        unexpected = [w for w in norm["parse_warnings"] if not w.startswith(("photo_urls", "description", "colors"))]
        assert unexpected == [], (sid, unexpected)
    # the recordings hold 127 animals with photos and 86 with a description (the rest were listed without)
    assert (with_photos, with_text) == (127, 86)


def test_colours_breed_and_contact(bodies: Path) -> None:
    items, _ = petfinder.parse_animals((bodies / "animals_00.json").read_text(encoding="utf-8"))
    junie = next(r for r in items if r["source_id"] == "73864451")
    norm = normalize_listing(junie)
    assert junie["breed"] == "Border Collie Mix"
    assert norm["colors"] == ["black", "white", "cream"]
    assert (norm["species"], norm["sex"], norm["age_group"], norm["size"]) == ("dog", "female", "adult", "medium")
    assert junie["contact"]  # shelter e-mail: the pipeline keeps only its hash
    assert junie["location_text"] == "De Pere, WI, 54115, US"


def test_pagination_links(bodies: Path, index: list[dict[str, Any]]) -> None:
    for entry in index:
        if entry["file"] in ("animals_02.json", "animals_03.json", "organizations_02.json"):
            data = (bodies / entry["file"]).read_text(encoding="utf-8")
            parse = petfinder.parse_organizations if "organizations" in entry["file"] else petfinder.parse_animals
            _, pages = parse(data, entry["uri"])
            page = int(entry["uri"].rsplit("page=", 1)[1])
            assert pages == [
                entry["uri"].split("/v2/")[0] + f"/v2/{entry['file'].split('_')[0]}?limit=50&page={page + 1}"
            ]


def test_organizations_to_shelters(bodies: Path, index: list[dict[str, Any]]) -> None:
    shelters: dict[str, dict[str, Any]] = {}
    for entry in index:
        if entry["file"].startswith("organizations_") and entry["status"] == 200:
            records, _ = petfinder.parse_organizations(
                (bodies / entry["file"]).read_text(encoding="utf-8"), entry["uri"]
            )
            for rec in records:
                shelters[rec["shelter_id"]] = rec
    assert len(shelters) == 150
    assert shelters["CA2729"]["shelter_name"] == "Happier Tails Rescue, Inc."
    assert shelters["CA2729"]["location_text"] == "Yorba Linda, CA, 92887, US"
    assert all(s["shelter_name"] and s["url"] for s in shelters.values())


def test_token_response(bodies: Path) -> None:
    token, expires = petfinder.parse_token((bodies / "authenticate_00.json").read_text(encoding="utf-8"))
    assert token == "REDACTED" and expires == 3600
    with pytest.raises(ParseError):
        petfinder.parse_token('{"token_type": "Bearer"}')


def test_recorded_500_error_body_is_a_parse_error(bodies: Path, index: list[dict[str, Any]]) -> None:
    (entry,) = [e for e in index if e["status"] == 500 and e["file"].startswith("animals_")]
    with pytest.raises(ParseError):
        petfinder.parse_animals((bodies / entry["file"]).read_text(encoding="utf-8"), entry["uri"])


@pytest.mark.parametrize(
    "text", ["", "not json", '{"animals": [', "[]", '{"something": 1}', '{"animal": {"name": "x"}}']
)
def test_garbage_and_truncated_json(text: str) -> None:
    with pytest.raises(ParseError):
        petfinder.parse_card(text, petfinder.API)
    with pytest.raises(ParseError):
        petfinder.parse_organizations(text, petfinder.API)


def test_truncated_real_body_raises(bodies: Path) -> None:
    text = (bodies / "animals_02.json").read_text(encoding="utf-8")
    for frac in (0.1, 0.5, 0.99):
        with pytest.raises(ParseError, match="truncated"):
            petfinder.parse_animals(text[: int(len(text) * frac)])
