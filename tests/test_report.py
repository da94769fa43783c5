"""Shelter reports: content, privacy, atomic files, feedback, CLI, and e-mail through a real local SMTP server."""

from __future__ import annotations

import base64
import csv
import email
import email.policy
import html as html_lib
import io
import json
import re
import socket
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from PIL import Image

from dashboards import sample
from dashboards.access import shelter_token
from dashboards.report import REPORT_SCHEMA, atomic_write, csv_cell, report
from engine import run_rows
from engine.errors import HomewardError
from engine.storage import RunsDB
from ray_jobs import cli

SEAS, ASTN = "petango:SEAS", "petharbor:ASTN"  # shelter keys: source:shelter_id
# Stored text is redacted by the crawl; the report shows it as stored (a date and a price range are no phone).
STORED_TEXT = "Green Lake, Seattle, seen 12.05.2025 18:30, reward $50-100 or 10 000 - 15 000 RUB, [phone]"


@pytest.fixture()
def populated(settings) -> dict[str, Any]:
    info = sample.populate(settings)
    with RunsDB(settings.duckdb).write() as con:
        con.execute(
            "UPDATE listings SET location_text = ? WHERE listing_id = ?", [STORED_TEXT, sample.lid("lost_buddy")]
        )
    return info


def by_shelter(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["shelter"]: e for e in result["reports"]}


def embedded_jpegs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', html)]


def test_report_for_every_shelter(settings, populated):
    result = report(settings, all=True)
    assert result["run_id"] == "match-latest"
    shelters = by_shelter(result)
    assert set(shelters) == {SEAS, ASTN, "pet911"}  # pet911: a found post with no shelter groups by source
    assert shelters[SEAS]["rows"] == 2  # buddy/a101 (confirmed), buddy/a102; luna/a101 was rejected
    assert shelters[ASTN]["rows"] == 1 and shelters["pet911"]["rows"] == 1
    assert result["rows"] == 4
    assert shelters[SEAS]["token"] == shelter_token(settings, SEAS)
    for entry in shelters.values():
        for kind in ("html", "csv", "parquet"):
            assert Path(entry[kind]).is_file() and Path(entry[kind]).stat().st_size > 0
            assert Path(entry[kind]).parent == Path(settings.reports) / "match-latest"
    leftovers = [p.name for p in (Path(settings.reports) / "match-latest").iterdir() if ".tmp" in p.name]
    assert leftovers == []


def test_html_is_self_contained_with_photos_evidence_links_and_warning(settings, populated):
    entry = by_shelter(report(settings, shelter=SEAS))[SEAS]
    html = Path(entry["html"]).read_text()
    assert "Never pay anyone who claims to have your pet" in html
    assert "Seattle Animal Shelter" in html
    # both original posts, as links
    assert 'href="https://seattle.craigslist.org/laf/7781.html"' in html
    assert 'href="https://www.petango.com/Adopt/Dog-Labrador-Retriever-A101"' in html
    # score and every evidence term, dates and distance
    for text in (
        "0.91",
        "0.93",
        "Photo similarity",
        "Description similarity",
        "Attributes agree",
        "Distance prior",
        "Time prior",
        "7.4 km",
        "confirmed",
    ):
        assert text in html
    lost_date = str((populated["now"] - __import__("datetime").timedelta(days=10)).date())
    assert lost_date in html
    # nothing is fetched: no remote image, no script, no stylesheet link
    assert not re.search(r'<img[^>]+src="https?:', html)
    assert "<script" not in html and "<link" not in html
    assert "img.example.invalid" not in html
    # the rejected pair and the unpublished run's pair are absent
    assert "Ballard" not in html and "Dog-Pit-Bull-A102" in html  # a102 is a real open candidate ...
    assert "0.99" not in html  # ... but the ghost pair's score from the running run never shows
    # photos side by side: 2 per row, downscaled, EXIF-free although the stored files carry GPS tags
    jpegs = embedded_jpegs(html)
    assert len(jpegs) == 4
    stored = next(Path(settings.photos).rglob("*.jpg")).read_bytes()
    assert Image.open(io.BytesIO(stored)).getexif()  # the fixture photos really have EXIF ...
    for data in jpegs:
        img = Image.open(io.BytesIO(data))
        assert max(img.size) <= 320
        assert not img.getexif() and b"Exif\x00\x00" not in data and "icc_profile" not in img.info  # ... ours not


