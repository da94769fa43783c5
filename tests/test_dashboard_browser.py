"""The dashboard in a real browser: headless Debian Chromium, driven by playwright, against a real server thread.

Install the browser with ``apt-get install -y chromium`` (CI's ``.ci/run`` does). Playwright's own browser download
(``playwright install``) is never used: it needs the internet, and Debian's build is what runs here.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: install Debian's browser with `apt-get install -y chromium` to run the browser test",
        allow_module_level=True,
    )

from playwright.sync_api import expect, sync_playwright  # noqa: E402 - only once the browser is known to exist

from dashboards import sample  # noqa: E402
from dashboards.app import make_server  # noqa: E402
from engine.search import SearchHit, SearchResult  # noqa: E402
from engine.storage import RunsDB  # noqa: E402

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def decoded_width(page, img) -> int:
    """The natural width of an <img> once the browser has loaded and decoded it (lazy images are scrolled to)."""
    img.scroll_into_view_if_needed()
    page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=img.element_handle(), timeout=20_000)
    return img.evaluate("el => el.naturalWidth")


@pytest.fixture()
def served(settings):
    info = sample.populate(settings)
    server = make_server(settings, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.url, info
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture()
def browser():
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, timeout=60_000)
        try:
            yield chromium
        finally:
            chromium.close()


def test_confirm_a_match_by_clicking(served, browser, settings, tmp_path):
    url, info = served
    lost, found = info["listings"]["lost_buddy"], info["listings"]["shelter_a102"]
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

    page.goto(f"{url}/shelters")
    page.get_by_role("link", name="review →").first.wait_for()
    page.locator("tr", has_text="Seattle Animal Shelter").get_by_role("link", name="review →").click()
    expect(page.get_by_role("heading", name="Review candidates · Seattle Animal Shelter")).to_be_visible()

    card = page.locator(f'section.candidate[data-lost="{lost}"][data-found="{found}"]')
    expect(card).to_have_count(1)
    # Both photos of the pair come from the photo store and really decode in the browser.
    for img in card.locator("img").all():
        assert img.get_attribute("src").startswith("/photo/")
        assert decoded_width(page, img) > 0

    page.fill("#who", "Dana at intake")
    card.get_by_label("note").fill("owner brought vet papers")
    card.get_by_role("button", name="✓ Confirm").click()
    expect(card.locator(".status-line")).to_have_text("confirmed ✓ saved", timeout=15_000)

    rows = RunsDB(settings.duckdb).query(
        "SELECT verdict, who, note FROM feedback WHERE lost_listing_id = ? AND found_listing_id = ?", [lost, found]
    )
    assert rows == [("confirmed", "Dana at intake", "owner brought vet papers")]
    shot = tmp_path / "shelter-confirmed.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # Reject another candidate: after a reload it has left the page (and so future reports).
    other = page.locator(f'section.candidate[data-found="{info["listings"]["shelter_a101"]}"]')
    other.get_by_role("button", name="✗ Reject").click()
    expect(other.locator(".status-line")).to_have_text("rejected ✓ saved", timeout=15_000)
    page.reload()
    expect(page.locator("section.candidate")).to_have_count(1)
    assert errors == [], errors


def test_operator_and_analyst_pages_render(served, browser, tmp_path):
    url, _ = served
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{url}/operators")
    expect(page.locator("#crawl-health tr", has_text="craigslist")).to_contain_text("never succeeded")
    page.screenshot(path=str(tmp_path / "operators.png"), full_page=True)
    page.get_by_role("link", name="Analysts").click()
    expect(page.locator("#reunion-count")).to_have_text("2")
    bars = page.locator("#score-distribution .bar")
    assert bars.count() == 5
    page.screenshot(path=str(tmp_path / "analysts.png"), full_page=True)


def test_search_by_photo_upload(settings, browser, tmp_path):
    """The upload form in the browser: a file chosen, place and radius typed, results shown with stored photos.
    The search engine is handed in through make_server (engine.search is tested on its own)."""
    info = sample.populate(settings)
    received: list[dict] = []

    def search(cfg, image, *, species=None, near=None, radius_km=None, k=10) -> SearchResult:
        received.append({"size": image.size, "species": species, "near": near, "radius_km": radius_km})
        return SearchResult(
            model="fake",
            species=species or "unknown",
            detections=[],
            fallback_full_frame=False,
            results=[
                SearchHit(
                    rank=rank,
                    listing_id=info["listings"][name],
                    source="petango",
                    url="https://www.petango.com/x",
                    kind="shelter",
                    species="dog",
                    name=None,
                    location=None,
                    event_date=None,
                    posted_at=None,
                    distance_km=None,
                    score=score,
                    image_sim=score,
                    photo_id=info["photos"][name],
                    explanation="",
                )
                for rank, (name, score) in enumerate((("shelter_a101", 0.91), ("shelter_a102", 0.44)), start=1)
            ],
        )

    server = make_server(settings, port=0, search_fn=search)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    upload = tmp_path / "my-dog.jpg"
    upload.write_bytes(sample.make_photo((20, 20, 24), (120, 170, 90), size=(640, 480), exif=False))
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{server.url}/search")
        page.set_input_files("input[name=photo]", str(upload))
        page.select_option("select[name=species]", "dog")
        page.fill("input[name=near]", "47.61,-122.33")
        page.fill("input[name=radius_km]", "20")
        page.get_by_role("button", name="Search").click()
        cards = page.locator("#search-results .card")
        expect(cards).to_have_count(2)
        for img in cards.locator("img").all():
            assert decoded_width(page, img) > 0
        page.screenshot(path=str(tmp_path / "search.png"), full_page=True)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert received == [{"size": (640, 480), "species": "dog", "near": (47.61, -122.33), "radius_km": 20.0}]
