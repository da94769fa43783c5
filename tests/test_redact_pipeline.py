"""The redact stage on whole items: every free-text field loses its contacts, everything else stays as it was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from scrapy.utils.test import get_crawler

from crawlers.items import RAW_KEYS, ListingItem
from crawlers.pipelines.redact import TEXT_FIELDS, RedactPipeline
from crawlers.settings import homeward_keys, scrapy_settings
from crawlers.sources import SourceError, load_sources
from engine import ids
from engine.config import Settings, load_settings

#: Raw keys that are not free text: ids, links, coordinates, dates and vocabulary values the normalise stage maps
#: (what it cannot map it quotes in ``parse_warnings``, which the stage redacts too).
NOT_FREE_TEXT = {
    "source_id",
    "url",
    "kind",
    "status",
    "species",
    "sex",
    "age_group",
    "size",
    "lat",
    "lon",
    "event_date",
    "posted_at",
    "shelter_id",
    "photo_urls",
    "contact",
    "chip",
    "author_name",
}
SECRETS = ["916", "45-67", "ivan", "anna_k", "id777", "555-0123", "jo.owner", "joe_pets", "643094100123456"]


def stage(settings: Settings, **scrapy: Any) -> RedactPipeline:
    return RedactPipeline(get_crawler(settings_dict={**homeward_keys(settings), **scrapy}))


def dirty_item() -> ListingItem:
    return ListingItem(
        source="pet911",
        source_id="rl12345",
        url="https://pet911.ru/moskva/lost/dog/rl12345",
        photo_urls=["https://pet911.ru/upload/rl12345.jpg"],
        shelter_id="SHELTER-42",
        kind="lost",
        description="Потерялась 12.05.2025 в 18:30, вознаграждение 10 000 - 15 000 руб. Звоните 8 (916) 123-45-67",
        name="Бим, пишите ivan.petrov(собака)mail.ru",
        location_text="Москва, Сокол, vk.com/id777",
        breed="Лабрадор, тг @anna_k",
        colors=["палевый", "tel +1 (206) 555-0123"],
        age_text="3 года, mail jo.owner at example dot com",
        shelter_name="Приют «Друг», t.me/joe_pets",
        parse_warnings=["colors: unrecognised colour 'чип 643094100123456'"],
        contact="+7 916 123 45 67",
        chip="643094100123456",
        author_name="Иван",
    )


def test_every_free_text_raw_key_is_redacted() -> None:
    assert set(RAW_KEYS) - NOT_FREE_TEXT == set(TEXT_FIELDS)


def test_no_contact_survives_in_any_field(settings: Settings) -> None:
    item = stage(settings).process_item(dirty_item())
    for key, value in item.items():
        if key.endswith("_hash"):  # hex digests: "916" may occur there by chance
            continue
        text = str(value).lower()
        assert not [s for s in SECRETS if s in text], (key, value)
    assert "contact" not in item and "chip" not in item and "author_name" not in item
    assert item["description"] == ("Потерялась 12.05.2025 в 18:30, вознаграждение 10 000 - 15 000 руб. Звоните [phone]")
    assert item["colors"] == ["палевый", "tel [phone]"]
    assert item["name"] == "Бим, пишите [email]" and item["location_text"] == "Москва, Сокол, [profile]"
    assert item["breed"] == "Лабрадор, тг [handle]" and item["shelter_name"] == "Приют «Друг», [profile]"
    assert item["parse_warnings"] == ["colors: unrecognised colour 'чип [chip]'"]
    clean = dirty_item()
    for key in ("source", "source_id", "url", "photo_urls", "shelter_id", "kind"):
        assert item[key] == clean[key]
    assert item["contact_hash"] == ids.salted_hash("+79161234567", settings.salt)
    assert item["chip_hash"] == ids.salted_hash("643094100123456", settings.salt)


def test_clean_fields_are_unchanged(settings: Settings) -> None:
    clean = {
        "description": "Found 05/12/2025 near Green Lake, 10-15 kg, reward $50-100, about 3 years old",
        "name": "Buddy",
        "location_text": "Seattle, WA 98101",
        "breed": "Labrador Retriever mix",
        "colors": ["black", "white"],
        "age_text": "3 года",
        "shelter_name": "Seattle Animal Shelter",
    }
    item = stage(settings).process_item(ListingItem(source="petango", source_id="A1", **clean))
    assert {key: item[key] for key in clean} == clean
    assert item["contact_hash"] is None and item["chip_hash"] is None


def test_contact_hash_from_text_is_the_region_canonical_form(settings: Settings) -> None:
    """The same US number spelled two ways hashes alike; the source's region reads a national number."""
    hashes = {
        stage(settings, HOMEWARD_PHONE_REGION="US")
        .process_item(ListingItem(source="petango", source_id=str(i), description=f"Call {phone}"))
        .get("contact_hash")
        for i, phone in enumerate(["(206) 555-0123", "+1 206 555 0123", "2065550123"])
    }
    assert hashes == {ids.salted_hash("+12065550123", settings.salt)}


