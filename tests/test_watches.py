"""Owner watches: add, list, remove; alerts after a match run, each listing once; unsubscribe; nothing leaked."""

from __future__ import annotations

import email
import email.policy
import io
import json
import re
import urllib.parse
from pathlib import Path

import duckdb
import pytest

from dashboards.alerts import deliver_watch_alerts
from engine import analyst, ids, schema, watches
from engine.errors import HomewardError
from engine.storage import LanceStore, PhotoStore, RunsDB, upsert_listings, upsert_photos
from ray_jobs import cli
from tests.test_report import Inbox, smtp_server  # noqa: F401  (the local SMTP server fixture)
from tests.test_search import PixelEmbedder, animal_image, fake_models, index  # noqa: F401  (fixture)

SEATTLE = "47.6062,-122.3321"
HOSTILE = '<script>alert("x")</script> Green Lake'


@pytest.fixture()
def indexed(settings, fake_models, tmp_path) -> dict:  # noqa: F811
    """12 synthetic listings (lost, found, shelter in turn) and the owner's photo: listing 4's (a found dog)."""
    listing_ids = index(settings, PixelEmbedder())
    store = LanceStore(settings.lance)
    row = store.read("listings", where=f"listing_id = '{listing_ids[4]}'").to_pylist()[0]
    row.update(location_text=HOSTILE, url="https://example.org/4?a=1&b=2")
    upsert_listings(store, [row])
    photo = tmp_path / "buddy.png"
    animal_image(4).save(photo)
    return {"ids": listing_ids, "photo": str(photo)}


def add(settings, photo: str, to: str = "owner@example.org", **kw) -> dict:
    return watches.add(settings, photo=photo, near=SEATTLE, radius_km=25, email=to, **kw)


def mail(settings, port: int, **extra):
    return settings.with_overrides({"report": {"smtp_host": "127.0.0.1", "smtp_port": port, **extra}})


def parsed(inbox: Inbox) -> list[email.message.EmailMessage]:
    return [email.message_from_bytes(data, policy=email.policy.default) for _, data in inbox.messages]


def test_add_list_remove(settings, indexed):
    saved = add(settings, indexed["photo"], species="dog", threshold=0.7)
    assert saved["model"] == "test:pixels" and saved["crops"] == 1 and saved["threshold"] == 0.7
    (listed,) = watches.list_watches(settings)["watches"]
    assert listed["watch_id"] == saved["watch_id"] and listed["email"] == "owner@example.org"
    assert listed["species"] == "dog" and listed["radius_km"] == 25 and listed["active"]
    assert "vectors" not in listed and "unsubscribe_hash" not in listed
    watches.remove(settings, saved["watch_id"])
    assert watches.list_watches(settings)["count"] == 0
    (ended,) = watches.list_watches(settings, all=True)["watches"]
    assert not ended["active"] and ended["email"] == "" and ended["ended"] is not None  # the address is erased
    with pytest.raises(HomewardError, match="no watch"):
        watches.remove(settings, "w-nope")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"email": "owner@example.org\nBcc: all@example.org"}, "one e-mail address"),
        ({"email": "Owner <o@example.org>, x@example.org"}, "one e-mail address"),
        ({"near": "not a place"}, "near"),
        ({"radius_km": 0}, "radius"),
        ({"threshold": 1.5}, "threshold"),
        ({"species": "horse"}, "species"),
        ({"language": "ru\nBcc: all@example.org"}, "language code"),
    ],
)
def test_bad_watches_are_refused(settings, indexed, kw, message):
    args = {"photo": indexed["photo"], "near": SEATTLE, "radius_km": 25, "email": "o@example.org", **kw}
    with pytest.raises(HomewardError, match=message):
        watches.add(settings, **args)
    with RunsDB(settings.duckdb).read() as con:
        assert con.execute("SELECT count(*) FROM watches").fetchone()[0] == 0