def test_stored_text_as_stored_and_no_contact_column(settings, populated):
    entry = by_shelter(report(settings, shelter=SEAS))[SEAS]
    assert STORED_TEXT in Path(entry["csv"]).read_text()
    assert html_lib.escape(STORED_TEXT, quote=False) in Path(entry["html"]).read_text()
    table = pq.read_table(entry["parquet"])
    assert STORED_TEXT in {row["lost_location"] for row in table.to_pylist()}
    assert "contact" not in " ".join(table.schema.names)


def test_csv_and_parquet_hold_the_same_rows(settings, populated):
    entry = by_shelter(report(settings, shelter=SEAS))[SEAS]
    table = pq.read_table(entry["parquet"])
    assert table.schema.equals(REPORT_SCHEMA)
    rows = table.to_pylist()
    with open(entry["csv"], newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert len(rows) == len(csv_rows) == 2
    assert [r["position"] for r in rows] == [1, 2] and rows[0]["score"] >= rows[1]["score"]
    for p, c in zip(rows, csv_rows, strict=True):
        assert c["lost_listing_id"] == p["lost_listing_id"] and c["found_listing_id"] == p["found_listing_id"]
        assert float(c["score"]) == pytest.approx(p["score"])
        assert c["lost_url"] == p["lost_url"] and c["lost_event_date"] == str(p["lost_event_date"])
    assert rows[0]["verdict"] == "confirmed" and rows[0]["found_listing_id"] == sample.lid("shelter_a101")
    assert rows[0]["lost_photo_id"] == populated["photos"]["lost_buddy"]


def test_a_source_claiming_another_shelters_id_gets_its_own_report(settings, populated):
    """A page on another source says shelter_id "SEAS" (and Seattle's name): its candidate goes to that source's
    key, never into petango:SEAS's report or token, although it outscores everything there."""
    impostor = sample.add_impostor(settings)
    shelters = by_shelter(report(settings, all=True))
    assert set(shelters) == {SEAS, ASTN, "pet911", "rehome-board:SEAS"}
    seas, fake = shelters[SEAS], shelters["rehome-board:SEAS"]
    assert seas["rows"] == 2 and fake["rows"] == 1 and fake["name"] == "Seattle Animal Shelter"  # names stay human
    for kind in ("html", "csv"):
        assert impostor not in Path(seas[kind]).read_text() and "rehome-board" not in Path(seas[kind]).read_text()
    assert impostor not in {r["found_listing_id"] for r in pq.read_table(seas["parquet"]).to_pylist()}
    assert seas["token"] != fake["token"] and Path(seas["html"]) != Path(fake["html"])
    with pytest.raises(HomewardError, match=r"unknown shelter 'SEAS'.*source:shelter_id"):
        report(settings, shelter="SEAS")  # a bare shelter id names no shelter


def test_csv_escapes_formula_cells_and_keeps_numbers(settings, populated):
    sample.add_impostor(settings)  # its location, from a crawled page, is =HYPERLINK(...)
    entry = by_shelter(report(settings, shelter="rehome-board:SEAS"))["rehome-board:SEAS"]
    with open(entry["csv"], newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["found_location"] == "'" + sample.IMPOSTOR["location_text"]
    assert row["days_apart"] == "-7.0" and row["score"] == "0.97"  # a negative number is a number, not text
    (raw,) = pq.read_table(entry["parquet"]).to_pylist()
    assert raw["found_location"] == sample.IMPOSTOR["location_text"] and raw["days_apart"] == -7.0  # Parquet: raw
    for attack in ("=1+1", "+SUM(A1)", "-2+3", "@SUM(A1)", "\tx", "\rx", "\uff1dcmd|' /C calc'!A0"):
        assert csv_cell(attack) == "'" + attack
    for safe in ("Buddy", "Green Lake, Seattle", "a=b", " 2 km", -3, -2.5, 0):
        assert csv_cell(safe) == safe
    assert csv_cell(None) == ""


def test_rejected_pairs_leave_future_reports(settings, populated):
    first = by_shelter(report(settings, shelter=SEAS))[SEAS]
    assert first["rows"] == 2
    with RunsDB(settings.duckdb).write() as con:
        con.execute(
            "INSERT INTO feedback VALUES (?, ?, 'rejected', 'seas-staff', now(), 'not him')",
            [sample.lid("lost_buddy"), sample.lid("shelter_a102")],
        )
    second = by_shelter(report(settings, shelter=SEAS))[SEAS]
    assert second["rows"] == 1 and second["html"] == first["html"]
    assert "Dog-Pit-Bull-A102" not in Path(second["html"]).read_text()


def test_top_limits_rows_and_the_best_score_comes_first(settings, populated):
    entry = by_shelter(report(settings, shelter=SEAS, top=1))[SEAS]
    rows = pq.read_table(entry["parquet"]).to_pylist()
    assert len(rows) == 1 and rows[0]["score"] == pytest.approx(0.91)
    with pytest.raises(HomewardError, match="top"):
        report(settings, all=True, top=0)


def test_unknown_shelter_and_conflicting_flags_are_errors(settings, populated):
    with pytest.raises(HomewardError, match=r"unknown shelter 'NOPE'.*SEAS"):
        report(settings, shelter="NOPE")
    with pytest.raises(HomewardError, match="either"):
        report(settings, shelter=SEAS, all=True)
    with pytest.raises(HomewardError, match="smtp_host"):
        report(settings, all=True, email=True)


def test_no_published_run_writes_nothing(settings):
    RunsDB(settings.duckdb)
    result = report(settings, all=True)
    assert result["run_id"] is None and result["reports"] == [] and "no published match run" in result["message"]
    assert not Path(settings.reports).exists()


def test_atomic_write_replaces_whole_files(tmp_path):
    target = tmp_path / "r" / "a.html"
    atomic_write(str(target), b"old report " * 1000)
    with open(target, "rb") as held:  # a reader that opened the old file keeps reading the old, whole file
        atomic_write(str(target), b"new")
        assert held.read() == b"old report " * 1000
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.html"]


def test_cli_report_prints_json(settings, populated, capsys):
    code = cli.main(["report", "--data-dir", settings.data_dir, "--shelter", ASTN, "--top", "5"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["reports"][0]["shelter"] == ASTN and result["reports"][0]["rows"] == 1
    assert Path(result["reports"][0]["html"]).is_file()


# --- e-mail through a real SMTP server on 127.0.0.1 -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((list(envelope.rcpt_tos), envelope.original_content or envelope.content))
        return "250 OK"


@pytest.fixture()
def smtp_server():
    controller_mod = pytest.importorskip("aiosmtpd.controller", reason="aiosmtpd is a dev dependency")
    inbox = Inbox()
    port = free_port()
    controller = controller_mod.Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def test_email_delivers_each_shelter_report(settings, populated, smtp_server):
    inbox, port = smtp_server
    cfg = settings.with_overrides(
        {
            "report": {
                "smtp_host": "127.0.0.1",
                "smtp_port": port,
                "smtp_sender": "reports@homeward.test",
                "recipients": {
                    SEAS: "intake@seas.test, vet@seas.test",
                    ASTN: "astn@astn.test",
                    "SEAS": "old-key@seas.test",  # a key from before keys carried their source
                },
            }
        }
    )
    result = report(cfg, all=True, email=True)
    shelters = by_shelter(result)
    assert result["emailed"] == 2 and result["recipients_unknown"] == ["SEAS"]
    assert shelters["pet911"]["emailed_to"] is None and "no address" in shelters["pet911"]["email_skipped"]
    deadline = time.monotonic() + 5
    while len(inbox.messages) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(sorted(r) for r, _ in inbox.messages) == [["astn@astn.test"], ["intake@seas.test", "vet@seas.test"]]
    raw = next(data for rcpt, data in inbox.messages if "intake@seas.test" in rcpt)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["From"] == "reports@homeward.test"
    assert msg["Subject"] == "Homeward: 2 new possible matches for Seattle Animal Shelter"
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "Never pay anyone" in text and "https://seattle.craigslist.org/laf/7781.html" in text
    assert_inline_photos(msg, html, count=4)
    assert "Dog-Pit-Bull-A102" in html and "Possible reunions for Seattle Animal Shelter" in html
    assert len(embedded_jpegs(Path(shelters[SEAS]["html"]).read_text())) == 4  # the file keeps data: URIs
    attachments = {a.get_filename(): a.get_content() for a in msg.iter_attachments()}
    ((name, body),) = attachments.items()
    assert name.endswith(".csv") and body.replace("\r\n", "\n") == Path(shelters[SEAS]["csv"]).read_text()


def assert_inline_photos(msg: email.message.EmailMessage, html: str, count: int) -> None:
    """Every photo of the HTML is a ``cid:`` reference to an inline JPEG part of the same multipart/related."""
    assert "data:image" not in html and not re.search(r'<img[^>]+src="https?:', html)
    refs = re.findall(r'<img src="cid:([^"]+)"', html)
    related = next(p for p in msg.walk() if p.get_content_type() == "multipart/related")
    assert related.get_payload()[0].get_content_type() == "text/html"
    parts = {p["Content-ID"].strip("<>"): p for p in related.iter_parts() if p.get_content_type() == "image/jpeg"}
    assert len(refs) == count and set(refs) == set(parts)
    for part in parts.values():
        assert part.get_content_disposition() == "inline"
        assert Image.open(io.BytesIO(part.get_content())).format == "JPEG"


def test_email_failure_is_loud_and_keeps_the_files(settings, populated):
    port = free_port()  # nothing listens here
    cfg = settings.with_overrides(
        {
            "report": {
                "smtp_host": "127.0.0.1",
                "smtp_port": port,
                "smtp_timeout_s": 3,
                "recipients": {SEAS: "intake@seas.test"},
            }
        }
    )
    with pytest.raises(HomewardError, match=r"e-mail failed for 1 shelter.*SEAS.*cannot connect"):
        report(cfg, all=True, email=True)
    assert list((Path(settings.reports) / "match-latest").glob("petango-seas-*.html"))


class Picky(Inbox):
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.endswith("@blocked.test"):
            return "550 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"


def test_email_refused_recipient_is_reported_and_others_still_delivered(settings, populated):
    controller_mod = pytest.importorskip("aiosmtpd.controller", reason="aiosmtpd is a dev dependency")
    inbox = Picky()
    port = free_port()
    server = controller_mod.Controller(inbox, hostname="127.0.0.1", port=port)
    server.start()
    try:
        cfg = settings.with_overrides(
            {
                "report": {
                    "smtp_host": "127.0.0.1",
                    "smtp_port": port,
                    "recipients": {SEAS: "x@blocked.test", ASTN: "astn@astn.test"},
                }
            }
        )
        with pytest.raises(HomewardError, match=r"(?i)e-mail failed for 1 shelter.*SEAS.*refused"):
            report(cfg, all=True, email=True)
    finally:
        server.stop()
    assert [rcpt for rcpt, _ in inbox.messages] == [["astn@astn.test"]]


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_email_logs_in_when_a_user_is_configured(settings, populated):
    controller_mod = pytest.importorskip("aiosmtpd.controller", reason="aiosmtpd is a dev dependency")
    from aiosmtpd.smtp import AuthResult

    seen: list[tuple[str, str]] = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        seen.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=auth_data.password == b"s3cret", handled=False)  # the server answers 535 itself

    inbox = Inbox()
    port = free_port()
    server = controller_mod.Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=authenticator,
        auth_require_tls=False,
        auth_required=True,
    )
    server.start()
    try:
        base = {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_user": "homeward"}
        base["recipients"] = {ASTN: "a@b.test"}
        report(settings.with_overrides({"report": {**base, "smtp_password": "s3cret"}}), shelter=ASTN, email=True)
        with pytest.raises(HomewardError, match=ASTN):
            wrong = settings.with_overrides({"report": {**base, "smtp_password": "wrong"}})
            report(wrong, shelter=ASTN, email=True, resend=True)  # nothing new since the first: --resend sends
    finally:
        server.stop()
    assert seen[0] == ("homeward", "s3cret") and set(seen[1:]) == {("homeward", "wrong")}  # smtplib tries 2 ways
    assert [rcpt for rcpt, _ in inbox.messages] == [["a@b.test"]]


def test_a_missing_photo_file_shows_as_no_photo(settings, populated, caplog):
    gone = populated["photos"]["shelter_k9"]
    next(Path(settings.photos).rglob(f"{gone}.jpg")).unlink()
    entry = by_shelter(report(settings, shelter=ASTN))[ASTN]
    html = Path(entry["html"]).read_text()
    assert len(embedded_jpegs(html)) == 1 and "no photo" in html
    assert any(gone in rec.getMessage() for rec in caplog.records)  # logged with the photo id, not silent


# --- what each e-mail carries: new first, never resent, links, TLS, language ------------------------------------


def mail_settings(settings, port: int, **extra: Any):
    recipients = {SEAS: "intake@seas.test", ASTN: "astn@astn.test", "pet911": "moscow@pet911.test"}
    cfg = {"smtp_host": "127.0.0.1", "smtp_port": port, "recipients": recipients, **extra}
    return settings.with_overrides({"report": cfg})


def received(inbox: Inbox, rcpt: str) -> list[email.message.EmailMessage]:
    return [email.message_from_bytes(data, policy=email.policy.default) for to, data in inbox.messages if rcpt in to]


def add_candidate(settings, lost: str, found: str, score: float) -> None:
    """A pair the latest published run gained (as a later match run would publish it)."""
    with RunsDB(settings.duckdb).write() as con:
        row = con.sql(
            "SELECT 'match-latest' AS run_id, l.listing_id AS lost_listing_id, f.listing_id AS found_listing_id, "
            "?::DOUBLE AS score, ?::DOUBLE AS image_sim, 3.0 AS distance_km, l.photo_ids[1] AS lost_photo_id, "
            "f.photo_ids[1] AS found_photo_id FROM listings l, listings f WHERE l.listing_id = ? AND f.listing_id = ?",
            params=[score, score, sample.lid(lost), sample.lid(found)],
        ).to_arrow_table()
        run_rows.insert_matches(con, row)


def test_each_email_leads_with_what_is_new_and_nothing_is_resent(settings, populated, smtp_server):
    inbox, port = smtp_server
    cfg = mail_settings(settings, port)
    first = by_shelter(report(cfg, all=True, email=True))
    assert first[SEAS]["new"] == 2 and first[SEAS]["emailed_to"] == "intake@seas.test"
    assert len(received(inbox, "intake@seas.test")) == 1

    again = by_shelter(report(cfg, all=True, email=True))  # nothing new anywhere: no e-mail at all
    assert again[SEAS]["new"] == 0 and again[SEAS]["emailed_to"] is None
    assert "nothing new" in again[SEAS]["email_skipped"] and len(inbox.messages) == 3
    assert [r["new"] for r in pq.read_table(again[SEAS]["parquet"]).to_pylist()] == [False, False]

    add_candidate(settings, "lost_rex", "shelter_a102", 0.45)  # new, and scoring below both old ones
    third = by_shelter(report(cfg, all=True, email=True))
    assert third[SEAS]["new"] == 1 and third[ASTN]["emailed_to"] is None and len(inbox.messages) == 4
    msg = received(inbox, "intake@seas.test")[-1]
    assert msg["Subject"] == "Homeward: 1 new possible match for Seattle Animal Shelter"
    html = msg.get_body(("html",)).get_content()
    assert html.index("New since your last report") < html.index("Still open")
    assert html.index("A-LOST-2211") < html.index("Dog-Labrador-Retriever-A101")  # new Rex first, though lower
    assert_inline_photos(msg, html, count=2)  # photos of the new pair only; still-open rows are compact
    rows = pq.read_table(third[SEAS]["parquet"]).to_pylist()
    assert [(r["new"], r["position"]) for r in rows] == [(True, 1), (False, 2), (False, 3)]
    assert rows[0]["lost_listing_id"] == sample.lid("lost_rex")
    with RunsDB(settings.duckdb).read() as con:
        sent = con.execute("SELECT count(*) FROM report_deliveries WHERE shelter_key = ?", [SEAS]).fetchone()[0]
    assert sent == 3

    report(cfg, shelter=SEAS, email=True, resend=True)  # --resend: the still-open list, though nothing is new
    resent = received(inbox, "intake@seas.test")[-1]
    assert len(inbox.messages) == 5 and resent["Subject"] == "Homeward: 3 open candidates for Seattle Animal Shelter"


def test_a_failed_email_leaves_its_candidates_new(settings, populated):
    cfg = mail_settings(settings, free_port(), smtp_timeout_s=3)  # nothing listens
    with pytest.raises(HomewardError, match="cannot connect"):
        report(cfg, shelter=SEAS, email=True)
    with RunsDB(settings.duckdb).read() as con:
        assert con.execute("SELECT count(*) FROM report_deliveries").fetchone()[0] == 0


def test_candidates_link_to_the_dashboard_with_the_shelter_token(settings, populated):
    plain = Path(by_shelter(report(settings, shelter=SEAS))[SEAS]["html"]).read_text()
    assert "/shelter/" not in plain and "token=" not in plain  # no report.dashboard_url: no links
    cfg = settings.with_overrides({"report": {"dashboard_url": "https://dash.example.org/"}})
    html = Path(by_shelter(report(cfg, shelter=SEAS))[SEAS]["html"]).read_text()
    token = shelter_token(settings, SEAS)
    for found in ("shelter_a101", "shelter_a102"):
        query = urllib.parse.urlencode({"lost": sample.lid("lost_buddy"), "found": sample.lid(found), "token": token})
        link = f"https://dash.example.org/shelter/petango%3ASEAS/pair?{query}"
        assert f'href="{html_lib.escape(link)}"' in html


def test_a_russian_sources_shelter_reads_russian(settings, populated, smtp_server):
    inbox, port = smtp_server
    result = by_shelter(report(mail_settings(settings, port), all=True, email=True))
    assert result["pet911"]["language"] == "ru" and result[SEAS]["language"] == "en"
    html = Path(result["pet911"]["html"]).read_text()
    assert '<html lang="ru">' in html and "Возможные воссоединения" in html and "Никогда не платите" in html
    assert "Сходство фото" in html and "Possible reunions" not in html and "Never pay" not in html
    found_day = (populated["now"] - __import__("datetime").timedelta(days=3)).date()
    months = [
        "января",
        "февраля",
        "марта",
        "апреля",
        "мая",
        "июня",
        "июля",
        "августа",
        "сентября",
        "октября",
        "ноября",
        "декабря",
    ]
    month = months[found_day.month - 1]  # Babel's Russian date: genitive month, "г." for the year
    assert f'<time datetime="{found_day}">{found_day.day} {month} {found_day.year}\u202fг.</time>' in html
    (msg,) = received(inbox, "moscow@pet911.test")
    assert msg["Subject"] == "Homeward: 1 новое возможное совпадение для «pet911»"
    assert "Полный отчёт с фотографиями" in msg.get_body(("plain",)).get_content()
    assert "Possible reunions for Seattle" in Path(result[SEAS]["html"]).read_text()


def test_a_sources_file_sets_the_language(settings, populated, tmp_path):
    extra = tmp_path / "sources.yaml"
    extra.write_text("sources:\n  - {name: petango, spider: petango, language: ru}\n")
    cfg = settings.with_overrides({"crawl": {"sources_file": str(extra)}})
    assert by_shelter(report(cfg, shelter=SEAS))[SEAS]["language"] == "ru"
    extra.write_text("sources:\n  - {name: petango, spider: petango, language: xx}\n")  # no catalogue: English
    assert by_shelter(report(cfg, shelter=SEAS))[SEAS]["language"] == "en"


# --- TLS: implicit (port 465 style) and STARTTLS, against a certificate made here --------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cert.pem, key.pem)."""
    import datetime as dt
    import ipaddress

    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (folder / "key.pem").write_bytes(key_pem)
    return folder / "cert.pem", folder / "key.pem"


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
def test_email_over_tls(settings, populated, certificate, monkeypatch, mode):
    import ssl

    controller_mod = pytest.importorskip("aiosmtpd.controller", reason="aiosmtpd is a dev dependency")
    cert, key = certificate
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    inbox, port = Inbox(), free_port()
    tls = {"ssl_context": server_ctx} if mode == "implicit" else {"tls_context": server_ctx, "require_starttls": True}
    server = controller_mod.Controller(inbox, hostname="127.0.0.1", port=port, **tls)
    server.start()
    try:
        cfg = mail_settings(settings, port, smtp_tls=mode, smtp_timeout_s=5)
        with pytest.raises(HomewardError, match=r"tls " + mode):  # the server's certificate is not trusted yet
            report(cfg, shelter=ASTN, email=True)
        monkeypatch.setenv("HW_SMTP_CAFILE", str(cert))
        assert by_shelter(report(cfg, shelter=ASTN, email=True))[ASTN]["emailed_to"] == "astn@astn.test"
    finally:
        server.stop()
    assert [to for to, _ in inbox.messages] == [["astn@astn.test"]]


def test_tls_mode_follows_the_port_unless_set(settings):
    from dashboards.mail import tls_mode

    def mode(**report: Any) -> str:
        return tls_mode(settings.with_overrides({"report": report}))

    assert (mode(smtp_port=465), mode(smtp_port=587), mode(smtp_port=25)) == ("implicit", "starttls", "none")
    assert mode(smtp_port=2525, smtp_tls="implicit") == "implicit" and mode(smtp_port=465, smtp_tls="none") == "none"
    with pytest.raises(HomewardError, match="smtp_tls"):
        mode(smtp_tls="ssl3")