def test_phone_region_comes_from_the_source_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    hw = load_settings(environ={})
    sources = load_sources(hw)
    assert sources["pet911"]["phone_region"] == "RU" and sources["petharbor"]["phone_region"] == "US"
    assert scrapy_settings(hw, source=sources["petango"])["HOMEWARD_PHONE_REGION"] == "US"
    extra = tmp_path / "extra.yaml"
    extra.write_text("sources:\n  - {name: demo, spider: configurable, phone_region: XX}\n")
    with pytest.raises(SourceError, match=r"demo.*unknown phone region 'XX'"):
        load_sources(load_settings(overrides={"crawl": {"sources_file": str(extra)}}, environ={}))


def test_petfinder_shelter_directory_is_redacted(settings: Settings) -> None:
    """The API spider's shelter directory is written by the spider, not the item pipeline: it redacts too."""
    import json

    from crawlers.spiders.petfinder import PetfinderSpider

    crawler = get_crawler(
        PetfinderSpider,
        {**homeward_keys(settings), "HOMEWARD_INCREMENTAL": True, "HOMEWARD_PHONE_REGION": "US"},
    )
    spider = PetfinderSpider.from_crawler(crawler)
    spider.shelters = {
        "WA01": {"shelter_id": "WA01", "shelter_name": "Paws (206) 555-0123", "location_text": "Seattle, WA, 98101"}
    }
    spider.closed("finished")
    saved = json.loads((Path(settings.data_dir) / "shelters" / "petfinder.json").read_text())
    assert saved["shelters"] == [
        {"shelter_id": "WA01", "shelter_name": "Paws [phone]", "location_text": "Seattle, WA, 98101"}
    ]


def test_a_contact_field_is_read_in_any_region(settings: Settings) -> None:
    """A card's contact field holds a contact: a bare Russian number on a US source still gets its E.164 hash."""
    us = stage(settings, HOMEWARD_PHONE_REGION="US")
    hashes = {
        us.process_item(ListingItem(source="petango", source_id=str(i), contact=contact)).get("contact_hash")
        for i, contact in enumerate(["89161234567", "+7 916 123 45 67"])
    }
    assert hashes == {ids.salted_hash("+79161234567", settings.salt)}


def test_text_is_cut_to_its_limit_only_after_redaction(settings: Settings) -> None:
    """A phone that straddles a field's length limit is redacted whole, not stored half-written."""
    from crawlers.pipelines.validate import MAX_DESCRIPTION, MAX_TEXT, ValidatePipeline

    crawler = get_crawler(settings_dict=homeward_keys(settings))
    item = dirty_item()
    item["name"] = "Бим " * ((MAX_TEXT - 12) // 4) + "звоните +7 916 302 71 58"
    item["description"] = "x" * (MAX_DESCRIPTION - 10) + " тел. 8 (916) 302-71-58"
    for step in (ValidatePipeline(crawler), RedactPipeline(crawler)):
        item = step.process_item(item)
    assert len(item["name"]) <= MAX_TEXT and len(item["description"]) <= MAX_DESCRIPTION
    assert "916" not in item["name"] and "916" not in item["description"]
