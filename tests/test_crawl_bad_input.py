"""Bad input and politeness: every broken page or photo is recorded with its reason while the crawl goes on;
robots.txt is obeyed, only http(s) links are followed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.storage import RunsDB
from ray_jobs.crawl import crawl
from tests.mock_site import ListingSite, MockSite, crawl_settings, jsonld_card_html, listings, photos, site_source

BAD_CARDS = {
    "e404": "404",
    "e500": "500",
    "etimeout": "timeout",
    "eloop": "redirect_loop",
    "egarbage": "garbage",
    "etrunc": "truncated",
    "eloss": "data_loss",
}
BAD_PHOTOS = {
    "html": ("html_image", {}),
    "huge": ("huge_image", {}),
    "huge_stream": ("huge_image", {"chunked": True, "size": 20 * 1024 * 1024}),
    "corrupt": ("corrupt_image", {}),
}


def build(site: MockSite) -> ListingSite:
    data = ListingSite(site, n=4, per_page=20)
    site.page("/robots.txt", "User-agent: *\nDisallow: /private/\n", content_type="text/plain")
    for sid in BAD_CARDS:
        data.posts[sid] = {"@type": "homeward:Listing", "identifier": sid, "name": sid, "kind": "lost",
                           "species": "dog", "description": "x" * 50}  # fmt: skip
    # a valid card that lacks photo, date and sex
    data.posts["bare"] = {"@type": "homeward:Listing", "identifier": "bare", "name": "Bare", "kind": "found",
                          "species": "cat", "description": "Found a cat, no photo."}  # fmt: skip
    # a card whose photos are all bad, plus one under a robots-disallowed path and one missing
    bad_images = [f"/img/{name}.jpg" for name in BAD_PHOTOS] + [
        "/private/p.jpg",
        "/img/missing.jpg",
        "/photos/l100.jpg",
    ]
    data.posts["badphotos"] = {"@type": "homeward:Listing", "identifier": "badphotos", "name": "Photos",
                               "kind": "lost", "species": "dog", "gender": "male", "eventDate": "2026-10-02",
                               "image": bad_images}  # fmt: skip
    data.render()
    for sid, how in BAD_CARDS.items():
        site.misbehave(data.card_path(sid), how, delay=20)
    for name, (how, options) in BAD_PHOTOS.items():
        site.misbehave(f"/img/{name}.jpg", how, **options)
    site.page("/private/p.jpg", ListingSite.photo(1), content_type="image/jpeg")
    site.page("/private/secret.html", jsonld_card_html({"@type": "homeward:Listing", "identifier": "secret"}))
    # links that must never be followed, next to one that must be refused by robots.txt
    links = (
        '<a class="card" href="/private/secret.html">secret</a>'
        '<a class="card" href="mailto:owner@example.org">mail</a>'
        '<a class="card" href="javascript:alert(1)">js</a>'
        '<a class="card" href="file:///etc/passwd">file</a>'
        '<a class="card" href="ftp://127.0.0.1/pets/x.html">ftp</a>'
        '<a rel="next" href="data:text/html,<a class=card href=/x>">data</a>'
    )
    page = site.pages["/catalog/1.html"].body.decode().replace("</ul>", f"</ul>{links}")
    site.page("/catalog/1.html", page)
    return data


@pytest.mark.slow
def test_bad_pages_and_photos_are_recorded_and_the_crawl_goes_on(tmp_path: Path) -> None:
    with MockSite() as site:
        build(site)
        settings = crawl_settings(tmp_path, [site_source(site.url)], timeout_s=2, max_image_mb=15)
        result = crawl(settings, source=["mock"])
        run = result["runs"][0]
        assert run["status"] == "ok", run
        reasons = run["errors_by_reason"]

        # pages
        assert reasons["http_404"] == 1 and reasons["http_500"] == 1
        assert reasons["timeout"] == 1 and reasons["redirect_loop"] == 1 and reasons["data_loss"] == 1
        assert reasons["empty_card"] == 2  # garbage bytes and a page cut inside its JSON-LD
        assert reasons["robots_disallowed"] == 1
        # photos
        assert reasons["photo:not_an_image"] == 1
        assert reasons["photo:too_large"] == 2
        assert reasons["photo:corrupt_image"] == 1
        assert reasons["photo:http_404"] == 1
        assert reasons["photo:robots_disallowed"] == 1
        # doubtful but stored
        assert reasons["warning:no_photo"] >= 1 and reasons["warning:no_sex"] >= 1 and reasons["warning:no_date"] >= 1
        failures = {k: v for k, v in reasons.items() if not k.startswith("warning:")}
        assert run["errors"] == sum(failures.values())

        # the good cards and the doubtful ones are all stored
        rows = listings(settings)
        assert set(rows) == {"l100", "f101", "f102", "l103", "bare", "badphotos"}
        assert {"no_photo", "no_sex", "no_date"} <= set(rows["bare"]["parse_warnings"])
        by_url = {
            p["source_url"].split("/", 3)[3]: p
            for p in photos(settings)
            if p["listing_id"] == rows["badphotos"]["listing_id"]
        }
        assert {u: (p["status"], p["error"]) for u, p in by_url.items()} == {
            "img/html.jpg": ("failed", "not_an_image"),
            "img/huge.jpg": ("failed", "too_large"),
            "img/huge_stream.jpg": ("failed", "too_large"),
            "img/corrupt.jpg": ("failed", "corrupt_image"),
            "private/p.jpg": ("failed", "robots_disallowed"),
            "img/missing.jpg": ("failed", "http_404"),
            "photos/l100.jpg": ("ok", None),
        }
        assert rows["badphotos"]["photo_ids"] == [by_url["photos/l100.jpg"]["photo_id"]]

        # politeness: robots.txt read and obeyed, no non-http link followed
        requested = site.paths()
        assert "/robots.txt" in requested
        assert not any(p.startswith("/private/") for p in requested)
        assert not any(p in ("/x", "/pets/x.html") for p in requested)

        # the run's row in DuckDB carries the reasons, and every failure has a line with its URL
        (db_reasons, errors) = RunsDB(settings.duckdb).query("SELECT errors_by_reason, errors FROM crawl_runs")[0]
        assert json.loads(db_reasons) == reasons and errors == run["errors"]
        lines = [json.loads(x) for x in Path(run["error_log"]).read_text().splitlines()]
        assert {x["reason"] for x in lines} == set(failures)
        assert any(x["url"].endswith("/pets/e404.html") and x["reason"] == "http_404" for x in lines)
