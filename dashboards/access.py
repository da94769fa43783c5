"""Per-shelter access tokens for the dashboard.

A shelter's token is derived, not stored: ``HMAC-SHA256(settings.salt, "homeward-dashboard:" + shelter_key)``, first
24 hex characters. ``shelter_key`` is the listing snapshot's ``shelter_id`` (or the ``source`` for found posts with
no shelter). So:

* ``homeward report`` prints each report's token in its JSON (``reports[].token``); the operator hands it to the
  shelter with its report; the shelter opens ``/shelter/<shelter_key>?token=<token>``;
* changing ``salt`` revokes every token at once (and changes the contact hashes: choose it once, keep it secret);
* the dashboard refuses to bind a non-loopback address while ``salt`` is the public default, since anyone could then
  derive every token.

An operator token (``homeward dashboard --token T``) opens every shelter view and the shelter index.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from engine.config import Settings

DEFAULT_SALT = Settings().salt


def shelter_token(settings: Settings, shelter_key: str) -> str:
    msg = f"homeward-dashboard:{shelter_key}".encode()
    return hmac.new(settings.salt.encode(), msg, hashlib.sha256).hexdigest()[:24]


def check_token(settings: Settings, shelter_key: str, given: str | None, operator_token: str | None = None) -> bool:
    """Whether ``given`` opens ``shelter_key``'s views (its own token, or the operator token)."""
    if not given:
        return False
    if operator_token and hmac.compare_digest(given.encode(), operator_token.encode()):
        return True
    return hmac.compare_digest(given.encode(), shelter_token(settings, shelter_key).encode())


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
