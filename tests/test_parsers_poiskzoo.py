"""poiskzoo.ru parser against the real saved pages: every EXPECTED_VALUES entry, the 52-card catalog, the parsed-card
JSON of the original crawler, and garbage/truncated input."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from crawlers.parsers import ParseError, poiskzoo
from engine.normalize import normalize_listing

#: The saved pages were taken on 2022-10-17 (UTC): "Сегодня"/"Вчера" are relative to it.
SAVED_AT = datetime(2022, 10, 17, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def root(shared_dir: Path) -> Path:
    return shared_dir / "data" / "fixtures" / "poiskzoo"


def _testdata(root: Path) -> Path:
    return root / "pkg" / "crawler" / "testdata"


def parse(root: Path, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    text = (_testdata(root) / name).read_text(encoding="utf-8")
    raw = poiskzoo.parse_card(text, f"https://poiskzoo.ru/{name.split('.')[0]}")
    return raw, normalize_listing(raw, now=SAVED_AT)


def _file_name(url: str) -> str:
    return urlsplit(url).path.rsplit("/", 1)[-1]


def _check(key: str, want: Any, raw: dict[str, Any], norm: dict[str, Any], page: str) -> None:
    if key == "species":
        if want in ("dog", "cat"):
            assert norm["species"] == want
        else:  # "bird": no such schema species; it becomes "other" and the raw word survives in a warning
            assert raw["species"] == want
            assert norm["species"] == "other"
            assert any(repr(want) in w for w in norm["parse_warnings"])
    elif key == "event_type":
        assert norm["kind"] == want
    elif key == "sex":
        assert raw["sex"] == want or norm["sex"] == want
        assert norm["sex"] == {"undefined": "unknown"}.get(want, want)
    elif key == "city":
        assert want in raw["location_text"]
    elif key == "address":
        assert raw["location_text"].endswith(want)
    elif key == "event_time_utc":
        want_dt = datetime.fromisoformat(want.replace("Z", "+00:00"))
        assert norm["posted_at"] == want_dt
        assert norm["event_date"] == want_dt.date()
    elif key == "comment":
        assert raw["description"] == want
    elif key == "photo_url":
        # The original crawler reports the site's *small* thumbnail with a cache-buster; we keep the largest image
        # of the same file. The thumbnail is the page's own 240w srcset entry.
        small = want.split("?")[0]
        assert re.search(rf"{re.escape(small)}\s+240w", page)
        assert _file_name(raw["photo_urls"][0]) == _file_name(small)
        assert "/images/board/medium/" in raw["photo_urls"][0]
    else:
        raise AssertionError(f"EXPECTED_VALUES has a key this test does not check: {key}")


def test_every_expected_value(root: Path) -> None:
    expected = json.loads((root / "EXPECTED_VALUES.json").read_text(encoding="utf-8"))
    checked = 0
    for name, facts in expected.items():
        if name.startswith("_"):
            continue
        page = (_testdata(root) / name).read_text(encoding="utf-8")
        if name == "catalog.html.dump":
            cards, _pages = poiskzoo.parse_catalog(page, "https://poiskzoo.ru/poteryashka")
            assert len(cards) == facts["card_url_count"]
            checked += 1
            continue
        raw, norm = parse(root, name)
        for key, want in facts.items():
            _check(key, want, raw, norm, page)
            checked += 1
    assert checked >= 30


def test_catalog(root: Path) -> None:
    page = (_testdata(root) / "catalog.html.dump").read_text(encoding="utf-8")
    cards, pages = poiskzoo.parse_catalog(page, "https://poiskzoo.ru/poteryashka")
    assert len(cards) == 52 == len(set(cards))
    assert "https://poiskzoo.ru/stavropol/najdena-sobaka/164833" in cards
    assert all(poiskzoo.is_card_url(u) for u in cards)
    assert pages == ["https://poiskzoo.ru/poteryashka/page-2"]


def test_every_card_parses_fully(root: Path) -> None:
    names = sorted(p.name for p in _testdata(root).glob("1*.html.dump"))
    assert len(names) == 8
    for name in names:
        raw, norm = parse(root, name)
        assert raw["source_id"] == name.split(".")[0]
        assert raw["url"].endswith("/" + raw["source_id"])
        assert norm["kind"] in ("lost", "found")
        assert norm["species"] in ("dog", "cat", "other")
        assert raw["description"] and raw["location_text"]
        assert len(raw["photo_urls"]) == 1 and raw["photo_urls"][0].startswith("https://poiskzoo.ru/images/board/")
        assert norm["event_date"] is not None and norm["posted_at"].tzinfo is not None
        assert norm["colors"], name
        assert all(w.startswith("species") for w in norm["parse_warnings"]), norm["parse_warnings"]


def test_labelled_fields(root: Path) -> None:
    raw, norm = parse(root, "164921.html.dump")
    assert raw["name"] == "Вася" and raw["breed"] == "Бенгальская кошка"
    assert norm["colors"] == ["grey", "spotted"]  # "Серый с леопардовыми пятнами"
    raw, norm = parse(root, "168308.html.dump")
    assert raw["name"] == "Баря" and norm["colors"] == ["black"]
    assert "Особые приметы: Ручной" in raw["description"]


def test_agrees_with_the_original_crawlers_parsed_card(root: Path) -> None:
    """164971.card.json is the original crawler's output for a card whose page is not saved: its fields use the
    same vocabularies our normaliser produces."""
    card = json.loads((root / "164971.card.json").read_text(encoding="utf-8"))
    norm = normalize_listing(
        {
            "source_id": card["uid"].split("_")[-1],
            "kind": card["card_type"],
            "species": card["animal"],
            "sex": card["animal_sex"],
            "event_date": card["event_time"],
            "description": card["contact_info"]["Comment"],
        }
    )
    assert (norm["kind"], norm["species"], norm["sex"]) == ("lost", "dog", "female")
    assert norm["event_date"].isoformat() == "2022-10-18"


@pytest.mark.parametrize(
    "text", ["", "plain text, no markup", "<html><body><h1>Пропал кот</h1></body></html>", "<div>\x00\x01</div>"]
)
def test_garbage_raises(text: str) -> None:
    with pytest.raises(ParseError):
        poiskzoo.parse_card(text, "https://poiskzoo.ru/x/y/1")


def test_garbage_catalog_raises() -> None:
    with pytest.raises(ParseError):
        poiskzoo.parse_catalog("<html><body><p>nothing here</p></body></html>", "https://poiskzoo.ru/poteryashka")


@pytest.mark.parametrize("name", ["164921.html.dump", "164978.html.dump"])
def test_truncated_pages_raise_or_warn(root: Path, name: str) -> None:
    text = (_testdata(root) / name).read_text(encoding="utf-8")
    outcomes = set()
    for frac in (0.02, 0.1, 0.3, 0.5, 0.7, 0.9):
        try:
            raw = poiskzoo.parse_card(text[: int(len(text) * frac)], "https://poiskzoo.ru/x")
        except ParseError:
            outcomes.add("error")
            continue
        outcomes.add("parsed")
        complete = all(raw.get(k) for k in ("source_id", "species", "description", "event_date"))
        assert complete or raw.get("parse_warnings"), raw
    assert "error" in outcomes
    # cut right after the heading: the id and date are there, the author's text is not -> a warning
    cut = text[: text.index("</h1>", text.index("con_heading")) + 5]
    cut += '<input type="hidden" name="a4id" value="{}">'.format(name.split(".")[0])
    raw = poiskzoo.parse_card(cut, "https://poiskzoo.ru/x")
    assert "description: no description" in raw["parse_warnings"]
