"""A hostile site, crawled end to end: links, redirects and photos aimed at an internal server, redirect chains,
decompression bombs, and contacts in every field a card can fill. Nothing reaches the internal server, every card
keeps its listing, every bad photo is a row with its reason, the run reports each refusal, no contact survives in
any stored text and clean text is stored as written. Plus the decode bounds on their own (crawl and enrich paths).

The contacts are this test's own (not the redaction catalogue's), in the formats posts use: phones of five regions
with odd separators, split by a line break or hidden in an HTML attribute; e-mails plain, spelled out, full-width or
HTML-escaped; handles and profile links; all in JSON-LD and in HTML the source's selectors read."""

from __future__ import annotations

import io
import json
import re
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path

import pytest
from PIL import Image
from scrapy.resolver import CachingThreadedResolver
from twisted.internet import defer

from crawlers.pipelines.photos import PhotoError, process_image
from engine.config import Settings
from engine.images import ImageError, decode_image, open_bounded
from engine.storage import LanceStore, RunsDB
from ray_jobs.crawl import crawl
from tests.mock_site import ListingSite, MockSite, crawl_settings, jsonld_card_html, listings, photos, site_source

MAX_PIXELS = 80_000_000


class IntranetResolver(CachingThreadedResolver):
    """The crawl's DNS resolver (``DNS_RESOLVER``) with an intranet: every ``*.intranet.test`` name answers
    127.0.0.1, as an internal name (or a rebinding attacker's) would. The guard must see that answer through the
    resolver the connection uses, and refuse it."""

    def getHostByName(self, name: str, timeout: object = ()) -> defer.Deferred[str]:
        if name.endswith(".intranet.test"):
            return defer.succeed("127.0.0.1")
        return super().getHostByName(name, timeout)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width: int, height: int, idat: bytes, extra: bytes = b"") -> bytes:
    """An 8-bit RGB PNG with the given (already compressed) pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png_bomb(width: int = 7000, height: int = 7000) -> bytes:
    """49 MP of black, under the 80 MP cap: ~150 KiB of file, 196 MiB as Pillow holds it."""
    z = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * width)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return png(width, height, idat)


def png_huge_header() -> bytes:
    """A header declaring 200000 x 200000 pixels over a few bytes of data (Pillow's own check raises on it)."""
    return png(200_000, 200_000, zlib.compress(b"\x00" * 64))


def png_text_bomb() -> bytes:
    """A small PNG whose compressed text chunk inflates past Pillow's text limit (a ValueError inside Pillow)."""
    text = _chunk(b"zTXt", b"comment\x00\x00" + zlib.compress(b"a" * 2_000_000, 9))
    return png(2, 2, zlib.compress(b"\x00" + b"\x00" * 6 + b"\x00" + b"\x00" * 6), extra=text)


def flat(fmt: str, **save: object) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (4500, 4500)).save(buf, fmt, **save)  # 20 MP of one grey: a few KiB in any lossless format
    return buf.getvalue()


@pytest.mark.parametrize(
    ("fmt", "save"), [("PNG", {}), ("GIF", {}), ("TIFF", {"compression": "tiff_deflate"}), ("WEBP", {"lossless": True})]
)
def test_lossless_bombs_are_refused_before_decoding(fmt: str, save: dict[str, object]) -> None:
    data = flat(fmt, **save)
    for decode in (lambda: open_bounded(data, MAX_PIXELS), lambda: decode_image(data, max_side=1280)):
        with pytest.raises(ImageError) as info:
            decode()
        assert info.value.reason == "too_large" and "bomb" in info.value.detail
    with pytest.raises(PhotoError) as photo:
        process_image(data, 15 << 20, MAX_PIXELS)
    assert photo.value.reason == "too_large"


def test_every_pillow_failure_is_a_photo_reason() -> None:
    cases = {
        png_bomb(): "too_large",
        png_huge_header(): "too_large",
        png_text_bomb(): "corrupt_image",
        png(64, 64, b"not zlib at all"): "corrupt_image",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40: "corrupt_image",
        b"<!doctype html><p>gone</p>": "not_an_image",
    }
    for data, reason in cases.items():
        with pytest.raises(PhotoError) as info:
            process_image(data, 15 << 20, MAX_PIXELS)
        assert info.value.reason == reason, (reason, info.value)
    # an ordinary photo still goes through, and a real (noisy) lossless image of the same size is no bomb
    noisy = io.BytesIO()
    Image.effect_noise((1200, 900), 60).convert("RGB").save(noisy, "PNG")
    stored, ext, width, height, fmt = process_image(noisy.getvalue(), 15 << 20, MAX_PIXELS)
    assert (ext, width, height, fmt) == ("png", 1200, 900, "PNG")
    assert Image.open(io.BytesIO(stored)).size == (1200, 900)


