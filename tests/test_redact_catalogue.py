"""Redaction against a catalogue of realistic strings (tests/data/redaction_catalogue.yaml): contacts in Russian,
Ukrainian, Belarusian, US and UK spellings must go (>= 98 % of them), text without a contact must stay exactly as
written, and every spelling of one contact must give one canonical form (one hash)."""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine import phones
from engine.redact import canonical_contact, phone_view, redact

CATALOGUE: dict[str, Any] = yaml.safe_load(
    (Path(__file__).parent / "data" / "redaction_catalogue.yaml").read_text(encoding="utf-8")
)
MIN_RECALL = 0.98


def _digits(text: str) -> str:
    return "".join(ch for ch in phone_view(unicodedata.normalize("NFKC", text)) if ch.isdigit())


def leaks(entry: dict[str, Any]) -> list[str]:
    """What of ``entry``'s contact survives redaction (empty: caught): a ``gone`` string, a number's last seven
    digits in any spelling, or any digit beyond those of the text around the contact."""
    out = redact(entry["text"], phones.regions(entry.get("region"))).text
    left = [g for g in entry["gone"] if g.lower() in out.lower()]
    left += [g for g in entry["gone"] if len(_digits(g)) >= 7 and _digits(g)[-7:] in _digits(out)]
    context = entry["text"]
    for g in entry["gone"]:
        context = context.replace(g, " ")
    if len(_digits(out)) > len(_digits(context)):  # a piece of a number survived ("п[phone] 67")
        left.append(f"digits left in {out!r}")
    return left


def test_catalogue_is_large_and_varied() -> None:
    kinds = [e["kind"] for e in CATALOGUE["contacts"]]
    assert len(kinds) + len(CATALOGUE["keep"]) >= 150 and len(CATALOGUE["keep"]) >= 50
    assert {"phone", "email", "handle", "profile"} <= set(kinds)


def test_contacts_are_redacted() -> None:
    contacts = CATALOGUE["contacts"]
    missed = {e["text"]: left for e in contacts if (left := leaks(e))}
    recall = 1 - len(missed) / len(contacts)
    assert recall >= MIN_RECALL, f"recall {recall:.1%}; missed: {missed}"


@pytest.mark.parametrize("text", CATALOGUE["keep"])
def test_text_without_contacts_is_untouched(text: str) -> None:
    assert redact(text).text == text


@pytest.mark.parametrize("spellings", CATALOGUE["same_contact"], ids=lambda s: s[0])
def test_one_contact_one_canonical_form(spellings: list[str]) -> None:
    forms = {canonical_contact(s) for s in spellings}
    assert len(forms) == 1, forms


def test_the_leak_check_sees_a_number_in_another_spelling() -> None:
    """A bare 7-digit run is no phone to the redactor, so the checker must find the number's digits left over."""
    assert leaks({"kind": "phone", "text": "code 1234567", "gone": ["123-45-67"]})[0] == "123-45-67"