def test_alerts_are_sent_once_per_listing_and_stop_on_unsubscribe(settings, indexed, smtp_server):  # noqa: F811
    inbox, port = smtp_server
    cfg = mail(settings, port, dashboard_url="https://dash.example.org")
    saved = add(cfg, indexed["photo"], threshold=0.6)
    other = add(cfg, indexed["photo"], to="neighbour@example.org", threshold=0.6)

    first = deliver_watch_alerts(cfg, "match-1")
    assert first["watches"] == 2 and first["emailed"] == 2 and "problems" not in first
    by_owner = {m["To"]: m for m in parsed(inbox)}
    assert set(by_owner) == {"owner@example.org", "neighbour@example.org"}  # one message per owner
    msg = by_owner["owner@example.org"]
    html, text = msg.get_body(("html",)).get_content(), msg.get_body(("plain",)).get_content()
    assert "neighbour@example.org" not in msg.as_string() and other["watch_id"] not in msg.as_string()
    assert "https://example.org/4?a=1&amp;b=2" in html and "https://example.org/4?a=1&b=2" in text
    assert "<script>" not in html and "&lt;script&gt;" in html  # crawled text is escaped
    assert "no photo" in html  # listing 4's photo was never stored: no image, no remote fetch
    assert all(f"https://example.org/{i}\n" not in text for i in (0, 3, 6, 9))  # lost posts are never alerted
    token = watches.unsubscribe_token(cfg, saved["watch_id"])
    link = f"https://dash.example.org/unsubscribe?token={token}"
    assert link in text and f'href="{link}"' in html and msg["List-Unsubscribe"].strip() == f"<{link}>"
    with RunsDB(settings.duckdb).read() as con:
        sent = con.execute(
            "SELECT listing_id, run_id FROM watch_alerts WHERE watch_id = ?", [saved["watch_id"]]
        ).fetchall()
        stored_hash = con.execute("SELECT unsubscribe_hash FROM watches WHERE watch_id = ?", [saved["watch_id"]])
        assert token not in stored_hash.fetchone()[0]  # only a hash of the token is kept
    assert (indexed["ids"][4], "match-1") in sent

    assert deliver_watch_alerts(cfg, "match-2")["emailed"] == 0 and len(inbox.messages) == 2  # nothing new

    new_id = add_found_listing(settings, seed=4, source_id="new-1")
    third = deliver_watch_alerts(cfg, "match-3")
    assert third["emailed"] == 2 and third["listings"] == 2
    latest = {m["To"]: m for m in parsed(inbox)[2:]}
    text = latest["owner@example.org"].get_body(("plain",)).get_content()
    assert "https://example.org/new-1" in text and "https://example.org/4?" not in text
    html = latest["owner@example.org"].get_body(("html",)).get_content()
    (cid,) = re.findall(r'<img src="cid:([^"]+)"', html)
    (photo,) = [p for p in latest["owner@example.org"].walk() if p.get_content_type() == "image/jpeg"]
    assert photo["Content-ID"] == f"<{cid}>" and photo.get_content_disposition() == "inline"
    assert "data:image" not in html
    with RunsDB(settings.duckdb).read() as con:
        assert con.execute("SELECT count(*) FROM watch_alerts WHERE listing_id = ?", [new_id]).fetchone()[0] == 2

    token_in_link = urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)["token"][0]
    assert watches.unsubscribe(cfg, token_in_link) is True
    assert watches.unsubscribe(cfg, "not-a-token") is False
    add_found_listing(settings, seed=4, source_id="new-2")
    fourth = deliver_watch_alerts(cfg, "match-4")
    assert fourth["watches"] == 1 and [m["To"] for m in parsed(inbox)[4:]] == ["neighbour@example.org"]


def test_alerts_are_in_the_watchs_language(settings, indexed, smtp_server):  # noqa: F811
    """A watch saved with ``language: ru`` gets its alert in Russian (subject, text and HTML, dates and plurals as
    Babel writes them); one without stays English; one asking for a language with no catalogue gets English and the
    job says so."""
    inbox, port = smtp_server
    cfg = mail(settings, port, dashboard_url="https://dash.example.org")
    ru = add(cfg, indexed["photo"], to="ru@example.org", threshold=0.6, language="ru")
    add(cfg, indexed["photo"], to="en@example.org", threshold=0.6)
    xx = add(cfg, indexed["photo"], to="xx@example.org", threshold=0.6, language="xx")
    assert ru["language"] == "ru" and watches.list_watches(cfg)["watches"][-1]["language"] == "ru"

    result = deliver_watch_alerts(cfg, "match-1")
    assert result["emailed"] == 3 and result["language_fallbacks"] == {xx["watch_id"]: "xx"}
    by_owner = {m["To"]: m for m in parsed(inbox)}
    n = result["listings"] // 3
    msg = by_owner["ru@example.org"]
    html, text = msg.get_body(("html",)).get_content(), msg.get_body(("plain",)).get_content()
    assert msg["Subject"].startswith(f"Homeward: {n} ") and "может быть ваш питомец" in msg["Subject"]
    assert '<html lang="ru">' in html and "Никогда не платите" in html and "Открыть объявление" in html
    assert "Never pay" not in html and "See the listing" not in html
    assert "найден" in text and "Отписаться от уведомлений: https://dash.example.org/unsubscribe?token=" in text
    assert "Never pay" not in text and "score" not in text
    for owner in ("en@example.org", "xx@example.org"):
        english = by_owner[owner]
        assert "may show your pet" in english["Subject"]
        assert '<html lang="en">' in english.get_body(("html",)).get_content()