# Phones as posted (each a different number), keyed by the digits of their national number: no 7 of them in a row may
# survive. Two are the same number written two ways (its contact hash must be one).
PHONES = {
    "9037182249": ["+7 (903) 718-22-49", "8 903 718 22 49"],
    "9214043317": ["8.921.404.33.17"],
    "3128460297": ["(312) 846-0297"],
    "4159023386": ["415·902·3386"],
    "674125803": ["+380 (67) 412 58 03"],
    "972154486": ["097 215 44 86"],
    "296381472": ["+375 29 638-14-72"],
    "447712390": ["8 (044) 771-23-90"],
    "7911654321": ["07911 654 321"],
    "7700900461": ["+44 (0) 7700 900 461"],
    "9054401783": ["8 9O5 44O-17-83"],
    "9265558014": ["&#43;7 926 555 80 14"],
    "9163027158": ["+7 916<br>302 71 58"],
    "9856604127": ["8 (985) 660-41-27"],
    "503182764": ["+380 50 318 27 64"],
    "9997013285": ["8 999 701\n32 85"],
    "1614960734": ["0161 496 0734"],
    "173884152": ["+375 (17) 388-41-52"],
    "9172405561": ["+7 (917) 240-55-61"],
    "8005553535": ["8-800-555-35-35"],
    "4952086173": ["8 495 208 61 73"],
    "9035551907": ["8 (903) 555-19-07"],
}
# What must not survive of the other contacts: e-mail local parts, handles, profile paths.
NAMES = ("marina.k77", "dog.finder", "vasya.pupkin", "lena_sh", "kot-ryzhik", "ryzhaya.koshka", "ryzhik_home",
         "poteryashka77", "murka_spb2", "ryzhik_search", "id48213377", "lost.barsik", "571234098",
         "ryzhik.owner")  # fmt: skip
# Text that looks numeric or odd but is no contact: stored exactly as written.
CLEAN = {
    "description": ["Lost 2026-10-02 18:30 near Elm park", "seen again 15.10.2026 в 14:45", "Reward 5 000 rub or $250",
                    "weighs 12.5 kg", "2-3 years", "collar tag 6-8 months old", "Postcode SW1A 1AA, 190000",
                    "Немецкая овчарка", "price range 150 000 - 200 000"],
    "name": ["Ryzhik"],
    "breed": ["Jack Russell Terrier"],
    "location_text": ["Springfield, SW1A 1AA"],
    "shelter_name": ["Friends of Paws"],
}  # fmt: skip


def contact_cards(base: dict[str, object]) -> tuple[dict[str, object], dict[str, object], str]:
    """Two cards with contacts in every field: one all JSON-LD, one whose free text is HTML the source's selectors
    read (text split by a line break, a ``title`` and an ``alt``); and the body of the second."""
    jsonld = {
        **base,
        "identifier": "contacts",
        "name": "Ryzhik 8.921.404.33.17",
        "description": "Lost 2026-10-02 18:30 near Elm park (seen again 15.10.2026 в 14:45). Reward 5 000 rub or "
        "$250, weighs 12.5 kg, 2-3 years, collar tag 6-8 months old. Postcode SW1A 1AA, 190000. Немецкая овчарка, "
        "price range 150 000 - 200 000. Call (312) 846-0297 or 415·902·3386, 8 9O5 44O-17-83, &#43;7 926 555 80 14,"
        " 8 999 701\n32 85; write dog.finder (at) gmail (dot) com, vasya.pupkin[at]bk[dot]ru, lena_sh собака mail "
        "точка ru, kot-ryzhik＠inbox.ru or ryzhaya.koshka&#64;mail.ru; telegram: poteryashka77, вайбер: murka_spb2, "
        "instagram.com/lost.barsik, https://ok.ru/profile/571234098",
        "breed": "Jack Russell Terrier, 097 215 44 86",
        "color": ["рыжий", "white; marina.k77@yandex.ru"],
        "gender": "кобель, звоните 8 (044) 771-23-90",
        "age": "2-3 years (07911 654 321)",
        "size": "medium, +44 (0) 7700 900 461",
        "status": "active @ryzhik_home",
        "kind": "lost — tel. 0161 496 0734",
        "ageGroup": "adult; 8-800-555-35-35",
        "datePosted": "вчера, +7 (917) 240-55-61",
        "geo": {"latitude": "55.75 (call 8 495 208 61 73)", "longitude": 37.61},
        "url": "https://vk.com/ryzhik.owner",
        "address": {"addressLocality": "Springfield, SW1A 1AA", "addressRegion": "+380 (67) 412 58 03",
                    "addressCountry": "https://t.me/ryzhik_search"},
        "shelter": {"identifier": "+375 (17) 388-41-52", "name": "Friends of Paws +375 29 638-14-72 vk.com/id48213377"},
        "telephone": "+7 (903) 718-22-49",
        "author": {"name": "Marina", "email": "marina.k77@yandex.ru"},
    }  # fmt: skip
    html_card = {**base, "identifier": "murka-8 (903) 555-19-07", "name": "Murka", "telephone": "8 903 718 22 49"}
    body = (
        '<div class="note"><p>Нашли кошку. Звоните +7 916<br>302 71 58</p>'
        '<span title="8 (985) 660-41-27">phone on hover</span><img alt="or +380 50 318 27 64"></div>'
        '<span class="place">Springfield, SW1A 1AA, 8 999 701\n32 85</span>'
        '<div class="shelter">Friends of Paws <b>@ryzhik_home</b></div>'
    )
    return jsonld, html_card, body


