"""The language of a report or alert: Babel message catalogues, Babel dates, and a Jinja environment per language.

Catalogues are gettext ``.po`` files in ``dashboards/locales/<lang>/LC_MESSAGES/homeward.po`` (English is the source
language and needs none). They are read with Babel and compiled to ``.mo`` in memory the first time a language is
used, not at build time: a fresh ``pip install -e .`` (or a wheel, which ships the ``.po`` as package data) works with
no compile step, a translator edits one text file, and there is no stale ``.mo`` to forget. Compiling a catalogue
of a hundred messages takes milliseconds, once per process.

To add a language: copy ``ru/LC_MESSAGES/homeward.po`` to ``<lang>/LC_MESSAGES/``, translate its ``msgstr``, set its
``Plural-Forms``, and give the sources whose shelters read it ``language: <lang>`` in the sources config. After
changing a template's texts, refresh the catalogues with ``pybabel extract -F dashboards/locales/babel.cfg -o
/tmp/homeward.pot dashboards`` and ``pybabel update -i /tmp/homeward.pot -d dashboards/locales -D homeward``.

A source whose language has no catalogue gets English, and the result of the job names the language it asked for
(:func:`resolve`), so nothing falls back silently.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
from pathlib import Path
from typing import Any

import jinja2
from babel.core import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations

TEMPLATES = Path(__file__).with_name("templates")
LOCALES = Path(__file__).with_name("locales")
DOMAIN = "homeward"
DEFAULT = "en"


def N_(message: str) -> str:
    """Marks a message for the catalogues (``pybabel extract`` finds ``N_``); translated where it is shown."""
    return message


#: What every report and alert says first (owners and shelters are both targets of reward scams).
SCAM_WARNING = N_(
    "Never pay anyone who claims to have your pet before you have verified, in person, that the animal is yours. "
    "Scammers watch lost-pet posts and ask for a 'reward', 'shipping' or 'vet bills' up front. Verify ownership "
    "(microchip, photos, vet records) before releasing an animal, and meet in a public place or at the shelter."
)


def available() -> list[str]:
    """Every language with a catalogue, and English."""
    found = {p.parent.parent.name for p in LOCALES.glob(f"*/LC_MESSAGES/{DOMAIN}.po")}
    return sorted(found | {DEFAULT})


def resolve(language: str | None) -> str:
    """``language`` when a catalogue exists for it (``ru_RU`` finds ``ru``), else English."""
    if not language:
        return DEFAULT
    try:
        lang = Locale.parse(language.replace("-", "_")).language
    except (ValueError, UnknownLocaleError):
        return DEFAULT
    return lang if lang in available() else DEFAULT


def choices() -> list[tuple[str, str]]:
    """``(code, name in that language)`` of every language with a catalogue, for a form's language picker."""
    return [(code, Locale.parse(code).get_display_name(code) or code) for code in available()]


def negotiate(accept_language: str | None) -> str:
    """The available language a browser's ``Accept-Language`` header prefers most (``ru-RU,ru;q=0.9,en;q=0.8`` →
    ``ru``); English when it names none we have. Malformed parts are skipped (the header is the client's)."""
    ranked = []
    for n, part in enumerate((accept_language or "")[:1000].split(",")):
        tag, _, params = part.strip().partition(";")
        try:
            q = float(params.strip()[2:]) if params.strip().startswith("q=") else 1.0
        except ValueError:
            continue
        if tag and tag != "*" and q > 0:
            ranked.append((-q, n, tag))
    for _, _, tag in sorted(ranked):
        if not missing(tag):
            return resolve(tag)
    return DEFAULT


def missing(language: str | None) -> bool:
    """Whether ``language`` asks for a language that has no catalogue (so :func:`resolve` gives English)."""
    if not language:
        return False
    try:
        return Locale.parse(language.replace("-", "_")).language not in available()
    except (ValueError, UnknownLocaleError):
        return True


@functools.cache
def translations(language: str) -> NullTranslations:
    """The compiled catalogue of ``language`` (English: the messages as written)."""
    po = LOCALES / language / "LC_MESSAGES" / f"{DOMAIN}.po"
    if language == DEFAULT or not po.is_file():
        return NullTranslations()
    with po.open("rb") as fh:
        catalog = read_po(fh, locale=language, domain=DOMAIN)
    buf = io.BytesIO()
    write_mo(buf, catalog)
    buf.seek(0)
    return Translations(fp=buf, domain=DOMAIN)


def _num(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pct(value: Any) -> int:
    return 0 if value is None else max(0, min(100, round(float(value) * 100)))


@functools.cache
def environment(language: str) -> jinja2.Environment:
    """Jinja over ``dashboards/templates`` with ``_``/``ngettext`` of ``language`` (new-style: the message is the
    translator's, every value put into it is escaped) and the filters ``num``, ``pct`` and ``day``."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        extensions=["jinja2.ext.i18n"],
    )
    env.install_gettext_translations(translations(language), newstyle=True)  # type: ignore[attr-defined]
    env.filters["num"] = _num
    env.filters["pct"] = _pct
    env.filters["day"] = functools.partial(day, language=language)
    return env


def day(value: dt.date | dt.datetime | None, language: str = DEFAULT) -> str | None:
    """A date as people of ``language`` write it (``12 May 2025``, ``12 мая 2025 г.``); ``None`` stays ``None``."""
    if value is None:
        return None
    return format_date(value, format="long", locale=language)


def moment(value: dt.datetime, language: str = DEFAULT) -> str:
    """A UTC time as people of ``language`` write it, zone named."""
    return format_datetime(value, format="d MMMM y, HH:mm 'UTC'", tzinfo=dt.UTC, locale=language)