def _translated(catalog, msgid: str) -> bool:
    entry = catalog.get(msgid)
    strings = () if entry is None else entry.string if isinstance(entry.string, tuple) else (entry.string,)
    return bool(strings) and all(strings)


def test_every_message_has_a_translation_in_every_catalogue():
    """What ``pybabel extract`` finds in dashboards/ (Python and templates) is translated in each catalogue: a new
    English text without its translation fails here, not in a shelter's or owner's inbox."""
    from babel.messages.extract import extract_from_dir
    from babel.messages.pofile import read_po

    from dashboards import i18n

    method_map = [("**.py", "python"), ("**/templates/**.html", "jinja2")]
    options = {"**/templates/**.html": {"extensions": "jinja2.ext.i18n"}}
    keywords = {"_": None, "N_": None, "gettext": None, "ngettext": (1, 2)}
    found = extract_from_dir(str(Path(i18n.__file__).parent), method_map, options, keywords=keywords)
    extracted = {msg if isinstance(msg, str) else msg[0] for _, _, msg, _, _ in found}
    assert "Stop these alerts" in extracted and "Possible reunions for %(name)s" in extracted
    for language in set(i18n.available()) - {i18n.DEFAULT}:
        with (i18n.LOCALES / language / "LC_MESSAGES" / f"{i18n.DOMAIN}.po").open("rb") as fh:
            catalog = read_po(fh, locale=language)
        untranslated = sorted(m for m in extracted if not _translated(catalog, m))
        assert untranslated == [], (language, untranslated)


def add_found_listing(settings, seed: int, source_id: str) -> str:
    """A found dog near Seattle whose photo looks like the owner's, enriched (a later crawl and enrich)."""
    image = animal_image(seed)
    vector = PixelEmbedder().embed([image])[0]
    lid = ids.listing_id("synthetic", source_id)
    jpeg = io.BytesIO()
    image.save(jpeg, "JPEG")
    pid, uri = PhotoStore(settings.photos).put(jpeg.getvalue(), "jpg")
    store = LanceStore(settings.lance)
    upsert_photos(store, [dict(photo_key=f"k-{source_id}", photo_id=pid, listing_id=lid, uri=uri, status="ok")])
    upsert_listings(store, [dict(listing_id=lid, source="synthetic", source_id=source_id, kind="found",
                                 url=f"https://example.org/{source_id}", status="active", species="dog",
                                 lat=47.61, lon=-122.33, photo_ids=[pid])])  # fmt: skip
    store.upsert("detections", [dict(detection_id=f"d-{source_id}", photo_id=pid, listing_id=lid,
                                     species="dog", confidence=0.9, embedding=vector.tolist(),
                                     embed_model="test:pixels", status="ok")],
                 key="detection_id", table_schema=schema.detections_schema(vector.shape[0], 8))  # fmt: skip
    return lid


def test_a_failed_send_is_retried_next_run(settings, indexed):
    from tests.test_report import free_port

    cfg = mail(settings, free_port(), smtp_timeout_s=3)  # nothing listens
    saved = add(cfg, indexed["photo"])
    result = deliver_watch_alerts(cfg, "match-1")
    assert result["emailed"] == 0 and "cannot connect" in result["problems"][saved["watch_id"]]
    with RunsDB(settings.duckdb).read() as con:
        assert con.execute("SELECT count(*) FROM watch_alerts").fetchone()[0] == 0