CONTACT_SELECTORS = {
    "description": "xpath://div[@class='note']//text() | //div[@class='note']//@title | //div[@class='note']//@alt",
    "location_text": "span.place::text",
    "shelter_name": "div.shelter ::text",
}


def contacts_in(text: str) -> list[str]:
    """The test's contacts found in ``text``: a name, or 7 digits in a row of a test phone in a run of digits and
    phone separators."""
    low = text.lower()
    found = [n for n in NAMES if n in low]
    runs = ["".join(re.findall(r"\d", r)) for r in re.findall(r"\d[\d\s().·/-]*", text)]
    for nsn in PHONES:
        if any(nsn[i : i + 7] in run for i in range(len(nsn) - 6) for run in runs):
            found.append(nsn)
    return found


def stored_texts(settings: Settings, error_log: str) -> list[str]:
    """Every stored text of the crawl, value by value (as stored, not JSON-escaped, so a line break stays one):
    every column of every listings, photos and crawl_state row, every crawl_runs column, the error log."""
    store = LanceStore(settings.lance)
    rows: list[Iterable[object]] = [r.values() for t in ("listings", "photos", "crawl_state")
                                    for r in store.read(t).to_pylist()]  # fmt: skip
    rows += RunsDB(settings.duckdb).query("SELECT * FROM crawl_runs")
    values = [v for row in rows for value in row for v in (value if isinstance(value, list) else [value])]
    return [str(v) for v in values if v is not None] + [Path(error_log).read_text()]


def redirect(site: MockSite, path: str, location: str) -> None:
    site.page(path, b"", status=302, headers={"Location": location})


