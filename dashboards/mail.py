"""E-mail for shelter reports and owner alerts: messages with inline photos, and one SMTP session to send them.

**Photos travel as CID parts.** Gmail and Outlook drop ``data:`` images from a message body, so a message's HTML
refers to each photo as ``cid:<id>`` and the JPEG rides beside it in a ``multipart/related`` part (RFC 2392)::

    multipart/mixed                 (only when a file is attached: the report's CSV)
      multipart/alternative
        text/plain                  for text-only readers
        multipart/related
          text/html                 <img src="cid:…">
          image/jpeg                Content-ID: <…>, inline; one per photo shown
      text/csv                      attachment

**TLS.** ``report.smtp_tls``: ``implicit`` opens TLS before the first SMTP byte (``smtplib.SMTP_SSL``, port 465,
RFC 8314's recommendation for submission), ``starttls`` upgrades a plain connection (port 587) and fails when the
server offers no STARTTLS rather than sending in clear, ``none`` sends in clear (a relay on localhost). Unset, the
port decides: 465 implicit, 587 starttls, anything else none. Certificates are checked against the system's trust
store (``HW_SMTP_CAFILE`` names another CA bundle, e.g. a private relay's CA).
"""

from __future__ import annotations

import os
import smtplib
import ssl
from collections.abc import Callable, Mapping
from email.message import EmailMessage
from email.utils import getaddresses, make_msgid

from engine.config import Settings
from engine.errors import HomewardError

TLS_MODES = ("implicit", "starttls", "none")
_TLS_BY_PORT = {465: "implicit", 587: "starttls"}

#: A photo id → the ``src`` its ``<img>`` gets (``None``: no photo to show).
ImageSource = Callable[[str | None], str | None]


def tls_mode(settings: Settings) -> str:
    """The TLS mode for ``report.smtp_tls`` (explicit, else by port)."""
    cfg = settings.report
    mode = (cfg.smtp_tls or _TLS_BY_PORT.get(cfg.smtp_port, "none")).lower()
    if mode not in TLS_MODES:
        raise HomewardError(f"report.smtp_tls must be one of {', '.join(TLS_MODES)}, got {cfg.smtp_tls!r}")
    return mode


def tls_context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=os.environ.get("HW_SMTP_CAFILE") or None)


def has_address(to: str | None) -> bool:
    """Whether ``to`` names at least one address (``a@b.org, c@d.org`` or ``Name <a@b.org>``)."""
    return bool(to) and any(addr for _, addr in getaddresses([to or ""]))


def safe_url(url: str | None) -> str | None:
    """Only http(s) links reach a message (a ``javascript:`` URL in a scraped page must not become a link)."""
    return url if url and url.lower().startswith(("http://", "https://")) else None


def compose(
    settings: Settings,
    *,
    to: str,
    subject: str,
    text: str,
    html: Callable[[ImageSource], str],
    images: Mapping[str, bytes],
    headers: Mapping[str, str] | None = None,
) -> EmailMessage:
    """A message with a plain-text part and an HTML part whose photos are inline CID parts.

    ``html`` renders the body given the ``src`` of each photo id (``cid:…`` for those in ``images``, ``None`` for
    the rest), so one template serves the e-mail and the self-contained file (``data:`` URIs)."""
    cids = {photo_id: make_msgid(domain="homeward.local") for photo_id in images}
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = settings.report.smtp_sender
    msg["To"] = to
    msg["Message-ID"] = make_msgid(domain="homeward.local")
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(text)
    msg.add_alternative(html(lambda pid: f"cid:{cids[pid][1:-1]}" if pid in cids else None), subtype="html")
    html_part = msg.get_payload()[-1]
    for photo_id, cid in cids.items():
        html_part.add_related(images[photo_id], maintype="image", subtype="jpeg", cid=cid)
    return msg


def _connect(settings: Settings) -> smtplib.SMTP:
    cfg = settings.report
    mode = tls_mode(settings)
    if mode == "implicit":
        return smtplib.SMTP_SSL(cfg.smtp_host, cfg.smtp_port, timeout=cfg.smtp_timeout_s, context=tls_context())
    smtp = smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=cfg.smtp_timeout_s)
    try:
        smtp.ehlo_or_helo_if_needed()
        if mode == "starttls":
            smtp.starttls(context=tls_context())
            smtp.ehlo()
    except BaseException:
        smtp.close()
        raise
    return smtp


def send(settings: Settings, messages: list[tuple[str, EmailMessage]]) -> dict[str, str]:
    """Send every message over one SMTP session; return key → error for the ones that failed (all of them when the
    session cannot start)."""
    cfg = settings.report
    errors: dict[str, str] = {}
    if not messages:
        return errors
    mode = tls_mode(settings)
    try:
        smtp = _connect(settings)
    except (OSError, smtplib.SMTPException) as exc:
        reason = f"cannot connect to SMTP {cfg.smtp_host}:{cfg.smtp_port} (tls {mode}): {exc}"
        return {key: reason for key, _ in messages}
    done: set[str] = set()
    try:
        if cfg.smtp_user:
            smtp.login(cfg.smtp_user, cfg.smtp_password or "")
        for key, msg in messages:
            try:
                refused = smtp.send_message(msg)
                if refused:
                    errors[key] = f"recipients refused: {sorted(refused)}"
            except smtplib.SMTPRecipientsRefused as exc:
                errors[key] = f"recipients refused: {sorted(exc.recipients)}"
            except smtplib.SMTPException as exc:
                errors[key] = f"{type(exc).__name__}: {exc}"
            done.add(key)
    except (smtplib.SMTPException, OSError) as exc:
        for key, _ in messages:
            if key not in done:  # a message the server accepted before the session broke stays sent
                errors.setdefault(key, f"SMTP session failed: {exc}")
    finally:
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()
    return errors
