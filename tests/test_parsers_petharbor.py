"""PetHarbor stray-intake page (fixtures/petharbor), cross-checked with the same animal's Austin open-data records
in cat.md."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from crawlers.parsers import ParseError, petharbor
from engine.normalize import normalize_colors, normalize_listing, normalize_sex, normalize_species, parse_when

PAGE_URL = "http://www.petharbor.com/pet.asp?uaid=ASTN.A726220"


@pytest.fixture(scope="module")
def root(shared_dir: Path) -> Path:
    return shared_dir / "data" / "fixtures" / "petharbor"


@pytest.fixture(scope="module")
def page(root: Path) -> str:
    return (root / "petharbor.html").read_bytes().decode("latin-1")  # the page declares ISO-8859-1


@pytest.fixture(scope="module")
def open_data(root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(intake record, found-pets record) from the JSON blocks in cat.md."""
    blocks = re.findall(r"```json\s*(.*?)```", (root / "cat.md").read_text(encoding="utf-8"), flags=re.S)
    intake, found = (json.loads(b)[0] for b in blocks)
    return intake, found


def test_intake_page_parses(page: str) -> None:
    raw = petharbor.parse_card(page, PAGE_URL)
    norm = normalize_listing(raw)
    assert raw["source_id"] == "ASTN.A726220"
    assert raw["url"] == PAGE_URL
    assert norm["kind"] == "shelter" and norm["status"] == "active"
    assert norm["species"] == "cat" and norm["sex"] == "female"
    assert norm["colors"] == ["brown", "tabby"]
    assert raw["breed"] == "Domestic Shorthair Mix"
    assert raw["age_text"] == "1 year and 6 months" and norm["age_group"] == "young"
    assert norm["event_date"].isoformat() == "2016-05-08"
    assert (raw["shelter_id"], raw["shelter_name"]) == ("ASTN", "Austin Animal Center")
    assert raw["photo_urls"] == ["http://www.petharbor.com/get_image.asp?RES=Detail&ID=A726220&LOCATION=ASTN"]
    assert raw["contact"] == "(512) 978-0500"
    assert norm["parse_warnings"] == []


def test_agrees_with_the_open_data_record(page: str, open_data: tuple[dict[str, Any], dict[str, Any]]) -> None:
    intake, found = open_data
    raw = petharbor.parse_card(page, PAGE_URL)
    norm = normalize_listing(raw)
    for record in (intake, found):
        assert raw["source_id"].endswith("." + record["animal_id"])
        assert norm["species"] == normalize_species(record.get("animal_type") or record.get("type"))
        assert raw["breed"] == (record.get("breed") or record.get("looks_like"))
        assert norm["colors"] == normalize_colors(record["color"])
        assert norm["sex"] == normalize_sex(record.get("sex_upon_intake") or record.get("sex"))
    assert norm["event_date"] == parse_when(intake["datetime"])[0].date()
    assert norm["event_date"] == parse_when(found["intake_date"])[0].date()
    assert found["image"]["url"] == raw["url"]
    # the page is newer than the intake: it says "1 year and 6 months" where intake said "1 year"; both are young
    assert normalize_listing({"source_id": "x", "age_text": intake["age_upon_intake"]})["age_group"] == "young"


def test_photo_on_the_page_is_the_saved_image(root: Path, page: str) -> None:
    raw = petharbor.parse_card(page, PAGE_URL)
    cache = (root / "chrome_cache.html").read_text(encoding="latin-1")
    assert raw["photo_urls"][0] in cache.replace("&amp;", "&")
    assert (root / "image.jpg").read_bytes()[:3] == b"\xff\xd8\xff"


def test_relative_photo_resolves_against_a_mirror(page: str) -> None:
    raw = petharbor.parse_card(page, "http://127.0.0.1:9999/pet.asp?uaid=ASTN.A726220")
    assert raw["photo_urls"] == ["http://127.0.0.1:9999/get_image.asp?RES=Detail&ID=A726220&LOCATION=ASTN"]


def test_results_page_links() -> None:
    # No results page was saved; this one follows PetHarbor's results.asp markup (links to pet.asp?uaid=…).
    html = """<html><body><table class="ResultsTable">
      <tr><td><a href="pet.asp?uaid=ASTN.A1">A1</a></td></tr>
      <tr><td><a href="pet.asp?uaid=ASTN.A2">A2</a></td><td><a href="pet.asp?uaid=ASTN.A2">photo</a></td></tr>
      </table><a href="results.asp?searchtype=LOST&page=2">Next Page</a></body></html>"""
    cards, pages = petharbor.parse_catalog(html, "http://www.petharbor.com/results.asp?searchtype=LOST")
    assert cards == ["http://www.petharbor.com/pet.asp?uaid=ASTN.A1", "http://www.petharbor.com/pet.asp?uaid=ASTN.A2"]
    assert pages == ["http://www.petharbor.com/results.asp?searchtype=LOST&page=2"]


@pytest.mark.parametrize("text", ["", "no markup at all", "<html><head><title>PetHarbor</title></head><body/></html>"])
def test_garbage_raises(text: str) -> None:
    with pytest.raises(ParseError):
        petharbor.parse_card(text, PAGE_URL)
    with pytest.raises(ParseError):
        petharbor.parse_catalog(text, "http://www.petharbor.com/results.asp")


def test_truncated_page_raises_or_warns(page: str) -> None:
    outcomes = set()
    for cut in range(200, len(page), 250):
        try:
            raw = petharbor.parse_card(page[:cut], PAGE_URL)
        except ParseError:
            outcomes.add("error")
            continue
        outcomes.add("parsed")
        complete = all(raw.get(k) for k in ("source_id", "species", "colors", "event_date", "photo_urls"))
        assert complete or raw.get("parse_warnings"), (cut, raw)
    assert outcomes == {"error", "parsed"}