@pytest.mark.slow
def test_hostile_site_reaches_nothing_internal_and_keeps_every_card(tmp_path: Path) -> None:
    with MockSite() as site, MockSite() as inner:
        port = inner.server.server_address[1]
        inner.page("/admin.html", jsonld_card_html({"@type": "homeward:Listing", "identifier": "admin",
                                                    "kind": "lost", "species": "dog", "name": "Admin"}))  # fmt: skip
        inner.page("/p.jpg", ListingSite.photo(1), content_type="image/jpeg")
        internal_pages = [
            f"{inner.url}/admin.html",
            f"http://localhost:{port}/admin.html",
            f"http://2130706433:{port}/admin.html",
            f"http://0x7f.1:{port}/admin.html",
            f"http://[::ffff:127.0.0.1]:{port}/admin.html",
            f"http://admin.intranet.test:{port}/admin.html",  # a name: resolved, then refused
            f"http://127.1:{port}/admin.html?owner=vasya.pupkin@bk.ru",  # a contact in the link: logged redacted
        ]
        data = ListingSite(site, n=3, per_page=50)
        hostile_photos = [
            f"{inner.url}/p.jpg",  # straight at the internal server
            f"http://localhost:{port}/p.jpg",
            "/img/hop1.jpg",  # two redirects, then a good image: followed
            "/img/evil.jpg",  # a redirect into the internal server: blocked at the hop
            "/img/loop.jpg",  # a redirect loop: bounded
            "/img/bomb.png",
            "/img/tall.png",
            "/img/ok.jpg",
        ]
        base = {"@type": "homeward:Listing", "kind": "lost", "species": "dog", "gender": "male",
                "eventDate": "2026-10-02", "description": "Lost near the park."}  # fmt: skip
        data.posts["hostile"] = {**base, "identifier": "hostile", "name": "Hostile", "image": hostile_photos}
        data.posts["bombonly"] = {**base, "identifier": "bombonly", "name": "Bomb", "image": ["/img/bomb.png"]}
        data.posts["hop"] = {**base, "identifier": "hop", "name": "Redirected card"}
        with_contacts, html_contacts, html_body = contact_cards(base)
        data.posts["contacts"], data.posts["contacts-html"] = with_contacts, html_contacts
        data.render()
        site.page(data.card_path("contacts-html"), jsonld_card_html(html_contacts, html_body))
        redirect(site, data.card_path("hop"), f"{inner.url}/admin.html?from=hop")  # a card redirected inside
        redirect(site, "/img/hop1.jpg", "/img/hop2.jpg")
        redirect(site, "/img/hop2.jpg", f"{site.url}/img/good.jpg")
        redirect(site, "/img/evil.jpg", f"http://127.0.0.1:{port}/p.jpg")
        site.misbehave("/img/loop.jpg", "redirect_loop")
        site.page("/img/good.jpg", ListingSite.photo(2), content_type="image/jpeg")
        site.page("/img/ok.jpg", ListingSite.photo(3), content_type="image/jpeg")
        site.page("/img/bomb.png", png_bomb(), content_type="image/png")
        site.page("/img/tall.png", png_huge_header(), content_type="image/png")
        links = "".join(f'<a class="card" href="{u}">x</a>' for u in internal_pages)
        site.page("/catalog/1.html", site.pages["/catalog/1.html"].body.decode().replace("</ul>", f"</ul>{links}"))

        resolver = {"DNS_RESOLVER": "tests.test_hostile_site.IntranetResolver"}
        source = site_source(site.url, scrapy_settings=resolver, selectors={"fields": CONTACT_SELECTORS})
        settings = crawl_settings(tmp_path, [source])
        run = crawl(settings, source=["mock"])["runs"][0]

        assert inner.paths() == []  # not one request (not even robots.txt) reached the internal server
        reasons = run["errors_by_reason"]
        assert reasons["blocked_address"] == len(internal_pages) + 1, reasons  # the links and the card's redirect
        assert reasons["photo:blocked_address"] == 3 and reasons["photo:redirect_loop"] == 1
        assert reasons["photo:too_large"] == 3
        failures = {k: v for k, v in reasons.items() if not k.startswith("warning:")}
        assert run["errors"] == sum(failures.values()) and run["log_errors"] == 0  # recorded, nothing dropped
        lines = [json.loads(x) for x in Path(run["error_log"]).read_text().splitlines()]
        blocked = {x["url"] for x in lines if x["reason"] == "blocked_address"}
        logged = {u.replace("vasya.pupkin@bk.ru", "[email]") for u in internal_pages}
        assert blocked == {*logged, f"{inner.url}/admin.html?from=hop"}

        rows = listings(settings)
        # every card keeps its listing (the one whose id is a phone under its redacted id)
        assert set(rows) == {*data.posts} - {"hop", "contacts-html"} | {"murka-[phone]"} and "admin" not in rows
        by_url = {p["source_url"]: p for p in photos(settings) if p["listing_id"] == rows["hostile"]["listing_id"]}
        assert {u.replace(site.url, ""): (p["status"], p["error"]) for u, p in by_url.items()} == {
            f"{inner.url}/p.jpg": ("failed", "blocked_address"),
            f"http://localhost:{port}/p.jpg": ("failed", "blocked_address"),
            "/img/hop1.jpg": ("ok", None),
            "/img/evil.jpg": ("failed", "blocked_address"),
            "/img/loop.jpg": ("failed", "redirect_loop"),
            "/img/bomb.png": ("failed", "too_large"),
            "/img/tall.png": ("failed", "too_large"),
            "/img/ok.jpg": ("ok", None),
        }
        assert len(rows["hostile"]["photo_ids"]) == 2
        bomb_rows = [p for p in photos(settings) if p["listing_id"] == rows["bombonly"]["listing_id"]]
        assert [(p["status"], p["error"]) for p in bomb_rows] == [("failed", "too_large")]
        assert site.hits("/img/good.jpg") == 1 and site.hits("/img/loop.jpg") >= 3

        # contacts: none survives anywhere; clean text is stored as written; one phone, one hash
        html_row = rows["murka-[phone]"]
        assert rows["contacts"]["url"] == f"{site.url}/pets/contacts.html"  # not the owner's profile
        assert rows["contacts"]["shelter_id"] == "[phone]"
        leaks = {t[:120]: contacts_in(t) for t in stored_texts(settings, run["error_log"]) if contacts_in(t)}
        assert leaks == {}, leaks
        for key, cleans in CLEAN.items():
            assert all(c in rows["contacts"][key] for c in cleans), (key, rows["contacts"][key])
        assert html_row["location_text"].startswith("Springfield, SW1A 1AA, ")
        assert html_row["shelter_name"].startswith("Friends of Paws ")
        assert html_row["description"].count("[phone]") == 3, html_row["description"]
        hashes = {rows[k]["contact_hash"] for k in ("contacts", "murka-[phone]")}
        assert len(hashes) == 1 and None not in hashes
