"""engine.normalize: Russian/English site vocabulary onto the schema's vocabularies, dates, and never-raise."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from engine import schema
from engine.normalize import (
    COLORS,
    age_group_from_text,
    normalize_colors,
    normalize_listing,
    normalize_sex,
    normalize_size,
    normalize_species,
    parse_when,
)

NOW = datetime(2022, 10, 17, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Собака", "dog"),
        ("собака", "dog"),
        ("пёс", "dog"),
        ("Пес", "dog"),
        ("Кобель", "dog"),
        ("щенок", "dog"),
        ("Dog", "dog"),
        ("Puppy", "dog"),
        ("Кошка", "cat"),
        ("кот", "cat"),
        ("Котёнок", "cat"),
        ("Cat", "cat"),
        ("kitten", "cat"),
        ("Пропал кот Оренбург", "cat"),
        ("Найдена собака, Хабаровск", "dog"),
        ("bird", "other"),
        ("Попугай", "other"),
        ("Small & Furry", "other"),
        ("unknown", "unknown"),
    ],
)
def test_species_vocabulary(raw: str, expected: str) -> None:
    assert normalize_species(raw) == expected


def test_species_other_keeps_the_raw_word_in_a_warning() -> None:
    warnings: list[str] = []
    assert normalize_species("bird", warnings) == "other"
    assert any("'bird'" in w for w in warnings)


def test_unrecognised_species_is_unknown_with_warning_not_an_exception() -> None:
    warnings: list[str] = []
    assert normalize_species("zebra-unicorn", warnings) == "unknown"
    assert warnings and "zebra-unicorn" in warnings[0]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Кобель", "male"),
        ("Мальчик", "male"),
        ("Мужской", "male"),
        ("Самец", "male"),
        ("М", "male"),
        ("M", "male"),
        ("Male", "male"),
        ("Neutered Male", "male"),
        ("Сука", "female"),
        ("Девочка", "female"),
        ("Женский", "female"),
        ("Самка", "female"),
        ("Ж", "female"),
        ("F", "female"),
        ("Spayed Female", "female"),
        ("undefined", "unknown"),
        ("Unknown", "unknown"),
        (None, "unknown"),
        ("", "unknown"),
    ],
)
def test_sex_vocabulary(raw: str | None, expected: str) -> None:
    warnings: list[str] = []
    assert normalize_sex(raw, warnings) == expected
    assert warnings == []


def test_unrecognised_sex_warns() -> None:
    warnings: list[str] = []
    assert normalize_sex("гермафродит?!", warnings) == "unknown"
    assert len(warnings) == 1


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Серый с леопардовыми пятнами", ["grey", "spotted"]),
        ("Black & White / Tuxedo", ["black", "white"]),
        ("бело-рыжий", ["white", "red"]),
        ("черно-белая", ["black", "white"]),
        ("Рыжий", ["red"]),
        ("Tricolor (Brown, Black, & White)", ["tricolor", "brown", "black", "white"]),
        ("Brown Tabby", ["brown", "tabby"]),
        ("Tabby (Orange / Red)", ["tabby", "red"]),
        ("Gray / Blue / Silver", ["grey"]),
        ("Yellow / Tan / Blond / Fawn", ["cream"]),
        ("Brindle/White", ["brindle", "white"]),
        ("Трёхцветная", ["tricolor"]),
        ("черепаховая", ["tortoiseshell"]),
        ("кремовый", ["cream"]),
        (["Black", "White / Cream"], ["black", "white", "cream"]),
    ],
)
def test_colour_vocabulary(raw: str | list[str], expected: list[str]) -> None:
    got = normalize_colors(raw)
    assert got == expected
    assert set(got) <= set(COLORS)


def test_striped_dog_is_brindle_striped_cat_is_tabby() -> None:
    assert normalize_colors("тигровый", species="dog") == ["brindle"]
    assert normalize_colors("тигровый", species="cat") == ["tabby"]


def test_unrecognised_colour_warns() -> None:
    warnings: list[str] = []
    assert normalize_colors("Имеется", warnings) == []
    assert warnings and "Имеется" in warnings[0]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Baby", "baby"),
        ("Young", "young"),
        ("Adult", "adult"),
        ("Senior", "senior"),
        ("щенок", "baby"),
        ("взрослый", "adult"),
        ("3 weeks", "baby"),
        ("8 мес", "young"),
        ("1 year", "young"),
        ("1 year and 6 months", "young"),
        ("1,5 года", "young"),
        ("6 years 7 months 7 days", "adult"),
        ("10 лет", "senior"),
    ],
)
def test_age_groups(raw: str, expected: str) -> None:
    assert age_group_from_text(raw) == expected
    assert expected in schema.AGE_GROUPS


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("Small", "small"), ("Medium", "medium"), ("Large", "large"), ("Extra Large", "xlarge"), ("крупный", "large")],
)
def test_sizes(raw: str, expected: str) -> None:
    assert normalize_size(raw) == expected


@pytest.mark.parametrize(
    ("text", "expected", "has_time"),
    [
        ("Вчера в 22:27", datetime(2022, 10, 16, 22, 27, tzinfo=UTC), True),
        ("Сегодня в 00:10", datetime(2022, 10, 17, 0, 10, tzinfo=UTC), True),
        ("13 октября 2022", datetime(2022, 10, 13, tzinfo=UTC), False),
        ("14 января 2024", datetime(2024, 1, 14, tzinfo=UTC), False),
        ("пт, 22.04.2022", datetime(2022, 4, 22, tzinfo=UTC), False),
        ("2016-05-08T11:15:00.000", datetime(2016, 5, 8, 11, 15, tzinfo=UTC), True),
        ("2020-11-26T10:00:00+0000", datetime(2020, 11, 26, 10, tzinfo=UTC), True),
        ("May 08, 2016", datetime(2016, 5, 8, tzinfo=UTC), False),
        ("3 дня назад", datetime(2022, 10, 14, tzinfo=UTC), False),
        ("1606338000", datetime(2020, 11, 25, 21, 0, tzinfo=UTC), True),
    ],
)
def test_parse_when(text: str, expected: datetime, has_time: bool) -> None:
    assert parse_when(text, NOW) == (expected, has_time)


def test_parse_when_garbage_is_none() -> None:
    assert parse_when("когда-то давно", NOW) == (None, False)
    assert parse_when("31.02.2022", NOW) == (None, False)


def test_normalize_listing_maps_every_vocabulary_and_types() -> None:
    raw = {
        "source_id": "rl1",
        "kind": "Пропала",
        "status": "питомец нашелся.",
        "species": "кошка",
        "sex": "Женский",
        "colors": "серая британка",
        "age_text": "2 года",
        "size": "небольшая",
        "event_date": "Вчера в 22:27",
        "posted_at": "пт, 14.10.2022",
        "lat": "55.77292439",
        "lon": 37.55103469,
        "photo_urls": ["https://cdn.example/a.webp", "https://cdn.example/a.webp"],
        "description": "  Пепельная   британка.\r\n\r\n\r\nНосик чёрный.  ",
    }
    out = normalize_listing(raw, now=NOW)
    assert out["kind"] == "lost"
    assert out["status"] == "resolved"
    assert out["species"] == "cat"
    assert out["sex"] == "female"
    assert out["colors"] == ["grey"]
    assert out["age_group"] == "adult"
    assert out["size"] == "small"
    assert out["event_date"] == date(2022, 10, 16)
    assert out["posted_at"] == datetime(2022, 10, 14, tzinfo=UTC)
    assert out["posted_at"].tzinfo is not None
    assert out["lat"] == pytest.approx(55.77292439) and out["lon"] == pytest.approx(37.55103469)
    assert out["photo_urls"] == ["https://cdn.example/a.webp"]
    assert out["description"] == "Пепельная британка.\n\nНосик чёрный."
    assert out["parse_warnings"] == []
    for key in raw:
        assert key in out


def test_normalize_listing_never_raises_and_records_every_bad_value() -> None:
    raw = {
        "source_id": "x",
        "kind": "teleported",
        "status": "???",
        "species": "дракон",
        "sex": "оба",
        "colors": ["фиолетовый в крапинку-нет"],
        "age_text": "давно",
        "size": "гигантский?",
        "event_date": "позапрошлой весной",
        "posted_at": "not a date",
        "lat": "north",
        "lon": 500,
        "photo_urls": ["javascript:alert(1)", "/relative.jpg"],
        "parse_warnings": ["from parser"],
    }
    out = normalize_listing(raw, now=NOW)
    assert out["kind"] is None
    assert out["status"] == "active"
    assert out["species"] == "unknown"
    assert out["sex"] == "unknown"
    assert out["age_group"] == "unknown"
    assert out["size"] == "unknown"
    assert out["event_date"] is None and out["posted_at"] is None
    assert out["lat"] is None and out["lon"] is None
    assert out["photo_urls"] == []
    warnings = out["parse_warnings"]
    assert warnings[0] == "from parser"
    for field in ("kind", "status", "species", "sex", "colors", "age", "size", "event_date", "posted_at", "lat"):
        assert any(w.startswith(field) for w in warnings), field
    assert sum(w.startswith("photo_urls") for w in warnings) == 2


def test_missing_fields_default_silently() -> None:
    out = normalize_listing({"source_id": "a"})
    assert out["species"] == "unknown" and out["sex"] == "unknown" and out["status"] == "active"
    assert out["parse_warnings"] == []
    assert normalize_listing({})["parse_warnings"] == ["source_id: missing"]


def test_event_date_with_offset_keeps_the_local_calendar_day() -> None:
    out = normalize_listing({"source_id": "a", "event_date": "2020-01-01T23:30:00-08:00"})
    assert out["event_date"] == date(2020, 1, 1)
    out = normalize_listing({"source_id": "a", "posted_at": "2020-01-01T23:30:00-08:00"})
    assert out["posted_at"] == datetime(2020, 1, 2, 7, 30, tzinfo=UTC)


def test_vocabularies_map_only_into_the_schema() -> None:
    from engine import normalize as n

    assert set(n.SPECIES_WORDS.values()) <= set(schema.SPECIES)
    assert set(n.SEX_WORDS.values()) <= set(schema.SEXES)
    assert set(n.SIZE_WORDS.values()) <= set(schema.SIZES)
    assert set(n.AGE_GROUP_WORDS.values()) <= set(schema.AGE_GROUPS)
    assert set(n.KIND_WORDS.values()) <= set(schema.KINDS)
    assert set(n.STATUS_WORDS.values()) <= set(schema.LISTING_STATUSES)
    for colours in (*n.COLOR_WORDS.values(), *n.COLOR_STEMS.values()):
        assert set(colours) <= set(COLORS)