def test_without_smtp_nothing_is_recorded_and_it_says_why(settings, indexed):
    saved = add(settings, indexed["photo"])
    result = deliver_watch_alerts(settings)
    assert result["emailed"] == 0 and "smtp_host" in result["problems"][saved["watch_id"]]


def test_a_watch_of_another_embedder_says_so(settings, indexed, smtp_server):  # noqa: F811
    _, port = smtp_server
    saved = add(settings, indexed["photo"])
    with RunsDB(settings.duckdb).write() as con:
        con.execute("UPDATE watches SET embed_model = 'old:model'")
    result = deliver_watch_alerts(mail(settings, port))
    assert result["problems"][saved["watch_id"]].startswith("model_changed")


def test_the_analyst_copy_withholds_owners_addresses(settings, indexed):
    add(settings, indexed["photo"])
    path = Path(analyst.publish(settings)["analyst_db"])
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT email, unsubscribe_hash FROM watches").fetchall() == [("withheld", "withheld")]
    with RunsDB(settings.duckdb).read() as con:
        assert con.execute("SELECT email FROM watches").fetchone()[0] == "owner@example.org"


def test_cli_watch_verbs(settings, indexed, capsys):
    base = ["--data-dir", settings.data_dir]
    args = ["watch", "add", "--photo", indexed["photo"], "--near", SEATTLE, "--radius-km", "10"]
    assert cli.main([*base, *args, "--email", "o@example.org", "--species", "dog"]) == 0
    watch_id = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["watch_id"]
    assert cli.main([*base, "watch", "list"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["watches"][0]["watch_id"] == watch_id
    assert cli.main([*base, "watch", "remove", watch_id]) == 0
    assert cli.main([*base, "watch", "notify", "--run-id", "match-9"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["watches"] == 0


def test_dashboard_saves_a_watch_and_one_click_unsubscribe_ends_it(settings, indexed):
    """The search page's watch form saves a watch from an upload; the alert's unsubscribe link works as a page and as
    a mail client's one-click POST (RFC 8058: from the mail provider's servers, no Origin)."""
    from fastapi.testclient import TestClient

    from dashboards.app import create_app
    from dashboards.pages import Dashboard

    dash = Dashboard(settings, host="127.0.0.1")
    client = TestClient(create_app(dash), base_url="http://127.0.0.1:8501")
    origin = {"origin": "http://127.0.0.1:8501"}
    photo = Path(indexed["photo"]).read_bytes()
    form = {"form_key": dash.form_key, "email": "owner@example.org", "near": SEATTLE, "radius_km": "15"}
    refused = client.post("/watch", data={**form, "email": ""}, files={"photo": ("b.png", photo)}, headers=origin)
    assert refused.status_code == 400 and "e-mail address" in refused.text
    assert watches.list_watches(settings)["count"] == 0
    page = client.get("/search", headers={"accept-language": "ru-RU,ru;q=0.9,en;q=0.8"})
    assert '<option value="ru" selected>' in page.text  # alerts default to the browser's language
    assert '<option value="en" selected>' in client.get("/search", headers={"accept-language": "de"}).text
    unknown = {**form, "language": "xx"}
    refused = client.post("/watch", data=unknown, files={"photo": ("b.png", photo)}, headers=origin)
    assert refused.status_code == 400 and "alerts can be in English, русский" in refused.text
    saved = client.post("/watch", data={**form, "language": "ru"}, files={"photo": ("b.png", photo)}, headers=origin)
    assert saved.status_code == 200 and 'id="watch-saved"' in saved.text, saved.text[:500]
    (watch,) = watches.list_watches(settings)["watches"]
    assert watch["email"] == "owner@example.org" and watch["radius_km"] == 15 and watch["language"] == "ru"

    token = watches.unsubscribe_token(settings, watch["watch_id"])
    page = client.get("/unsubscribe", params={"token": token})
    assert page.status_code == 200 and 'id="unsubscribe-form"' in page.text
    assert watches.list_watches(settings)["count"] == 1  # a GET (a link scanner) changes nothing
    assert client.post("/unsubscribe", params={"token": "not-a-token"}).status_code == 404
    one_click = client.post("/unsubscribe", params={"token": token}, data={"List-Unsubscribe": "One-Click"})
    assert one_click.status_code == 200 and 'id="unsubscribed"' in one_click.text
    assert watches.list_watches(settings)["count"] == 0
