"""``homeward report``: one match report per shelter, as self-contained HTML, CSV and Parquet.

What a report holds: the open candidates of the latest PUBLISHED match run (``open_candidates``: pairs a shelter
rejected are gone, confirmed ones stay marked) whose found side belongs to the shelter: its ``shelter_key``, which is
``source:shelter_id`` (``petango:SEAS``; a shelter id only counts within the source that listed it, so another source
claiming "SEAS" gets its own key and never lands in this report), or the bare ``source`` for found posts and sightings
without a shelter id (the SQL macro ``shelter_key`` in ``views.sql``).

**New first.** Candidates no report e-mail to this shelter has carried yet (``report_deliveries``) lead, as cards:
both photos side by side (thumbnails re-encoded without EXIF), the score and every evidence term, the dates, the
distance, links to both original posts and, with ``report.dashboard_url``, to the pair on the shelter's dashboard
page (with its token). The still-open ones the shelter has already been sent follow as compact table rows. Each group
is best first; at most ``top`` rows in all. A shelter with nothing new gets no e-mail unless ``--resend``.
**Language.** A shelter reads its source's ``language`` (sources config; pet911 and poiskzoo: Russian), through the
Babel catalogues of :mod:`dashboards.i18n`; English otherwise.
Every report carries a scam warning. No contact detail appears: the tables hold only salted hashes, and free text
is shown as stored — the crawl's redact stage (:mod:`crawlers.pipelines.redact`) removed contacts before anything
was written, and a second, cruder pass here would blank dates and price ranges it cannot tell from phones.

Files land in ``<settings.reports>/<run_id>/<shelter-slug>.{html,csv,parquet}``; each is written to a temp file in
the same folder and renamed over the target, so a reader (or a mail job) never sees half a report. Rerunning after
new feedback rewrites the same files. CSV cells that a spreadsheet would run as a formula are escaped
(:func:`csv_cell`); the Parquet file keeps every value raw.

With ``--email``, each shelter listed in ``report.recipients`` gets its report by SMTP (:mod:`dashboards.mail`:
``report.smtp_*``, implicit TLS or STARTTLS): the HTML as the message body with its photos as inline CID parts (mail
clients drop ``data:`` images; the file keeps ``data:`` URIs so it opens offline), a plain-text summary for text-only
readers, the CSV attached. The pairs of a message the server accepted are recorded as delivered in the same run.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import logging
import os
import re
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from dashboards import i18n, mail
from dashboards.access import shelter_token
from dashboards.i18n import N_, SCAM_WARNING
from dashboards.photos import PhotoLookup, data_uri
from engine import analyst, run_rows, views
from engine.config import Settings
from engine.errors import HomewardError
from engine.source_settings import source_languages
from engine.storage import RunsDB

log = logging.getLogger(__name__)


#: The evidence terms of a candidate: label, column.
TERMS = (
    (N_("Photo similarity"), "image_sim"),
    (N_("Description similarity"), "text_sim"),
    (N_("Attributes agree"), "attribute_score"),
    (N_("Distance prior"), "geo_score"),
    (N_("Time prior"), "time_score"),
)
SPECIES_LABELS = (N_("dog"), N_("cat"), N_("other"), N_("unknown"), N_("pet"))

#: The columns of the CSV and Parquet files, with their Arrow types (an empty report still has typed columns).
REPORT_SCHEMA = pa.schema(
    [
        ("shelter_key", pa.string()),
        ("shelter_name", pa.string()),
        ("run_id", pa.string()),
        ("position", pa.int32()),
        ("new", pa.bool_()),
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


def _report_row(row: dict[str, Any], position: int) -> dict[str, Any]:
    out = {name: row.get(name) for name in REPORT_SCHEMA.names if name != "position"}
    out["position"] = position
    for side in ("lost", "found"):
        colors = row.get(f"{side}_colors")
        out[f"{side}_colors"] = ", ".join(colors) if colors else None
        out[f"{side}_url"] = mail.safe_url(row.get(f"{side}_url"))
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
    """The shelter's report rows: first the candidates no e-mail to this shelter has carried yet (``new``), then the
    ones it has seen; each group best first (ties: lost, then found listing id, for a stable order)."""
    with runs.read() as con:
        found = views.rows(
            con,
            "SELECT c.*, d.shelter_key IS NULL AS new FROM open_candidates c LEFT JOIN report_deliveries d "
            "ON d.shelter_key = c.shelter_key AND d.lost_listing_id = c.lost_listing_id "
            "AND d.found_listing_id = c.found_listing_id WHERE c.shelter_key = $1 "
            "ORDER BY new DESC, c.score DESC, c.lost_listing_id, c.found_listing_id LIMIT $2",
            [key, int(top)],
        )
    return [_report_row(r, i + 1) for i, r in enumerate(found)]


def dashboard_link(settings: Settings, key: str, lost: str, found: str) -> str | None:
    """The dashboard's page of this pair (both photos, the verdict buttons, the map), with the shelter's token
    (``None`` without report.dashboard_url)."""
    base = settings.report.dashboard_url
    if not base:
        return None
    query = urllib.parse.urlencode({"lost": lost, "found": found, "token": shelter_token(settings, key)})
    return f"{base.rstrip('/')}/shelter/{urllib.parse.quote(key, safe='')}/pair?{query}"


def shelter_language(settings: Settings, key: str) -> str:
    """The language of a shelter's report: its source's ``language`` (the shelter key starts with the source)."""
    source = urllib.parse.unquote(key.split(":", 1)[0])
    return i18n.resolve(source_languages(settings).get(source))


def render_html(
    settings: Settings,
    key: str,
    name: str,
    run: dict[str, Any],
    rows: list[dict[str, Any]],
    src: mail.ImageSource,
    language: str = i18n.DEFAULT,
) -> str:
    """The report's HTML: new candidates as cards with both photos (``src`` gives each photo id's ``<img src>``),
    still-open ones as compact table rows."""
    items = []
    for r in rows:
        items.append(
            dict(
                r,
                lost_img=src(r["lost_photo_id"]) if r["new"] else None,
                found_img=src(r["found_photo_id"]) if r["new"] else None,
                terms=[(label, r[column]) for label, column in TERMS],
                dashboard_link=dashboard_link(settings, key, r["lost_listing_id"], r["found_listing_id"]),
            )
        )
    return (
        i18n.environment(language)
        .get_template("report.html")
        .render(
            language=language,
            shelter_key=key,
            shelter_name=name,
            run=run,
            new=[r for r in items if r["new"]],
            still_open=[r for r in items if not r["new"]],
            generated=i18n.moment(dt.datetime.now(dt.UTC), language),
            scam_warning=SCAM_WARNING,
        )
    )


def _data_uris(thumbs: dict[str, bytes]) -> mail.ImageSource:
    """Photos inside the file itself, so a report opens offline."""
    return lambda photo_id: data_uri(thumbs[photo_id]) if photo_id in thumbs else None


def _photo_ids(rows: list[dict[str, Any]]) -> list[str]:
    """The photos a report shows: both sides of each new candidate."""
    return [r[f"{side}_photo_id"] for r in rows if r["new"] for side in ("lost", "found")]


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


def _summary_text(
    settings: Settings, key: str, name: str, rows: list[dict[str, Any]], run_id: str, language: str
) -> str:
    t = i18n.translations(language)
    new = sum(1 for r in rows if r["new"])
    lines = [
        t.gettext("Homeward match report for %(name)s (match run %(run)s)") % {"name": name, "run": run_id},
        t.ngettext("%(num)d new candidate", "%(num)d new candidates", new) % {"num": new}
        + ", "
        + t.ngettext("%(num)d still open", "%(num)d still open", len(rows) - new) % {"num": len(rows) - new},
        "",
    ]
    label = {
        "new": t.gettext("NEW"),
        "score": t.gettext("score"),
        "lost": t.gettext("lost post"),
        "found": t.gettext("your listing"),
        "dashboard": t.gettext("dashboard"),
    }
    for r in rows:
        km = "" if r["distance_km"] is None else ", " + t.gettext("%(km)s km apart") % {"km": f"{r['distance_km']:.1f}"}
        mark = label["new"] + " " if r["new"] else ""
        lost_on = i18n.day(r["lost_event_date"], language) or "?"
        found_on = i18n.day(r["found_event_date"], language) or "?"
        species = r["lost_species"] or "pet"
        lines.append(
            f"{r['position']}. {mark}{label['score']} {r['score']:.2f} - {t.gettext(species)} {r['lost_name'] or ''} "
            f"({lost_on}) / {r['found_kind'] or '?'} ({found_on}){km}"
        )
        lines.append(f"   {label['lost']}: {r['lost_url'] or '-'}")
        lines.append(f"   {label['found']}: {r['found_url'] or '-'}")
        link = dashboard_link(settings, key, r["lost_listing_id"], r["found_listing_id"])
        if link:
            lines.append(f"   {label['dashboard']}: {link}")
    lines += [
        "",
        t.gettext("WARNING:") + " " + t.gettext(SCAM_WARNING),
        "",
        t.gettext("The full report with photos is the HTML part of this message."),
    ]
    return "\n".join(lines)


def _subject(name: str, rows: list[dict[str, Any]], language: str) -> str:
    t = i18n.translations(language)
    new = sum(1 for r in rows if r["new"])
    if new:
        text = t.ngettext(
            "Homeward: %(num)d new possible match for %(name)s",
            "Homeward: %(num)d new possible matches for %(name)s",
            new,
        )
        return text % {"num": new, "name": name}
    text = t.ngettext(
        "Homeward: %(num)d open candidate for %(name)s", "Homeward: %(num)d open candidates for %(name)s", len(rows)
    )
    return text % {"num": len(rows), "name": name}


def _message(
    settings: Settings,
    to: str,
    key: str,
    name: str,
    run: dict[str, Any],
    rows: list[dict[str, Any]],
    thumbs: dict[str, bytes],
    csv_data: bytes,
    language: str,
) -> EmailMessage:
    shown = {pid: thumbs[pid] for pid in _photo_ids(rows) if pid in thumbs}
    msg = mail.compose(
        settings,
        to=to,
        subject=_subject(name, rows, language),
        text=_summary_text(settings, key, name, rows, run["run_id"], language),
        html=lambda src: render_html(settings, key, name, run, rows, src, language),
        images=shown,
    )
    msg.add_attachment(csv_data, maintype="text", subtype="csv", filename=f"{slug(key)}.csv")
    return msg


def _targets(runs: RunsDB, shelter: str | None) -> list[tuple[str, str]]:
    """(shelter key, name) of the one shelter asked for, or of every shelter with open candidates."""
    if not shelter:
        return [(s["shelter_key"], s["shelter_name"]) for s in shelters(runs)]
    name = known_shelter(runs, shelter)
    if name is None:
        known = ", ".join(s["shelter_key"] for s in shelters(runs)) or "none"
        raise HomewardError(
            f"unknown shelter {shelter!r}: no listing has that shelter key; keys are source:shelter_id, or the "
            f"source alone for found posts (with candidates now: {known})"
        )
    return [(shelter, name)]


@dataclass
class _Written:
    """One shelter's report on disk: its entry in the verb's result, and the e-mail to send when there is one."""

    entry: dict[str, Any]
    message: EmailMessage | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)


def _write_one(
    settings: Settings, photos: PhotoLookup, run: dict[str, Any], key: str, name: str, out_dir: str, *,
    top: int, email: bool, resend: bool,
) -> _Written:  # fmt: skip
    """Write the shelter's HTML, CSV and Parquet atomically; compose its e-mail when it has something new (or
    ``resend``) and an address."""
    runs = RunsDB(settings.duckdb)
    rows = candidates(runs, key, top)
    language = shelter_language(settings, key)
    thumbs = photos.thumbnails(_photo_ids(rows))
    html = render_html(settings, key, name, run, rows, _data_uris(thumbs), language)
    base = f"{out_dir}/{slug(key)}"
    csv_data = _csv_bytes(rows)
    atomic_write(f"{base}.parquet", _parquet_bytes(rows))
    atomic_write(f"{base}.csv", csv_data)
    atomic_write(f"{base}.html", html.encode("utf-8"))
    new = sum(1 for r in rows if r["new"])
    written = _Written(
        {
            "shelter": key,
            "name": name,
            "rows": len(rows),
            "new": new,
            "language": language,
            "html": f"{base}.html",
            "csv": f"{base}.csv",
            "parquet": f"{base}.parquet",
            "token": shelter_token(settings, key),
            "emailed_to": None,
        }
    )
    log.info("report for %s (%s): %d candidate(s), %d new → %s.html", name, key, len(rows), new, base)
    if not email:
        return written
    to = settings.report.recipients.get(key)
    if not mail.has_address(to):
        written.entry["email_skipped"] = "no address in report.recipients"
    elif not rows or not (new or resend):
        written.entry["email_skipped"] = "nothing new since the last report (--resend sends it anyway)"
    else:
        written.message = _message(settings, to, key, name, run, rows, thumbs, csv_data, language)
        written.rows = rows
        written.entry["emailed_to"] = to
    return written


def _deliver(settings: Settings, run_id: str, written: list[_Written]) -> dict[str, str]:
    """Send the composed e-mails in one SMTP session; record what each accepted one carried (``report_deliveries``),
    so those candidates are not new for that shelter again. Returns shelter key → error of each failed one."""
    outgoing = [(w.entry["shelter"], w.message) for w in written if w.message is not None]
    failed = mail.send(settings, outgoing)
    delivered = [w for w in written if w.message is not None and w.entry["shelter"] not in failed]
    if delivered:
        at = dt.datetime.now(dt.UTC)
        with RunsDB(settings.duckdb).write() as con:
            for w in delivered:
                run_rows.record_report_delivery(con, w.entry["shelter"], run_id, at, w.rows)
    for w in written:
        if w.entry["shelter"] in failed:
            w.entry["email_error"] = failed[w.entry["shelter"]]
            w.entry["emailed_to"] = None
    return failed


def report(
    settings: Settings,
    *,
    shelter: str | None = None,
    all: bool = False,
    email: bool = False,
    resend: bool = False,
    top: int = 20,
) -> dict[str, Any]:
    """Write each shelter's match report (HTML, CSV, Parquet) from the latest published match run.

    Args:
        shelter: one shelter key: source:shelter_id (petango:SEAS), or the source of found posts without one.
        all: every shelter with open candidates (the default when no --shelter is given).
        email: also e-mail each report with a candidate new since the shelter's last one to report.recipients.
        resend: with --email, also e-mail shelters with nothing new (their still-open candidates).
        top: at most this many candidates per report, new ones first, highest score first.
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
    targets = _targets(runs, shelter)
    out_dir = f"{settings.reports.rstrip('/')}/{run['run_id']}"
    photos = PhotoLookup(settings)
    written = [
        _write_one(settings, photos, run, key, name, out_dir, top=top, email=email, resend=resend)
        for key, name in targets
    ]
    failed = _deliver(settings, run["run_id"], written)
    entries = [w.entry for w in written]
    result = {
        **analyst.publish(settings),
        "run_id": run["run_id"],
        "out_dir": out_dir,
        "reports": entries,
        "rows": sum(e["rows"] for e in entries),
        "emailed": sum(1 for e in entries if e.get("emailed_to")),
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
