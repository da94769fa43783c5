"""``homeward report``: one match report per shelter, as self-contained HTML, CSV and Parquet.

What a report holds: the open candidates of the latest PUBLISHED match run (``open_candidates``: pairs a shelter
rejected are gone, confirmed ones stay marked) whose found side belongs to the shelter: its ``shelter_key``, which is
``source:shelter_id`` (``petango:SEAS``; a shelter id only counts within the source that listed it, so another source
claiming "SEAS" gets its own key and never lands in this report), or the bare ``source`` for found posts and sightings
without a shelter id (the SQL macro ``shelter_key`` in ``views.sql``). Highest score first, at most ``top`` rows.
Each row shows both photos side by side (thumbnails re-encoded without EXIF, embedded as ``data:`` URIs, so the file
opens offline and can be mailed), the score and every evidence term, the dates, the distance and links to both
original posts.
Every report carries a scam warning. No contact detail appears: the tables hold only salted hashes, and free text
is shown as stored — the crawl's redact stage (:mod:`crawlers.pipelines.redact`) removed contacts before anything
was written, and a second, cruder pass here would blank dates and price ranges it cannot tell from phones.

Files land in ``<settings.reports>/<run_id>/<shelter-slug>.{html,csv,parquet}``; each is written to a temp file in
the same folder and renamed over the target, so a reader (or a mail job) never sees half a report. Rerunning after
new feedback rewrites the same files. CSV cells that a spreadsheet would run as a formula are escaped
(:func:`csv_cell`); the Parquet file keeps every value raw.

With ``--email``, each shelter listed in ``report.recipients`` gets its report by SMTP (``report.smtp_*``): the HTML
as the message body, a plain-text summary for text-only readers, the CSV attached.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import logging
import os
import re
import smtplib
import ssl
import tempfile
from email.message import EmailMessage
from email.utils import getaddresses, make_msgid
from pathlib import Path
from typing import Any

import fsspec
import jinja2
import pyarrow as pa
import pyarrow.parquet as pq

from dashboards.access import shelter_token
from dashboards.photos import PhotoLookup, data_uri
from engine import analyst, views
from engine.config import Settings
from engine.errors import HomewardError
from engine.storage import RunsDB

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).with_name("templates")

SCAM_WARNING = (
    "Never pay anyone who claims to have your pet before you have verified, in person, that the animal is yours. "
    "Scammers watch lost-pet posts and ask for a 'reward', 'shipping' or 'vet bills' up front. Verify ownership "
    "(microchip, photos, vet records) before releasing an animal, and meet in a public place or at the shelter."
)

#: The columns of the CSV and Parquet files, with their Arrow types (an empty report still has typed columns).
REPORT_SCHEMA = pa.schema(
    [
        ("shelter_key", pa.string()),
        ("shelter_name", pa.string()),
        ("run_id", pa.string()),
        ("position", pa.int32()),
        ("score", pa.float64()),
        ("image_sim", pa.float64()),
        ("text_sim", pa.float64()),
        ("attribute_score", pa.float64()),
        ("geo_score", pa.float64()),
        ("time_score", pa.float64()),
        ("distance_km", pa.float64()),
        ("days_apart", pa.float64()),
        ("photos_agreeing", pa.int32()),
        ("verdict", pa.string()),
        ("explanation", pa.string()),
        ("lost_listing_id", pa.string()),
        ("lost_source", pa.string()),
        ("lost_url", pa.string()),
        ("lost_species", pa.string()),
        ("lost_breed", pa.string()),
        ("lost_colors", pa.string()),
        ("lost_sex", pa.string()),
        ("lost_name", pa.string()),
        ("lost_location", pa.string()),
        ("lost_event_date", pa.date32()),
        ("lost_photo_id", pa.string()),
        ("found_listing_id", pa.string()),
        ("found_source", pa.string()),
        ("found_kind", pa.string()),
        ("found_url", pa.string()),
        ("found_species", pa.string()),
        ("found_breed", pa.string()),
        ("found_colors", pa.string()),
        ("found_sex", pa.string()),
        ("found_name", pa.string()),
        ("found_location", pa.string()),
        ("found_event_date", pa.date32()),
        ("found_photo_id", pa.string()),
    ]
)


def slug(key: str) -> str:
    """A file-name-safe, collision-free name for a shelter key."""
    base = re.sub(r"[^A-Za-z0-9]+", "-", key).strip("-").lower()[:48] or "shelter"
    return f"{base}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and one rename."""
    if "://" in path:
        fs, target = fsspec.core.url_to_fs(path)
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{target}.tmp-{os.getpid()}-{dt.datetime.now().timestamp():.0f}"
        with fs.open(tmp, "wb") as fh:
            fh.write(data)
        fs.mv(tmp, target)
        return
    target_path = Path(path)
    target_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target_path.name}.", suffix=".tmp", dir=target_path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jinja() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
    )
    env.filters["num"] = lambda v, d=2: "–" if v is None else f"{v:.{d}f}"
    env.filters["pct"] = lambda v: 0 if v is None else max(0, min(100, round(float(v) * 100)))
    return env


