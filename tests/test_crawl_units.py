"""Crawler parts without a crawl: redaction, sources config, JSON-LD mapping, photo checks, Scrapy settings."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from parsel import Selector
from PIL import Image
from scrapy.http import HtmlResponse, Request

from crawlers.pipelines.photos import PhotoError, process_image, sniff, strip_jpeg_metadata
from crawlers.settings import scrapy_settings
from crawlers.sources import SourceError, load_sources
from crawlers.spiders.base import ListingSpider, failure_reason
from crawlers.spiders.configurable import ConfigurableSpider, jsonld_objects, listing_from_jsonld
from engine import ids
from engine.config import load_settings
from engine.redact import canonical_contact, redact
from tests.mock_site import corrupt_jpeg, jpeg_bytes, jsonld_card_html

# -- redaction ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "gone", "kept"),
    [
        ("Звоните +7 (999) 123-45-67 или 8-999-123-45-67", ["999", "45-67"], ["Звоните"]),
        ("Call (206) 555-0123 or 555-0199, mail jane.doe@example.com", ["555", "jane", "example.com"], ["Call"]),
        ("write to john [at] example [dot] com", ["john", "example"], ["write to"]),
        ("Lost 15.01.2024 near 1234 N Elm Street, Ballard", ["1234", "Elm Street"], ["15.01.2024", "Ballard"]),
        ("Найдена у дома ул. Ленина, д. 5, кв. 12, район Сокол", ["Ленина", "кв. 12"], ["район Сокол"]),
        ("пр-т Мира 17к2 возле магазина", ["Мира 17", "к2"], ["возле магазина"]),
        ("Chip 643094100123456, tattoo: ABC 1234", ["643094100123456", "ABC 1234"], ["Chip", "tattoo"]),
        ("чип № 643 094 100 123 456, клеймо XYZ123", ["643 094", "XYZ123"], ["чип"]),
        ("Phone masked +7 (9**) ***-**-**", ["9**"], ["Phone masked"]),
    ],
)
def test_redact_removes_private_details(text: str, gone: list[str], kept: list[str]) -> None:
    out = redact(text).text
    for g in gone:
        assert g not in out, (g, out)
    for k in kept:
        assert k in out, (k, out)


def test_redact_leaves_ordinary_numbers_and_places() -> None:
    text = "Born 2019, 12 kg, reward 5000 rub, seen 3 times near Pine street and in district 7, id 12345"
    assert redact(text).text == text
    assert redact("Потерялся в районе метро Сокол, улица Алабяна").text.endswith("улица Алабяна")


def test_contacts_hash_alike_in_any_spelling() -> None:
    a = canonical_contact("8 (999) 123-45-67")
    assert a == canonical_contact("+7 999 1234567") == canonical_contact("тел. 8-999-123-45-67, Иван") == "+79991234567"
    assert canonical_contact("(206) 555-0123") == canonical_contact("+1 206 555 0123") == "+12065550123"
    assert canonical_contact("Jane.Doe@Example.com ") == "jane.doe@example.com"
    assert ids.salted_hash(a, "s1") != ids.salted_hash(a, "s2")
    found = redact("пишите: Jane@Example.com, чип 643094100123456")
    assert found.emails == ["Jane@Example.com"] and found.chips == ["643094100123456"]


# -- sources config ----------------------------------------------------------------------------------------------


def test_sources_merge_and_validate(tmp_path: Path) -> None:
    builtin = load_sources(load_settings(environ={}))
    assert {"pet911", "poiskzoo", "petfinder", "petango", "petharbor"} <= set(builtin)
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        "sources:\n"
        "  - {name: pet911, enabled: false}\n"
        "  - {name: demo, spider: configurable, base_url: 'http://127.0.0.1:1', start_paths: [/c/1.html],"
        " cadence_minutes: 5}\n"
    )
    merged = load_sources(load_settings(overrides={"crawl": {"sources_file": str(extra)}}, environ={}))
    assert merged["pet911"]["enabled"] is False and merged["pet911"]["spider"] == "pet911"  # key-wise override
    assert merged["demo"]["cadence_minutes"] == 5 and merged["demo"]["enabled"] is True

    for body, message in [
        ("sources:\n  - {name: x, spider: configurable, cadense_minutes: 5}\n", "unknown key 'cadense_minutes'"),
        ("sources:\n  - {name: x}\n", "needs a 'spider'"),
        ("sources:\n  - {name: x, spider: s, cadence_minutes: 0}\n", "cadence_minutes must be > 0"),
        ("sources:\n  - {name: x, spider: s, enabled: 'yes'}\n", "bad value"),
        ("sources:\n  - {name: x, spider: s, selectors: {card: a}}\n", "unknown selectors key 'card'"),
        ("- just a list\n", "needs a 'name'"),
    ]:
        extra.write_text(body)
        with pytest.raises(SourceError, match=message):
            load_sources(load_settings(overrides={"crawl": {"sources_file": str(extra)}}, environ={}))


# -- configurable spider -----------------------------------------------------------------------------------------

POST = {
    "@context": "https://schema.org",
    "@type": "homeward:Listing",
    "identifier": {"@type": "PropertyValue", "value": 4711},
    "kind": "found",
    "name": "Grey cat",
    "species": "cat",
    "breed": "british",
    "color": ["grey"],
    "gender": "Female",
    "description": "Found by the school",
    "datePosted": "2026-10-02T08:00:00Z",
    "eventDate": "2026-10-01",
    "address": {"streetAddress": "12 Oak Ave", "addressLocality": "Tacoma", "addressRegion": "WA"},
    "geo": {"latitude": "47.25", "longitude": -122.44},
    "image": [{"@type": "ImageObject", "contentUrl": "/img/a.jpg"}, "https://cdn.example.org/b.jpg"],
    "seller": {"identifier": "S-1", "name": "Tacoma Shelter"},
    "contactPoint": {"telephone": "+1 253 555 0100"},
    "microchip": "985112000123456",
    "author": {"name": "Jane"},
}


def test_jsonld_mapping() -> None:
    html = jsonld_card_html(POST).replace(
        "</head>", '<script type="application/ld+json">{"@type":"WebSite"}</script></head>'
    )
    objs = jsonld_objects(Selector(text=html))
    assert len(objs) == 1
    raw = listing_from_jsonld(objs[0], "http://site.test/pets/4711.html")
    assert raw == {
        "source_id": "4711",
        "kind": "found",
        "name": "Grey cat",
        "species": "cat",
        "breed": "british",
        "colors": ["grey"],
        "sex": "Female",
        "description": "Found by the school",
        "location_text": "Tacoma, WA",  # never the street address
        "lat": "47.25",
        "lon": -122.44,
        "event_date": "2026-10-01",
        "posted_at": "2026-10-02T08:00:00Z",
        "photo_urls": ["http://site.test/img/a.jpg", "https://cdn.example.org/b.jpg"],
        "shelter_id": "S-1",
        "shelter_name": "Tacoma Shelter",
        "contact": "+1 253 555 0100",
        "chip": "985112000123456",
        "author_name": "Jane",
    }
    graph = (
        '<script type="application/ld+json">{"@graph": [{"@type": "Thing", "identifier": "g1", "name": "G"}]}</script>'
    )
    assert [o["identifier"] for o in jsonld_objects(Selector(text=graph))] == ["g1"]
    assert jsonld_objects(Selector(text='<script type="application/ld+json">{"@type": broken</script>')) == []


def test_configurable_selectors_without_jsonld() -> None:
    config = {
        "name": "plain",
        "spider": "configurable",
        "base_url": "http://site.test",
        "jsonld": False,
        "card_url_pattern": r"/post/\d+$",
        "id_from_url": r"/post/(\d+)",
        "selectors": {
            "cards": "div.post a.more",
            "next_page": "xpath://a[contains(., 'Next')]/@href",
            "fields": {"name": "h1::text", "description": "div.text ::text", "photo_urls": "div.g img::attr(src)"},
        },
        "defaults": {"kind": "lost", "species": "dog"},
    }
    spider = ConfigurableSpider(config=config)
    catalog = HtmlResponse(
        "http://site.test/list?page=1",
        body=b'<div class="post"><a class="more" href="/post/7">more</a> Rex, lost</div>'
        b'<div class="post"><a class="more" href="mailto:x@y.z">m</a></div><a href="/list?page=2">Next</a>',
        encoding="utf-8",
    )
    out = list(spider.parse_listing_page(catalog))
    assert [r.url for r in out] == ["http://site.test/post/7", "http://site.test/list?page=2"]
    assert out[0].meta["hw_fingerprint"] and "hw_fingerprint" not in out[1].meta
    card = HtmlResponse(
        "http://site.test/post/7",
        body=b'<h1> Rex </h1><div class="text"><p>Lost near</p><p>the river</p></div><div class="g">'
        b'<img src="/i/1.jpg"><img src="/i/2.jpg"></div>',
        encoding="utf-8",
        request=Request("http://site.test/post/7"),
    )
    (item,) = list(spider.parse_card(card))
    assert item["source_id"] == "7" and item["name"] == "Rex" and item["description"] == "Lost near the river"
    assert item["photo_urls"] == ["http://site.test/i/1.jpg", "http://site.test/i/2.jpg"]
    assert (item["kind"], item["species"], item["source"]) == ("lost", "dog", "plain")


def test_base_spider_arguments_and_rebase() -> None:
    class Site(ListingSpider):
        name = "site"
        default_base_url = "https://www.pets.example"
        start_paths = ["/catalog?p=1", "found/"]  # noqa: RUF012

    s = Site(base_url="http://127.0.0.1:8080/mirror/", max_pages="5")
    assert s.start_urls == ["http://127.0.0.1:8080/mirror/catalog?p=1", "http://127.0.0.1:8080/mirror/found/"]
    assert s.max_pages == 5 and s.source == "site"
    assert s.rebase("https://pets.example/card/1?x=2") == "http://127.0.0.1:8080/mirror/card/1?x=2"
    assert s.rebase("https://cdn.other.example/a.jpg") == "https://cdn.other.example/a.jpg"
    op = Site(start_urls="https://a.example/c/1, https://b.example/c/2")
    assert op.start_urls == ["https://a.example/c/1", "https://b.example/c/2"] and op.operator_urls
    assert Site().start_urls == ["https://www.pets.example/catalog?p=1", "https://www.pets.example/found/"]
    paths = Site(start_paths="/lost,/found?page=2")
    assert paths.start_urls == ["https://www.pets.example/lost", "https://www.pets.example/found?page=2"]
    assert (
        Site(start_paths=["/a"]).start_urls == ["https://www.pets.example/a"] and Site.start_paths[0] == "/catalog?p=1"
    )


def test_failure_reasons() -> None:
    from scrapy.exceptions import DownloadTimeoutError, IgnoreRequest
    from scrapy.http import Response
    from scrapy.spidermiddlewares.httperror import HttpError

    assert failure_reason(HttpError(Response("http://x/", status=503), "no")) == "http_503"
    assert failure_reason(IgnoreRequest("Forbidden by robots.txt")) == "robots_disallowed"
    assert failure_reason(IgnoreRequest("max redirections reached")) == "redirect_loop"
    assert failure_reason(DownloadTimeoutError("took too long")) == "timeout"


# -- photos ------------------------------------------------------------------------------------------------------


def _exif_jpeg(orientation: int) -> bytes:
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    img.paste((10, 10, 200), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x013B] = "Owner Name"
    exif[0x8825] = {1: "N", 2: (47.0, 36.0, 0.0)}
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def test_photo_checks_and_exif_stripping() -> None:
    big = 10 * 1024 * 1024
    data = _exif_jpeg(1)
    out, ext, w, h, fmt = process_image(data, big, 10**8)
    assert (ext, w, h, fmt) == ("jpg", 40, 20, "JPEG")
    assert b"Owner Name" in data and b"Owner Name" not in out and b"Exif" not in out
    assert out[-2:] == b"\xff\xd9" and len(out) < len(data)
    assert Image.open(io.BytesIO(out)).tobytes() == Image.open(io.BytesIO(data)).tobytes()  # pixels untouched

    rotated, ext, w, h, _ = process_image(_exif_jpeg(6), big, 10**8)  # 6: rotate 90° clockwise to view
    img = Image.open(io.BytesIO(rotated))
    assert (w, h) == (20, 40) == img.size and not img.getexif() and b"Owner Name" not in rotated
    r, _, b = img.convert("RGB").getpixel((10, 5))
    assert b > r  # the blue half is on top once upright

    png = io.BytesIO()
    Image.new("RGBA", (8, 8), (1, 2, 3, 128)).save(png, "PNG")
    assert process_image(png.getvalue(), big, 10**8)[1:4] == ("png", 8, 8)

    for bad, reason in [
        (b"<!DOCTYPE html><html><body>404</body></html>", "not_an_image"),
        (b"", "not_an_image"),
        (corrupt_jpeg(), "corrupt_image"),
        (jpeg_bytes()[:40], "corrupt_image"),
    ]:
        with pytest.raises(PhotoError) as err:
            process_image(bad, big, 10**8)
        assert err.value.reason == reason
    with pytest.raises(PhotoError, match="too_large"):
        process_image(jpeg_bytes(), 100, 10**8)  # bytes
    with pytest.raises(PhotoError, match="too_large"):
        process_image(jpeg_bytes((200, 200)), big, 10_000)  # pixels
    assert sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP" and sniff(b"GIF89a") == "GIF"
    assert strip_jpeg_metadata(jpeg_bytes())[:2] == b"\xff\xd8"


# -- settings ----------------------------------------------------------------------------------------------------


def test_scrapy_settings_from_homeward_settings() -> None:
    hw = load_settings(
        overrides={"crawl": {"contact_url": "https://shelter.example/bot", "max_page_mb": 2, "retry_times": 1}},
        environ={},
    )
    s = scrapy_settings(hw, source={"concurrency_per_domain": 1, "recheck_hours": 0})
    assert s["USER_AGENT"] == "HomewardBot/0.1 (+https://shelter.example/bot)"
    assert s["ROBOTSTXT_OBEY"] is True and s["AUTOTHROTTLE_ENABLED"] is True
    assert s["CONCURRENT_REQUESTS_PER_DOMAIN"] == 1 and s["DOWNLOAD_MAXSIZE"] == 2 * 1024 * 1024
    assert s["RETRY_TIMES"] == 1 and s["DOWNLOAD_TIMEOUT"] == 30.0 and s["HOMEWARD_RECHECK_HOURS"] == 0.0
    assert s["REMOTE_CONTROL_ENABLED"] is False and s["TELNETCONSOLE_ENABLED"] is False
    assert s["DOWNLOADER_MIDDLEWARES"] == {
        "crawlers.middlewares.HttpOnlyMiddleware": 40,
        "crawlers.middlewares.AddressGuard": 45,
    }
    assert s["HOMEWARD_ALLOW_HOSTS"] == [] and s["DNSCACHE_ENABLED"] is True
    # each component's own key, not the whole config in one
    assert "HOMEWARD_SETTINGS" not in s and (s["HOMEWARD_LANCE_URI"], s["HOMEWARD_SALT"]) == (hw.lance, hw.salt)
    allowed = load_settings(overrides={"crawl": {"allow_hosts": ["photos.lan", "10.0.0.5:8080"]}}, environ={})
    assert scrapy_settings(allowed)["HOMEWARD_ALLOW_HOSTS"] == ["photos.lan", "10.0.0.5:8080"]
    from_env = load_settings(environ={"HOMEWARD_CRAWL__ALLOW_HOSTS": "photos.lan,10.0.0.5:8080"})
    assert from_env.crawl.allow_hosts == ["photos.lan", "10.0.0.5:8080"]
    assert list(s["ITEM_PIPELINES"]) == [
        "crawlers.pipelines.validate.ValidatePipeline",
        "crawlers.pipelines.normalize.NormalizePipeline",
        "crawlers.pipelines.redact.RedactPipeline",
        "crawlers.pipelines.dedupe.DedupePipeline",
        "crawlers.pipelines.photos.PhotosPipeline",
        "crawlers.pipelines.lance.LanceWriterPipeline",
    ]
    assert len(scrapy_settings(hw, write=False)["ITEM_PIPELINES"]) == 4
    assert scrapy_settings(load_settings(environ={}))["CONCURRENT_REQUESTS_PER_DOMAIN"] == 2


def test_http_only_middleware() -> None:
    from scrapy.exceptions import IgnoreRequest
    from scrapy.utils.test import get_crawler

    from crawlers.middlewares import HttpOnlyMiddleware

    crawler = get_crawler()
    mw = HttpOnlyMiddleware.from_crawler(crawler)
    assert mw.process_request(Request("https://ok.example/")) is None
    for url in ("file:///etc/passwd", "ftp://x.example/a", "s3://bucket/key", "data:text/html,hi"):
        with pytest.raises(IgnoreRequest, match="scheme not allowed"):
            mw.process_request(Request(url))
    assert crawler.stats.get_value("homeward/filtered/scheme") == 4


# -- the mock site itself ----------------------------------------------------------------------------------------


def test_mock_site_serves_a_tree_and_misbehaves_on_request(tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    from tests.mock_site import MockSite

    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "1.html").write_text("<h1>one</h1>")
    with MockSite(root=tmp_path, robots="User-agent: *\nDisallow: /private/\n") as site:
        site.page("/mem.html", "<p>in memory</p>")
        site.misbehave("/gone", "404")
        site.misbehave("/loop", "redirect_loop")
        site.misbehave("/fake.jpg", "html_image")
        with urllib.request.urlopen(f"{site.url}/cards/1.html") as r:
            assert r.read() == b"<h1>one</h1>" and r.headers["Last-Modified"]
            modified = r.headers["Last-Modified"]
        with urllib.request.urlopen(f"{site.url}/mem.html") as r:
            assert r.read() == b"<p>in memory</p>" and r.headers["Content-Type"].startswith("text/html")
        with urllib.request.urlopen(f"{site.url}/robots.txt") as r:
            assert b"Disallow: /private/" in r.read()
        req = urllib.request.Request(f"{site.url}/cards/1.html", headers={"If-Modified-Since": modified})
        with pytest.raises(urllib.error.HTTPError) as not_modified:
            urllib.request.urlopen(req)
        assert not_modified.value.code == 304
        with pytest.raises(urllib.error.HTTPError) as gone:
            urllib.request.urlopen(f"{site.url}/gone")
        assert gone.value.code == 404
        with pytest.raises(urllib.error.HTTPError) as loop:
            urllib.request.urlopen(f"{site.url}/loop")
        assert loop.value.code == 302  # urllib gives up on the endless redirects
        with urllib.request.urlopen(f"{site.url}/fake.jpg") as r:
            assert r.headers["Content-Type"] == "image/jpeg" and r.read().startswith(b"<!DOCTYPE html>")
        assert site.hits("/loop") >= 2 and site.hits(prefix="/cards/") == 2
