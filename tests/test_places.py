"""Every listing gets a place: the offline gazetteer (engine.places), listings placed at normalisation (page, postcode,
address, town, region, shelter), the source's time zone for dates, and the real Petango / PetHarbor / Petfinder
pages coming out with coordinates and a geo_source — also pages of shelters the suite has never seen."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pytest

from crawlers.parsers import petango, petfinder, petharbor
from engine import places
from engine.errors import HomewardError
from engine.normalize import normalize_listing, parse_when
from engine.schema import GEO_SOURCES

MSK = ZoneInfo("Europe/Moscow")


def km(a: tuple[float | None, float | None], b: tuple[float, float]) -> float:
    assert a[0] is not None and a[1] is not None, "not placed"
    p1, p2, dl = math.radians(a[0]), math.radians(b[0]), math.radians(b[1] - a[1])
    c = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)
    return 6371.0 * math.acos(max(-1.0, min(1.0, c)))


SEATTLE, AUSTIN, MOSCOW, SPB = (47.61, -122.33), (30.27, -97.74), (55.75, 37.62), (59.94, 30.31)


@pytest.mark.parametrize(
    ("text", "country", "how", "near_to"),
    [
        ("Seattle, WA 98101", None, "postcode", SEATTLE),
        ("98101", None, "postcode", SEATTLE),
        ("Austin, TX", None, "city", AUSTIN),
        ("Portland, ME", None, "city", (43.66, -70.26)),  # the state picks among same-named towns
        ("Portland, Oregon", None, "city", (45.52, -122.68)),
        ("Moscow", "US", "city", (46.73, -117.0)),  # a US source's "Moscow" is Moscow, Idaho …
        ("Moscow", "RU", "city", MOSCOW),  # … a Russian source's the capital
        ("Москва", None, "city", MOSCOW),
        ("г. Москва, ул. Ленина, д. 5", "RU", "address", MOSCOW),
        ("Санкт-Петербург", "RU", "city", SPB),
        ("Sankt-Peterburg", None, "city", SPB),
        ("Moskva", None, "city", MOSCOW),
        ("Московская обл., Балашиха", "RU", "city", (55.8, 37.95)),
        ("Московская область", "RU", "region", MOSCOW),  # coarse: the region's largest town
        ("Seattle Animal Shelter", "US", "city", SEATTLE),
        ("55.75, 37.62", None, "coordinates", MOSCOW),
        # shelters of other towns, as their names come: a county is the centre of its ZIP codes, a state named
        # alone is the state (not a same-named town elsewhere), "City" inside a name is part of it
        ("SPCA of Wake County", "US", "region", (35.78, -78.64)),  # not Wake Village, TX
        ("Multnomah County Animal Services", "US", "region", (45.52, -122.68)),
        ("Maricopa County Animal Care and Control", "US", "region", (33.45, -112.07)),  # not the town of Maricopa
        ("Washington County, Oregon", "US", "region", (45.52, -122.99)),  # the state settles a shared county name
        ("St. Louis County Animal Care", "US", "city", (38.63, -90.2)),  # two states: the major town of that name
        ("Oregon Humane Society", "US", "region", (45.52, -122.68)),  # not Oregon, Ohio
        ("Delaware Humane Association", "US", "region", (39.74, -75.55)),  # not Delaware, Ohio
        ("Washington, DC", "US", "city", (38.9, -77.04)),
        ("Kansas City, MO", None, "city", (39.1, -94.58)),
        ("Iowa City", "US", "city", (41.66, -91.53)),
    ],
)
def test_resolve_places_as_people_write_them(text: str, country: str | None, how: str, near_to: tuple) -> None:
    place = places.resolve(text, country=country)
    assert place.how == how, place
    assert km((place.lat, place.lon), near_to) < (60 if how == "region" else 15), place


def test_unknown_foreign_and_hostile_places_are_none_with_a_reason() -> None:
    unknown = places.resolve("Xyzzy Plugh Nowhere")
    assert unknown.how == "none" and unknown.lat is None and "no known town" in (unknown.note or "")
    assert places.resolve("").note == "no place given" and places.resolve(None).how == "none"
    canada = places.resolve("K1A 0B1")
    assert canada.how == "none" and "no offline postcode data for CA" in (canada.note or "")
    vancouver = places.resolve("Vancouver, BC V6B 1A1")  # the postcode is noted, the town still places it
    assert vancouver.how == "city" and "CA" in (vancouver.note or "")
    assert places.resolve("Seattle " * 200_000).how == "city"  # a huge text is cut, not slow
    assert places.resolve("x" * 1_000_000).how == "none"
    spoofed = places.resolve("Mos\x00cow\u200b\x1b[31m", country="RU")  # control and invisible characters
    assert km((spoofed.lat, spoofed.lon), MOSCOW) < 15
    for junk in ("\x00\x01\x02", "<script>alert(1)</script>", "'; DROP TABLE listings; --", "999.9, 999.9"):
        assert places.resolve(junk).how == "none"


def test_a_county_several_states_share_is_no_place_unless_the_text_names_one() -> None:
    shared = places.resolve("Washington County Humane Society", country="US")
    assert shared.how == "none" and "Washington County is in" in (shared.note or ""), shared
    assert places.resolve("Washington County Humane Society, Oregon", country="US").how == "region"


def test_near_accepts_coordinates_and_places() -> None:
    assert places.near("47.61,-122.33") == (47.61, -122.33)
    assert km(places.near("Seattle, WA"), SEATTLE) < 15
    assert km(places.near("Санкт-Петербург"), SPB) < 15
    with pytest.raises(HomewardError, match="not a place on Earth"):
        places.near("123,456")
    with pytest.raises(HomewardError, match=r"--near expects LAT,LON or a place.*cannot place"):
        places.near("Xyzzy Nowhere")


def test_place_listing_order_page_text_shelter() -> None:
    directory = {"SHX": "Tacoma, WA", "North Shelter": "47.7,-122.3"}
    page = places.place_listing({"lat": 1.5, "lon": 2.5, "location_text": "Seattle"}, country="US")
    assert page == (1.5, 2.5, "page", None)
    lat, lon, source, _ = places.place_listing({"location_text": "Austin, TX 78701"}, country="US")
    assert source == "postcode" and km((lat, lon), AUSTIN) < 10
    lat, lon, source, _ = places.place_listing(
        {"location_text": "Shelter X", "shelter_name": "Shelter X", "shelter_id": "SHX"},
        country="US",
        shelters=directory,
    )
    assert source == "shelter" and km((lat, lon), (47.25, -122.44)) < 15  # the directory's Tacoma
    assert places.place_listing({"shelter_name": "north shelter"}, shelters=directory)[:3] == (47.7, -122.3, "shelter")
    lat, lon, source, _ = places.place_listing({"shelter_name": "Spokane Humane Society"}, country="US")
    assert source == "shelter" and km((lat, lon), (47.66, -117.43)) < 15  # the town words of its name
    lat, lon, source, note = places.place_listing({"location_text": "somewhere out back", "shelter_name": "Happy Paws"})
    assert (lat, lon, source) == (None, None, "none") and "place text" in (note or "")


def test_normalize_places_listings_and_warns_why_not() -> None:
    out = normalize_listing({"source_id": "1", "location_text": "Оренбург, Центральный"}, country="RU")
    assert out["geo_source"] == "city" and km((out["lat"], out["lon"]), (51.77, 55.1)) < 15
    assert normalize_listing({"source_id": "2", "lat": 55.0, "lon": 37.0})["geo_source"] == "page"
    lost = normalize_listing({"source_id": "3", "location_text": "за гаражами у реки"}, country="RU")
    assert lost["geo_source"] == "none" and lost["lat"] is None
    assert any(w.startswith("place:") for w in lost["parse_warnings"])
    assert normalize_listing({"source_id": "4"})["geo_source"] == "none"
    assert set(GEO_SOURCES) >= {"page", "postcode", "address", "city", "shelter", "none"}


def test_dates_without_a_zone_are_read_in_the_source_timezone() -> None:
    out = normalize_listing(
        {"source_id": "1", "posted_at": "14.01.2024 в 01:30", "event_date": "14.01.2024 01:30"}, tz=MSK
    )
    assert out["posted_at"] == datetime(2024, 1, 13, 22, 30, tzinfo=UTC)  # 01:30 in Moscow is 22:30 UTC the eve
    assert out["event_date"] == date(2024, 1, 14)  # the day where it happened, not the UTC day
    utc = normalize_listing({"source_id": "1", "posted_at": "14.01.2024 в 01:30"})
    assert utc["posted_at"] == datetime(2024, 1, 14, 1, 30, tzinfo=UTC)  # no timezone: UTC, as before
    offset = normalize_listing({"source_id": "1", "posted_at": "2024-01-14T01:30:00+00:00"}, tz=MSK)
    assert offset["posted_at"] == datetime(2024, 1, 14, 1, 30, tzinfo=UTC)  # an explicit offset wins
    now = datetime(2022, 10, 16, 22, 0, tzinfo=UTC)  # 01:00 on the 17th in Moscow
    yesterday, _ = parse_when("Вчера в 22:27", now, MSK)
    assert yesterday == datetime(2022, 10, 16, 22, 27, tzinfo=MSK)


def test_source_settings_reach_the_normalise_stage(tmp_path: Path) -> None:
    from scrapy.utils.test import get_crawler

    from crawlers.items import ListingItem
    from crawlers.pipelines.normalize import NormalizePipeline
    from crawlers.settings import scrapy_settings
    from crawlers.sources import SourceError, load_sources
    from engine.config import load_settings

    hw = load_settings(overrides={"data_dir": str(tmp_path)}, environ={})
    sources = load_sources(hw)
    assert sources["poiskzoo"]["timezone"] == "Europe/Moscow" and sources["pet911"]["country"] == "RU"
    keys = scrapy_settings(hw, write=False, source={**sources["petango"], "shelters": {"SX": "Tacoma, WA"}})
    stage = NormalizePipeline.from_crawler(get_crawler(settings_dict=keys))
    item = ListingItem(source_id="7", shelter_id="SX", shelter_name="SX", posted_at="2024-01-14 01:30")
    out = stage.process_item(item)
    assert out["geo_source"] == "shelter" and km((out["lat"], out["lon"]), (47.25, -122.44)) < 15
    moscow = scrapy_settings(hw, write=False, source=sources["pet911"])
    stage = NormalizePipeline.from_crawler(get_crawler(settings_dict=moscow))
    out = stage.process_item(ListingItem(source_id="8", posted_at="2024-01-14 01:30", location_text="г. Москва"))
    assert out["posted_at"] == datetime(2024, 1, 13, 22, 30, tzinfo=UTC) and out["geo_source"] == "city"
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources:\n  - {name: pet911, timezone: Mars/Olympus}\n")
    with pytest.raises(SourceError, match="unknown timezone"):
        load_sources(load_settings(overrides={"data_dir": str(tmp_path), "crawl": {"sources_file": str(bad)}}))


def test_old_listings_table_without_geo_source_still_loads(tmp_path: Path) -> None:
    from engine import schema
    from engine.storage import LanceStore, upsert_listings

    store = LanceStore(str(tmp_path / "lance"))
    old = pa.schema([f for f in schema.LISTINGS if f.name != "geo_source"])
    row = {**schema.empty_row(old), "listing_id": "a", "source": "s", "source_id": "1"}
    store.db.create_table("listings", data=pa.Table.from_pylist([row], schema=old))
    upsert_listings(store, [{**schema.empty_row(schema.LISTINGS), **row, "listing_id": "b", "geo_source": "city"}])
    got = {r["listing_id"]: r["geo_source"] for r in store.read("listings").to_pylist()}
    assert got == {"a": None, "b": "city"}


def test_explanation_says_where_a_place_came_from() -> None:
    from engine.config import MatchSettings
    from engine.scoring.fuse import ScoreParams, explain

    params = ScoreParams.from_settings(MatchSettings())

    row = {
        "fused": 1.0, "no_photo": True, "text_sim": float("nan"), "distance_km": 3.2, "days_apart": 2.0, "score": 0.5,
        **{f"attr_{k}": float("nan") for k in ("colour", "sex", "size", "breed")},
    }  # fmt: skip
    text = explain(row, params, 0, 0, ("page", "shelter"))
    assert "3.2 km apart (found placed by the shelter ±15 km)" in text
    assert "placed by" not in explain(row, params, 0, 0, ("page", "page"))


# ------------------------------------------------------------------------------------ real pages (../shared)
@pytest.fixture(scope="module")
def fixtures(shared_dir: Path) -> Path:
    return shared_dir / "data" / "fixtures"


def test_petango_pages_are_placed_by_their_shelter(fixtures: Path) -> None:
    files = sorted((fixtures / "petango").glob("*/AttributeHTML/*.html"))
    assert files
    for path in files:
        html = path.read_text(encoding="utf-8")
        out = normalize_listing(petango.parse_card(html, petango.SITE + "x?id=1"), country="US")
        assert out["geo_source"] == "shelter", path.name
        assert km((out["lat"], out["lon"]), SEATTLE) < 15, path.name
    # a shelter the suite has never seen: only the page's site label changes
    html = files[0].read_text(encoding="utf-8")
    site = petango.parse_card(html)["shelter_name"]
    other = normalize_listing(petango.parse_card(html.replace(site, "Humane Society of Spokane County")), country="US")
    assert other["geo_source"] == "shelter" and km((other["lat"], other["lon"]), (47.66, -117.43)) < 15


def test_petharbor_page_is_placed(fixtures: Path) -> None:
    page = (fixtures / "petharbor" / "petharbor.html").read_bytes().decode("latin-1")
    out = normalize_listing(petharbor.parse_card(page), country="US")
    assert out["geo_source"] in ("shelter", "city") and km((out["lat"], out["lon"]), AUSTIN) < 15
    shelter = petharbor.parse_card(page)["shelter_name"]
    unseen = normalize_listing(petharbor.parse_card(page.replace(shelter, "Dallas Animal Services")), country="US")
    assert unseen["geo_source"] in ("shelter", "city") and km((unseen["lat"], unseen["lon"]), (32.78, -96.8)) < 15


def test_petfinder_animals_are_placed(fixtures: Path) -> None:
    bodies = fixtures / "petfinder_api" / "bodies"
    animals: list[dict[str, Any]] = []
    for path in sorted(bodies.glob("animals_*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        animals += [a for a in data.get("animals") or [] if isinstance(a, dict) and a.get("id")]
    assert len(animals) > 100
    sources: dict[str, int] = {}
    for animal in animals:
        raw = petfinder.parse_animal(animal)
        out = normalize_listing(raw, country="US")
        sources[out["geo_source"]] = sources.get(out["geo_source"], 0) + 1
        if raw["location_text"]:
            assert out["lat"] is not None and out["geo_source"] in ("postcode", "city", "address"), raw
    assert sources.get("postcode", 0) > 0 and sources.get("none", 0) == 0, sources


def test_poiskzoo_times_are_moscow_wall_clock(fixtures: Path) -> None:
    from crawlers.parsers import poiskzoo

    root = fixtures / "poiskzoo"
    expected = json.loads((root / "EXPECTED_VALUES.json").read_text(encoding="utf-8"))
    saved_at = datetime(2022, 10, 17, 0, 0, tzinfo=UTC)  # as tests/test_parsers_poiskzoo.py
    checked = 0
    for name, want in expected.items():
        if not isinstance(want, dict) or "event_time_utc" not in want:
            continue
        text = (root / "pkg" / "crawler" / "testdata" / name).read_text(encoding="utf-8")
        out = normalize_listing(
            poiskzoo.parse_card(text, f"https://poiskzoo.ru/{name.split('.')[0]}"), now=saved_at, tz=MSK
        )
        wall = datetime.fromisoformat(want["event_time_utc"].rstrip("Z"))  # what the page's clock says
        assert out["posted_at"] == wall.replace(tzinfo=MSK) and out["event_date"] == wall.date(), name
        checked += 1
    assert checked >= 5