def _safe_url(url: str | None) -> str | None:
    """Only http(s) links reach a report (a ``javascript:`` URL in a scraped page must not become a link)."""
    return url if url and url.lower().startswith(("http://", "https://")) else None


def _report_row(row: dict[str, Any], position: int) -> dict[str, Any]:
    out = {name: row.get(name) for name in REPORT_SCHEMA.names if name != "position"}
    out["position"] = position
    for side in ("lost", "found"):
        colors = row.get(f"{side}_colors")
        out[f"{side}_colors"] = ", ".join(colors) if colors else None
        out[f"{side}_url"] = _safe_url(row.get(f"{side}_url"))
        if not out.get(f"{side}_photo_id"):
            photos = row.get(f"{side}_photo_ids") or []
            out[f"{side}_photo_id"] = photos[0] if photos else None
    return out


def shelters(runs: RunsDB) -> list[dict[str, Any]]:
    """Every shelter key with open candidates in the latest published run: key, name, candidates, best score."""
    with runs.read() as con:
        return views.rows(
            con,
            "SELECT shelter_key, any_value(shelter_name) AS shelter_name, count(*) AS candidates, "
            "max(score) AS best_score FROM open_candidates GROUP BY shelter_key ORDER BY shelter_key",
        )


def known_shelter(runs: RunsDB, key: str) -> str | None:
    """The display name of ``key`` when some listing of the snapshot has that shelter key."""
    with runs.read() as con:
        got = views.rows(
            con,
            "SELECT coalesce(any_value(coalesce(shelter_name, shelter_id)), $1) AS name, count(*) AS n "
            "FROM listings WHERE shelter_key(source, shelter_id) = $1",
            [key],
        )
    return got[0]["name"] if got and got[0]["n"] else None


def candidates(runs: RunsDB, key: str, top: int) -> list[dict[str, Any]]:
    """The shelter's report rows, best first (ties: lost listing id, for a stable order)."""
    with runs.read() as con:
        found = views.rows(
            con,
            "SELECT * FROM open_candidates WHERE shelter_key = $1 "
            "ORDER BY score DESC, lost_listing_id, found_listing_id LIMIT $2",
            [key, int(top)],
        )
    return [_report_row(r, i + 1) for i, r in enumerate(found)]


def render_html(
    settings: Settings,
    key: str,
    name: str,
    run: dict[str, Any],
    rows: list[dict[str, Any]],
    photos: PhotoLookup | None = None,
) -> str:
    photos = photos or PhotoLookup(settings)
    thumbs = photos.thumbnails([r["lost_photo_id"] for r in rows] + [r["found_photo_id"] for r in rows])
    items = []
    for r in rows:
        items.append(
            dict(
                r,
                lost_img=data_uri(thumbs[r["lost_photo_id"]]) if r["lost_photo_id"] in thumbs else None,
                found_img=data_uri(thumbs[r["found_photo_id"]]) if r["found_photo_id"] in thumbs else None,
                terms=[
                    ("Photo similarity", r["image_sim"]),
                    ("Description similarity", r["text_sim"]),
                    ("Attributes agree", r["attribute_score"]),
                    ("Distance prior", r["geo_score"]),
                    ("Time prior", r["time_score"]),
                ],
            )
        )
    return (
        _jinja()
        .get_template("report.html")
        .render(
            shelter_key=key,
            shelter_name=name,
            run=run,
            rows=items,
            generated=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            scam_warning=SCAM_WARNING,
        )
    )


