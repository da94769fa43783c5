"""Owner alerts: after a match run, e-mail each watch's owner the listings that now look like their pet, once each.

:func:`deliver_watch_alerts` is what the scheduler calls after publishing a match run (and what ``homeward watch
notify`` runs). For each active watch it takes the due listings (:func:`engine.watches.due_alerts`: found, sighting
and shelter listings at or above the watch's threshold, never sent to it before), renders one message per owner
(never one message to several owners), sends them over one SMTP session (:mod:`dashboards.mail`) and records the
listings of each message the server accepted (``watch_alerts``), so the next run sends only newer ones. A failed
message is not recorded: its listings are tried again after the next run.

What an alert shows is what the listing shows publicly: its stored (redacted) text, a photo thumbnail re-encoded
without metadata, the distance and a link to the original post — never a contact hash, another owner's address or
anything of the watch but its own place. Crawled text is escaped (the templates autoescape; links only http(s)).
Each alert carries its unsubscribe link (``report.dashboard_url`` + ``/unsubscribe?token=…``) in the body and as
``List-Unsubscribe`` / ``List-Unsubscribe-Post`` headers (RFC 2369, RFC 8058: one-click in mail clients).
"""

from __future__ import annotations

import logging
import urllib.parse
from email.message import EmailMessage
from typing import Any

from dashboards import i18n, mail
from dashboards.i18n import N_, SCAM_WARNING
from dashboards.photos import PhotoLookup
from engine import watches
from engine.config import Settings
from engine.search import SearchHit

log = logging.getLogger(__name__)

#: What an alert calls a listing, by kind (translated where shown).
KIND_LABELS = {"found": N_("found"), "sighting": N_("sighting"), "shelter": N_("shelter"), "adoptable": N_("adoptable")}


def unsubscribe_url(settings: Settings, watch_id: str) -> str | None:
    base = settings.report.dashboard_url
    if not base:
        return None
    query = urllib.parse.urlencode({"token": watches.unsubscribe_token(settings, watch_id)})
    return f"{base.rstrip('/')}/unsubscribe?{query}"


def _text(watch: watches.Watch, hits: list[SearchHit], unsubscribe: str | None, language: str) -> str:
    t = i18n.translations(language)
    lines = [
        t.ngettext(
            "Homeward found %(num)d new listing that may show your pet (watch %(watch)s).",
            "Homeward found %(num)d new listings that may show your pet (watch %(watch)s).",
            len(hits),
        )
        % {"num": len(hits), "watch": watch.watch_id},
        "",
    ]
    for n, h in enumerate(hits, 1):
        km = "" if h.distance_km is None else ", " + t.gettext("%(km)s km away") % {"km": f"{h.distance_km:.1f}"}
        when = i18n.day(h.event_date, language) if h.event_date else "?"
        what = t.gettext(KIND_LABELS.get(h.kind or "", N_("listing")))
        species = t.gettext(h.species) if h.species else "?"
        lines.append(f"{n}. {t.gettext('score')} {h.score:.2f} - {what} ({species}, {when}){km}")
        lines.append(f"   {mail.safe_url(h.url) or '-'}")
    lines += [
        "",
        t.gettext(SCAM_WARNING),
        "",
        t.gettext("Stop these alerts: %(link)s") % {"link": unsubscribe}
        if unsubscribe
        else t.gettext("To stop these alerts, reply and ask for watch %(watch)s to be removed.")
        % {"watch": watch.watch_id},
    ]
    return "\n".join(lines)


def _message(
    settings: Settings, watch: watches.Watch, hits: list[SearchHit], thumbs: dict[str, bytes], language: str
) -> EmailMessage:
    unsubscribe = unsubscribe_url(settings, watch.watch_id)
    items = [dict(vars(h), url=mail.safe_url(h.url)) for h in hits]
    template = i18n.environment(language).get_template("alert.html")
    headers = {}
    if unsubscribe:
        headers = {"List-Unsubscribe": f"<{unsubscribe}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    subject = i18n.translations(language).ngettext(
        "Homeward: %(num)d listing that may show your pet",
        "Homeward: %(num)d listings that may show your pet",
        len(hits),
    ) % {"num": len(hits)}

    def html(src: Any) -> str:
        return template.render(watch_id=watch.watch_id, hits=items, src=src, unsubscribe=unsubscribe, lang=language,
                               scam_warning=SCAM_WARNING, kinds=KIND_LABELS)  # fmt: skip

    return mail.compose(
        settings,
        to=watch.email,
        subject=subject,
        text=_text(watch, hits, unsubscribe, language),
        html=html,
        images={h.photo_id: thumbs[h.photo_id] for h in hits if h.photo_id in thumbs},
        headers=headers,
    )


def deliver_watch_alerts(settings: Settings, run_id: str | None = None) -> dict[str, Any]:
    """E-mail each watch's owner the listings due since their last alert; record what was sent.

    Args:
        run_id: the match run the alerts follow (recorded with each alert; default: none named)
    """
    active = watches.active(settings)
    result: dict[str, Any] = {"run_id": run_id, "watches": len(active), "emailed": 0, "listings": 0}
    if not active:
        return result
    limit = max(1, settings.report.alert_max_per_email)
    due: dict[str, tuple[watches.Watch, list[SearchHit]]] = {}
    problems: dict[str, str] = {}
    for watch in active:
        hits, problem = watches.due_alerts(settings, watch, limit)
        if problem:
            problems[watch.watch_id] = problem
        elif hits:
            due[watch.watch_id] = (watch, hits)
    if due and not settings.report.smtp_host:
        problems.update({wid: "no report.smtp_host: alerts not sent" for wid in due})
        due = {}
    photos = PhotoLookup(settings)
    thumbs = photos.thumbnails([h.photo_id for _, hits in due.values() for h in hits if h.photo_id])
    outgoing = [(wid, _message(settings, w, hits, thumbs, i18n.resolve(w.language))) for wid, (w, hits) in due.items()]
    failed = mail.send(settings, outgoing)
    for wid, (_, hits) in due.items():
        if wid in failed:
            problems[wid] = failed[wid]
            continue
        watches.record_alerts(settings, wid, hits, run_id)
        result["emailed"] += 1
        result["listings"] += len(hits)
    fallbacks = {wid: w.language for wid, (w, _) in due.items() if i18n.missing(w.language)}
    if fallbacks:  # said, not silently English
        result["language_fallbacks"] = fallbacks
    if problems:
        for wid, reason in sorted(problems.items()):
            log.warning("watch %s: %s", wid, reason)
        result["problems"] = problems
    return result
