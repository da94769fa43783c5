"""Operator alerts of the scheduler: a source or a pipeline step failing ``alerts.failures`` times in a row, or a source
overdue (its last successful crawl older than ``alerts.overdue_factor`` cadences).

Each incident is e-mailed once to ``alerts.operator_email`` over the shelter reports' SMTP settings and sending code
(``report.smtp_*``, :func:`dashboards.mail.send`) and recorded in ``loop_alerts``. An incident is keyed by what
started it — the first failure of the streak, or the last success the source is overdue since — so it is sent once
however many rounds it lasts, and a source that recovers and fails again is a new incident. Without an operator
address (or SMTP host) the incident is logged once and recorded the same way. A failed send is logged and tried again
next round.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import getaddresses, make_msgid
from typing import Any

from engine import run_rows
from engine.config import Settings
from engine.storage import RunsDB

log = logging.getLogger(__name__)


def incidents(
    settings: Settings, sources: list[dict[str, Any]], steps: dict[str, dict[str, Any]], now: datetime | None = None
) -> list[dict[str, str]]:
    """The incidents now: from ``sources`` (rows of :func:`ray_jobs.schedule.source_status`) and ``steps``
    (:func:`ray_jobs.loop.step_failures`). Each: ``subject``, ``kind``, ``incident`` (its key), ``message``."""
    now = now or datetime.now(UTC)
    cfg = settings.alerts
    out = []
    for s in sources:
        if not (s["enabled"] and s["configured"]):
            continue
        failures = s["consecutive_failures"]
        if failures >= cfg.failures:
            out.append({
                "subject": s["source"],
                "kind": "failing",
                "incident": f"first failure {s['failing_since_run']}",
                "message": f"source {s['source']}: {failures} crawls in a row failed since {s['failing_since']}; "
                f"last error: {s['last_error'] or 'none recorded'}",
            })  # fmt: skip
        since = s["last_success"] or s["first_run"]
        cadence = s["cadence_minutes"]
        if since and cadence and now - datetime.fromisoformat(since) > timedelta(minutes=cadence * cfg.overdue_factor):
            what = "last successful crawl" if s["last_success"] else "no successful crawl since the first run"
            out.append({
                "subject": s["source"],
                "kind": "overdue",
                "incident": f"since {since}",
                "message": f"source {s['source']} is overdue: {what} at {since}, more than {cfg.overdue_factor:g} x "
                f"its cadence of {cadence:g} minutes ago; last status {s['last_status']}",
            })  # fmt: skip
    for step, f in sorted(steps.items()):
        if f["failures"] >= cfg.failures:
            since = f["first_failed"].isoformat(timespec="seconds")
            out.append({
                "subject": f"step:{step}",
                "kind": "failing",
                "incident": f"first failure {f['first_failed_id']}",
                "message": f"loop step {step}: {f['failures']} attempts in a row failed since {since}; "
                f"last error: {f['last_error']}",
            })  # fmt: skip
    return out


def _message(settings: Settings, incident: dict[str, str]) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = f"Homeward alert: {incident['subject']} {incident['kind']}"
    msg["From"] = settings.report.smtp_sender
    msg["To"] = settings.alerts.operator_email
    msg["Message-ID"] = make_msgid(domain="homeward.local")
    msg.set_content(
        f"{incident['message']}\n\nThis alert is sent once for this incident. `homeward sources` shows the state of "
        "every source and of the scheduler's rounds."
    )
    return msg


def raise_alerts(settings: Settings, current: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Send (or log) each incident of ``current`` not raised before; returns the ones raised now."""
    from dashboards import mail  # the reports' SMTP session code, so alerts and reports send alike

    runs = RunsDB(settings.duckdb)
    known = {tuple(r) for r in runs.query("SELECT subject, kind, incident FROM loop_alerts")}
    fresh = [i for i in current if (i["subject"], i["kind"], i["incident"]) not in known]
    if not fresh:
        return []
    to = settings.alerts.operator_email
    email = bool(to and any(addr for _, addr in getaddresses([to])) and settings.report.smtp_host)
    failed: dict[str, str] = {}
    if email:
        failed = mail.send(settings, [(f"{i['subject']}|{i['kind']}", _message(settings, i)) for i in fresh])
    raised = []
    now = datetime.now(UTC)
    with runs.write() as con:
        for i in fresh:
            key = f"{i['subject']}|{i['kind']}"
            if key in failed:
                log.error("alert e-mail to %s failed (retried next round): %s: %s", to, i["message"], failed[key])
                continue
            log.warning("ALERT %s", i["message"])
            run_rows.add_alert(con, i["subject"], i["kind"], i["incident"], now, i["message"], to if email else None)
            raised.append({**i, "emailed_to": to if email else None})
    return raised