#: First characters that make Excel, LibreOffice or Google Sheets read a cell as a formula (OWASP's list, plus the
#: full-width forms some spreadsheets fold to the ASCII ones).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def csv_cell(value: Any) -> Any:
    """One CSV cell, safe to open in a spreadsheet: a string starting like a formula (``=HYPERLINK(…)`` in a crawled
    location) gets a leading single quote, OWASP's rule, so it shows as text and never runs. Only strings: a number
    stays a number (a negative ``days_apart`` is not a formula), and nothing inside a cell is rewritten."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=REPORT_SCHEMA.names, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: csv_cell(v) for k, v in r.items()})
    return buf.getvalue().encode("utf-8")


def _parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    table = pa.Table.from_pylist([{k: r.get(k) for k in REPORT_SCHEMA.names} for r in rows], schema=REPORT_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _summary_text(name: str, rows: list[dict[str, Any]], run_id: str) -> str:
    lines = [f"Homeward match report for {name} (match run {run_id}): {len(rows)} candidate(s).", ""]
    for r in rows:
        km = "" if r["distance_km"] is None else f", {r['distance_km']:.1f} km apart"
        lines.append(
            f"{r['position']}. score {r['score']:.2f} - lost {r['lost_species'] or ''} {r['lost_name'] or ''} "
            f"({r['lost_event_date'] or '?'}) vs your {r['found_kind'] or 'listing'} ({r['found_event_date'] or '?'})"
            f"{km}"
        )
        lines.append(f"   lost post: {r['lost_url'] or '-'}")
        lines.append(f"   your listing: {r['found_url'] or '-'}")
    lines += ["", "WARNING: " + SCAM_WARNING, "", "The full report with photos is the HTML part of this message."]
    return "\n".join(lines)


def _send(settings: Settings, messages: list[tuple[str, EmailMessage]]) -> dict[str, str]:
    """Send every message over one SMTP session; return key → error for the ones that failed."""
    cfg = settings.report
    errors: dict[str, str] = {}
    try:
        smtp = smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=cfg.smtp_timeout_s)
    except OSError as exc:
        return {key: f"cannot connect to SMTP {cfg.smtp_host}:{cfg.smtp_port}: {exc}" for key, _ in messages}
    try:
        smtp.ehlo_or_helo_if_needed()
        if cfg.smtp_starttls:
            smtp.starttls(context=ssl.create_default_context())
            smtp.ehlo()
        if cfg.smtp_user:
            smtp.login(cfg.smtp_user, cfg.smtp_password or "")
        for key, msg in messages:
            try:
                refused = smtp.send_message(msg)
                if refused:
                    errors[key] = f"recipients refused: {sorted(refused)}"
            except smtplib.SMTPException as exc:
                errors[key] = f"{type(exc).__name__}: {exc}"
    except (smtplib.SMTPException, OSError) as exc:
        for key, _ in messages:
            errors.setdefault(key, f"SMTP session failed: {exc}")
    finally:
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()
    return errors


def _message(
    settings: Settings,
    to: str,
    name: str,
    run_id: str,
    rows: list[dict[str, Any]],
    html: str,
    csv_data: bytes,
    filename: str,
) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = f"Homeward: {len(rows)} possible match(es) for {name}"
    msg["From"] = settings.report.smtp_sender
    msg["To"] = to
    msg["Message-ID"] = make_msgid(domain="homeward.local")
    msg.set_content(_summary_text(name, rows, run_id))
    msg.add_alternative(html, subtype="html")
    msg.add_attachment(csv_data, maintype="text", subtype="csv", filename=f"{filename}.csv")
    return msg


def report(
    settings: Settings,
    *,
    shelter: str | None = None,
    all: bool = False,
    email: bool = False,
    top: int = 20,
) -> dict[str, Any]:
    """Write each shelter's match report (HTML, CSV, Parquet) from the latest published match run.

    Args:
        shelter: one shelter key: source:shelter_id (petango:SEAS), or the source of found posts without one.
        all: every shelter with open candidates (the default when no --shelter is given).
        email: also send each report to the shelter's address in report.recipients over SMTP.
        top: at most this many candidates per report, highest score first.
    """
    if shelter and all:
        raise HomewardError("give either --shelter KEY or --all, not both")
    if top < 1:
        raise HomewardError(f"--top must be at least 1, got {top}")
    if email and not settings.report.smtp_host:
        raise HomewardError("--email needs report.smtp_host (e.g. --set report.smtp_host=mail.example.org)")
    runs = RunsDB(settings.duckdb)
    views.ensure_views(runs)
    with runs.read() as con:
        latest = views.rows(con, "SELECT run_id, started, finished, matches FROM latest_match_run")
    if not latest:
        return {"run_id": None, "reports": [], "rows": 0, "message": "no published match run yet: run `homeward match`"}
    run = latest[0]

    if shelter:
        name = known_shelter(runs, shelter)
        if name is None:
            known = ", ".join(s["shelter_key"] for s in shelters(runs)) or "none"
            raise HomewardError(
                f"unknown shelter {shelter!r}: no listing has that shelter key; keys are source:shelter_id, or the "
                f"source alone for found posts (with candidates now: {known})"
            )
        targets = [(shelter, name)]
    else:
        targets = [(s["shelter_key"], s["shelter_name"]) for s in shelters(runs)]

    out_dir = f"{settings.reports.rstrip('/')}/{run['run_id']}"
    photos = PhotoLookup(settings)
    written: list[dict[str, Any]] = []
    outgoing: list[tuple[str, EmailMessage]] = []
    for key, name in targets:
        rows = candidates(runs, key, top)
        html = render_html(settings, key, name, run, rows, photos)
        base = f"{out_dir}/{slug(key)}"
        csv_data = _csv_bytes(rows)
        atomic_write(f"{base}.parquet", _parquet_bytes(rows))
        atomic_write(f"{base}.csv", csv_data)
        atomic_write(f"{base}.html", html.encode("utf-8"))
        entry: dict[str, Any] = {
            "shelter": key,
            "name": name,
            "rows": len(rows),
            "html": f"{base}.html",
            "csv": f"{base}.csv",
            "parquet": f"{base}.parquet",
            "token": shelter_token(settings, key),
            "emailed_to": None,
        }
        if email:
            to = settings.report.recipients.get(key)
            if to and any(addr for _, addr in getaddresses([to])):
                outgoing.append((key, _message(settings, to, name, run["run_id"], rows, html, csv_data, slug(key))))
                entry["emailed_to"] = to
            else:
                entry["email_skipped"] = "no address in report.recipients"
        written.append(entry)
        log.info("report for %s (%s): %d candidate(s) → %s.html", name, key, len(rows), base)

    failed: dict[str, str] = _send(settings, outgoing) if outgoing else {}
    for entry in written:
        if entry["shelter"] in failed:
            entry["email_error"] = failed[entry["shelter"]]
            entry["emailed_to"] = None
    result = {
        **analyst.publish(settings),
        "run_id": run["run_id"],
        "out_dir": out_dir,
        "reports": written,
        "rows": sum(e["rows"] for e in written),
        "emailed": sum(1 for e in written if e.get("emailed_to")),
    }
    if email:
        unknown = sorted(k for k in settings.report.recipients if known_shelter(runs, k) is None)
        if unknown:  # e.g. a key from before shelter keys carried their source ("SEAS" is now "petango:SEAS")
            log.warning("report.recipients names no known shelter key: %s", ", ".join(unknown))
            result["recipients_unknown"] = unknown
    if failed:
        for key, err in failed.items():
            log.error("e-mail for %s failed: %s", key, err)
        raise HomewardError(
            f"reports written to {out_dir}, but e-mail failed for {len(failed)} shelter(s): "
            + "; ".join(f"{k}: {v}" for k, v in sorted(failed.items()))
        )
    return result
