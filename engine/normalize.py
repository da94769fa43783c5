"""Vocabulary normaliser: maps a raw listing dict (site words, Russian or English) onto the schema's vocabularies.

``normalize_listing(raw)`` returns the same keys with normalised values plus ``parse_warnings``. It never raises on a
bad value: an unrecognised word becomes ``"unknown"`` (or ``None`` where the schema has no unknown, e.g. ``kind``)
and the raw text is kept in a warning, so a crawl records what it could not read instead of dropping the row.

Everything here is table-driven: each vocabulary is a dict from a site word (or a word stem, for Russian
inflections) to the schema value, and one small lookup routine serves them all. Add a word by adding a table row.

Dates: ISO strings, ``dd.mm.yyyy`` (with a weekday prefix such as ``"пт, 22.04.2022"``), Russian and English month
names (``"14 января 2024"``, ``"May 08, 2016"``), relative words (``"Вчера в 22:27"``, ``"3 дня назад"``,
``"today"``) resolved against ``now``, and Unix epoch seconds. A time without an offset is read in the source's time
zone (``tz``: the ``timezone`` of its sources entry, UTC by default; Moscow for the Russian sites).

Place: a listing without the page's own coordinates is placed by :func:`engine.places.place_listing` (its place
text, else its shelter) and gets ``geo_source``; a listing nothing places gets ``geo_source = "none"`` and a
``place:`` warning saying why.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

from engine import places
from engine.schema import AGE_GROUPS, KINDS, LISTING_STATUSES, SEXES, SIZES, SPECIES

__all__ = [
    "COLORS",
    "age_group_from_text",
    "normalize_colors",
    "normalize_listing",
    "normalize_sex",
    "normalize_size",
    "normalize_species",
    "parse_when",
]

#: The colour vocabulary listings are mapped onto (several per listing).
COLORS = (
    "black",
    "white",
    "grey",
    "brown",
    "red",
    "cream",
    "tabby",
    "tricolor",
    "tortoiseshell",
    "spotted",
    "brindle",
    "colorpoint",
)

# --------------------------------------------------------------------------------------------------------------
# Vocabularies. Keys are lower-case with "ё" folded to "е". ``*_WORDS`` match whole words or phrases; ``*_STEMS``
# match the start of a word (Russian adjectives and nouns inflect: "рыжий", "рыжая", "рыжего", "рыже-белый").
# --------------------------------------------------------------------------------------------------------------

SPECIES_WORDS: dict[str, str] = {
    # dog
    "dog": "dog",
    "dogs": "dog",
    "puppy": "dog",
    "puppies": "dog",
    "canine": "dog",
    "k9": "dog",
    "собака": "dog",
    "собаку": "dog",
    "собаки": "dog",
    "собак": "dog",
    "собачка": "dog",
    "собачку": "dog",
    "собачки": "dog",
    "собакa": "dog",
    "пес": "dog",
    "песик": "dog",
    "пса": "dog",
    "псина": "dog",
    "песель": "dog",
    "кобель": "dog",
    "кобеля": "dog",
    "сука": "dog",
    "сучка": "dog",
    "щенок": "dog",
    "щенка": "dog",
    "щенки": "dog",
    "щенков": "dog",
    "щеночек": "dog",
    # cat
    "cat": "cat",
    "cats": "cat",
    "kitten": "cat",
    "kittens": "cat",
    "kitty": "cat",
    "feline": "cat",
    "кошка": "cat",
    "кошку": "cat",
    "кошки": "cat",
    "кошек": "cat",
    "кошечка": "cat",
    "кошечку": "cat",
    "кот": "cat",
    "кота": "cat",
    "коты": "cat",
    "котов": "cat",
    "котик": "cat",
    "котика": "cat",
    "котенок": "cat",
    "котенка": "cat",
    "котята": "cat",
    "котят": "cat",
    "кис": "cat",
    "киса": "cat",
    "кошак": "cat",
    # other animals people lose and find
    "bird": "other",
    "birds": "other",
    "parrot": "other",
    "rabbit": "other",
    "bunny": "other",
    "ferret": "other",
    "hamster": "other",
    "guinea pig": "other",
    "horse": "other",
    "pig": "other",
    "goat": "other",
    "reptile": "other",
    "turtle": "other",
    "tortoise": "other",
    "snake": "other",
    "lizard": "other",
    "small & furry": "other",
    "small furry": "other",
    "scales, fins & other": "other",
    "barnyard": "other",
    "livestock": "other",
    "other": "other",
    "птица": "other",
    "птицу": "other",
    "птичка": "other",
    "попугай": "other",
    "попугая": "other",
    "попугайчик": "other",
    "кролик": "other",
    "кролика": "other",
    "хорек": "other",
    "хорька": "other",
    "хомяк": "other",
    "хомяка": "other",
    "морская свинка": "other",
    "черепаха": "other",
    "черепаху": "other",
    "лошадь": "other",
    "ворон": "other",
    "ворона": "other",
    "rat": "other",
    "chinchilla": "other",
    "конь": "other",
    "шиншилла": "other",
    "крыса": "other",
    "голубь": "other",
    "другое": "other",
    "другие": "other",
    # explicit unknowns
    "unknown": "unknown",
    "undefined": "unknown",
    "неизвестно": "unknown",
    "не указан": "unknown",
    "не указано": "unknown",
    "животное": "unknown",
    "animal": "unknown",
    "pet": "unknown",
    "питомец": "unknown",
}

SEX_WORDS: dict[str, str] = {
    "male": "male",
    "m": "male",
    "boy": "male",
    "neutered male": "male",
    "intact male": "male",
    "he": "male",
    "м": "male",
    "муж": "male",
    "мужской": "male",
    "самец": "male",
    "кобель": "male",
    "мальчик": "male",
    "мальчика": "male",
    "кастрат": "male",
    "кастрированный": "male",
    "female": "female",
    "f": "female",
    "girl": "female",
    "spayed female": "female",
    "intact female": "female",
    "she": "female",
    "ж": "female",
    "жен": "female",
    "женский": "female",
    "самка": "female",
    "сука": "female",
    "девочка": "female",
    "девочку": "female",
    "стерилизованная": "female",
    "unknown": "unknown",
    "undefined": "unknown",
    "u": "unknown",
    "n/a": "unknown",
    "неизвестно": "unknown",
    "не указан": "unknown",
    "не известен": "unknown",
    "не знаю": "unknown",
    "?": "unknown",
}

SIZE_WORDS: dict[str, str] = {
    "small": "small",
    "s": "small",
    "toy": "small",
    "tiny": "small",
    "mini": "small",
    "маленький": "small",
    "маленькая": "small",
    "маленькое": "small",
    "маленького": "small",
    "мелкий": "small",
    "мелкая": "small",
    "небольшой": "small",
    "небольшая": "small",
    "небольшого": "small",
    "мини": "small",
    "той": "small",
    "medium": "medium",
    "m": "medium",
    "med": "medium",
    "средний": "medium",
    "средняя": "medium",
    "среднего": "medium",
    "средних": "medium",
    "средний размер": "medium",
    "large": "large",
    "l": "large",
    "big": "large",
    "крупный": "large",
    "крупная": "large",
    "крупного": "large",
    "крупное": "large",
    "большой": "large",
    "большая": "large",
    "большого": "large",
    "extra large": "xlarge",
    "x-large": "xlarge",
    "xlarge": "xlarge",
    "xl": "xlarge",
    "giant": "xlarge",
    "очень крупный": "xlarge",
    "очень крупная": "xlarge",
    "очень большой": "xlarge",
    "огромный": "xlarge",
    "unknown": "unknown",
    "undefined": "unknown",
    "неизвестно": "unknown",
}

AGE_GROUP_WORDS: dict[str, str] = {
    "baby": "baby",
    "puppy": "baby",
    "kitten": "baby",
    "newborn": "baby",
    "щенок": "baby",
    "котенок": "baby",
    "котята": "baby",
    "щенки": "baby",
    "малыш": "baby",
    "малышка": "baby",
    "младенец": "baby",
    "young": "young",
    "junior": "young",
    "juvenile": "young",
    "adolescent": "young",
    "молодой": "young",
    "молодая": "young",
    "подросток": "young",
    "юный": "young",
    "юная": "young",
    "молодая собака": "young",
    "adult": "adult",
    "взрослый": "adult",
    "взрослая": "adult",
    "взрослое": "adult",
    "взрослого": "adult",
    "senior": "senior",
    "old": "senior",
    "elderly": "senior",
    "geriatric": "senior",
    "пожилой": "senior",
    "пожилая": "senior",
    "старый": "senior",
    "старая": "senior",
    "старенький": "senior",
    "старенькая": "senior",
    "unknown": "unknown",
    "undefined": "unknown",
    "неизвестно": "unknown",
}

KIND_WORDS: dict[str, str] = {
    "lost": "lost",
    "missing": "lost",
    "пропал": "lost",
    "пропала": "lost",
    "пропало": "lost",
    "пропали": "lost",
    "потерялся": "lost",
    "потерялась": "lost",
    "потерян": "lost",
    "потеряна": "lost",
    "ищу": "lost",
    "ищем": "lost",
    "found": "found",
    "найден": "found",
    "найдена": "found",
    "найдено": "found",
    "найдены": "found",
    "нашли": "found",
    "нашелся": "found",
    "нашлась": "found",
    "нашел": "found",
    "нашла": "found",
    "подобрали": "found",
    "подобран": "found",
    "подобрана": "found",
    "sighting": "sighting",
    "seen": "sighting",
    "spotted": "sighting",
    "замечен": "sighting",
    "замечена": "sighting",
    "видели": "sighting",
    "shelter": "shelter",
    "stray": "shelter",
    "intake": "shelter",
    "impound": "shelter",
    "приют": "shelter",
    "в приюте": "shelter",
    "передержка": "shelter",
    "adoptable": "adoptable",
    "adopt": "adoptable",
    "adoption": "adoptable",
    "available": "adoptable",
    "в добрые руки": "adoptable",
    "отдам": "adoptable",
    "пристройство": "adoptable",
    "ищет дом": "adoptable",
}

STATUS_WORDS: dict[str, str] = {
    "active": "active",
    "open": "active",
    "adoptable": "active",
    "available": "active",
    "actual": "active",
    "актуально": "active",
    "активно": "active",
    "ищем": "active",
    "resolved": "resolved",
    "closed": "resolved",
    "reunited": "resolved",
    "returned to owner": "resolved",
    "adopted": "resolved",
    "found": "resolved",
    "питомец нашелся": "resolved",
    "нашелся": "resolved",
    "нашлась": "resolved",
    "хозяин найден": "resolved",
    "хозяева найдены": "resolved",
    "найден новый дом": "resolved",
    "питомцу найден новый дом": "resolved",
    "дома": "resolved",
    "вернулся домой": "resolved",
    "expired": "expired",
    "archived": "expired",
    "archive": "expired",
    "архив": "expired",
    "в архиве": "expired",
    "устарело": "expired",
}

COLOR_WORDS: dict[str, tuple[str, ...]] = {
    # English words and Petfinder's colour names
    "black": ("black",),
    "ebony": ("black",),
    "tuxedo": ("black", "white"),
    "white": ("white",),
    "albino": ("white",),
    "grey": ("grey",),
    "gray": ("grey",),
    "silver": ("grey",),
    "blue": ("grey",),
    "smoke": ("grey",),
    "slate": ("grey",),
    "lilac": ("grey",),
    "agouti": ("grey",),
    "brown": ("brown",),
    "chocolate": ("brown",),
    "liver": ("brown",),
    "sable": ("brown",),
    "chestnut": ("brown",),
    "cinnamon": ("brown",),
    "mahogany": ("brown",),
    "sorrel": ("brown",),
    "bay": ("brown",),
    "red": ("red",),
    "orange": ("red",),
    "ginger": ("red",),
    "rust": ("red",),
    "rufous": ("red",),
    "copper": ("red",),
    "flame": ("red",),
    "cream": ("cream",),
    "ivory": ("cream",),
    "beige": ("cream",),
    "fawn": ("cream",),
    "tan": ("cream",),
    "buff": ("cream",),
    "golden": ("cream",),
    "gold": ("cream",),
    "yellow": ("cream",),
    "apricot": ("cream",),
    "blond": ("cream",),
    "blonde": ("cream",),
    "champagne": ("cream",),
    "wheaten": ("cream",),
    "palomino": ("cream",),
    "tabby": ("tabby",),
    "tiger": ("tabby",),
    "striped": ("tabby",),
    "stripes": ("tabby",),
    "mackerel": ("tabby",),
    "torbie": ("tabby", "tortoiseshell"),
    "tricolor": ("tricolor",),
    "tricolour": ("tricolor",),
    "tri-color": ("tricolor",),
    "calico": ("tricolor",),
    "tortoiseshell": ("tortoiseshell",),
    "tortie": ("tortoiseshell",),
    "tortoise": ("tortoiseshell",),
    "spotted": ("spotted",),
    "spots": ("spotted",),
    "leopard": ("spotted",),
    "merle": ("spotted",),
    "dapple": ("spotted",),
    "harlequin": ("spotted",),
    "piebald": ("spotted",),
    "appaloosa": ("spotted",),
    "ticked": ("spotted",),
    "roan": ("spotted",),
    "pinto": ("spotted",),
    "paint": ("spotted",),
    "dalmatian": ("spotted",),
    "speckled": ("spotted",),
    "spot": ("spotted",),
    "brindle": ("brindle",),
    "point": ("colorpoint",),
    "colorpoint": ("colorpoint",),
    "colourpoint": ("colorpoint",),
    "siamese": ("colorpoint",),
}

# Russian stems: a word starting with the stem carries the colour. Longest stem wins.
COLOR_STEMS: dict[str, tuple[str, ...]] = {
    "черн": ("black",),
    "вороной": ("black",),
    "смолян": ("black",),
    "бел": ("white",),
    "белосн": ("white",),
    "сер": ("grey",),
    "серебр": ("grey",),
    "пепел": ("grey",),
    "пепельн": ("grey",),
    "голуб": ("grey",),
    "дымч": ("grey",),
    "мышин": ("grey",),
    "сиз": ("grey",),
    "стальн": ("grey",),
    "коричн": ("brown",),
    "шоколад": ("brown",),
    "бур": ("brown",),
    "каштан": ("brown",),
    "кофе": ("brown",),
    "кофейн": ("brown",),
    "капучин": ("brown",),
    "печеночн": ("brown",),
    "соболин": ("brown",),
    "гнед": ("brown",),
    "рыж": ("red",),
    "оранж": ("red",),
    "медн": ("red",),
    "огненн": ("red",),
    "красн": ("red",),
    "крем": ("cream",),
    "беж": ("cream",),
    "палев": ("cream",),
    "песочн": ("cream",),
    "персик": ("cream",),
    "абрикос": ("cream",),
    "золот": ("cream",),
    "желт": ("cream",),
    "пшенич": ("cream",),
    "солом": ("cream",),
    "светло-рыж": ("cream",),
    "фавн": ("cream",),
    "олен": ("cream",),
    "табби": ("tabby",),
    "полосат": ("tabby",),
    "тигров": ("tabby",),
    "мраморн": ("tabby",),
    "полоск": ("tabby",),
    "трехцвет": ("tricolor",),
    "триколор": ("tricolor",),
    "трехцв": ("tricolor",),
    "ситцев": ("tricolor",),
    "черепах": ("tortoiseshell",),
    "черепаш": ("tortoiseshell",),
    "пятн": ("spotted",),
    "пятнист": ("spotted",),
    "леопард": ("spotted",),
    "мерл": ("spotted",),
    "крапч": ("spotted",),
    "пег": ("spotted",),
    "арлекин": ("spotted",),
    "далматин": ("spotted",),
    "бриндл": ("brindle",),
    "колорпойнт": ("colorpoint",),
    "поинт": ("colorpoint",),
    "пойнт": ("colorpoint",),
    "сиам": ("colorpoint",),
}

#: For a dog, a "tiger"/"striped" coat is brindle, not tabby (table of (colour, species) -> colour).
COLOR_BY_SPECIES: dict[tuple[str, str], str] = {("tabby", "dog"): "brindle"}

# Months for date parsing: Russian genitive/nominative stems and English names.
MONTHS: dict[str, int] = {
    "январ": 1,
    "феврал": 2,
    "март": 3,
    "апрел": 4,
    "мая": 5,
    "май": 5,
    "июн": 6,
    "июл": 7,
    "август": 8,
    "сентябр": 9,
    "октябр": 10,
    "ноябр": 11,
    "декабр": 12,
    "jan": 1,
    "feb": 2,
    "mar": 3,
    "apr": 4,
    "may": 5,
    "jun": 6,
    "jul": 7,
    "aug": 8,
    "sep": 9,
    "oct": 10,
    "nov": 11,
    "dec": 12,
}

#: Relative day words: word -> days before ``now``.
RELATIVE_DAYS: dict[str, int] = {
    "сегодня": 0,
    "today": 0,
    "вчера": 1,
    "yesterday": 1,
    "позавчера": 2,
}

#: Units in "N <unit> назад" / "N <unit> ago" and in age texts, as stems -> timedelta per unit.
RELATIVE_UNITS: dict[str, timedelta] = {
    "минут": timedelta(minutes=1),
    "minute": timedelta(minutes=1),
    "min": timedelta(minutes=1),
    "час": timedelta(hours=1),
    "hour": timedelta(hours=1),
    "ден": timedelta(days=1),
    "дн": timedelta(days=1),
    "день": timedelta(days=1),
    "day": timedelta(days=1),
    "недел": timedelta(weeks=1),
    "week": timedelta(weeks=1),
    "месяц": timedelta(days=30),
    "month": timedelta(days=30),
    "год": timedelta(days=365),
    "лет": timedelta(days=365),
    "year": timedelta(days=365),
}

#: Age units, stems -> months per unit.
AGE_UNITS: dict[str, float] = {
    "год": 12.0,
    "лет": 12.0,
    "г": 12.0,
    "year": 12.0,
    "yr": 12.0,
    "y": 12.0,
    "месяц": 1.0,
    "мес": 1.0,
    "month": 1.0,
    "mo": 1.0,
    "m": 1.0,
    "недел": 0.25,
    "нед": 0.25,
    "week": 0.25,
    "wk": 0.25,
    "w": 0.25,
    "ден": 1 / 30,
    "дн": 1 / 30,
    "день": 1 / 30,
    "day": 1 / 30,
    "d": 1 / 30,
}

#: Upper bounds (months, exclusive) of each age group; the last group takes the rest.
AGE_GROUP_BOUNDS: tuple[tuple[float, str], ...] = ((6.0, "baby"), (24.0, "young"), (96.0, "adult"))

_TOKEN_RE = re.compile(r"[a-zа-я0-9?]+")


def _fold(text: str) -> str:
    """Lower-case, fold "ё" to "е", collapse whitespace, trim punctuation at the ends."""
    text = str(text).replace("\u00a0", " ").lower().replace("ё", "е")
    return re.sub(r"\s+", " ", text).strip(" \t\r\n.,;:!-–—()[]\"'«»")


def _phrases(table: Mapping[str, Any]) -> list[str]:
    return sorted((k for k in table if " " in k or not k.isalnum()), key=len, reverse=True)


def _lookup(text: Any, table: Mapping[str, str]) -> str | None:
    """Exact match, then the longest phrase inside the text, then the first word of the text found in ``table``."""
    if text is None:
        return None
    folded = _fold(text)
    if not folded:
        return None
    if folded in table:
        return table[folded]
    padded = f" {folded} "
    for phrase in _phrases(table):
        if re.search(rf"(?<![a-zа-я0-9]){re.escape(phrase)}(?![a-zа-я0-9])", padded):
            return table[phrase]
    for token in _TOKEN_RE.findall(folded):
        if token in table:
            return table[token]
    return None


def _vocab(
    field: str, value: Any, table: Mapping[str, str], allowed: Iterable[str], warnings: list[str], default: str
) -> str:
    """Map ``value`` through ``table``; a missing value is ``default`` silently, an unknown one warns."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    mapped = _lookup(value, table)
    if mapped is None or mapped not in allowed:
        warnings.append(f"{field}: unrecognised value {str(value)!r}")
        return default
    if mapped == "unknown" and _fold(value) not in table:
        warnings.append(f"{field}: {str(value)!r} read as unknown")
    return mapped


def normalize_species(value: Any, warnings: list[str] | None = None) -> str:
    """``"Собака"``, ``"кот"``, ``"Dog"`` → dog/cat; ``"bird"`` → other (raw word kept in a warning)."""
    w = warnings if warnings is not None else []
    out = _vocab("species", value, SPECIES_WORDS, SPECIES, w, "unknown")
    if out == "other":
        w.append(f"species: {str(value)!r} mapped to other")
    return out


def normalize_sex(value: Any, warnings: list[str] | None = None) -> str:
    return _vocab("sex", value, SEX_WORDS, SEXES, warnings if warnings is not None else [], "unknown")


def normalize_size(value: Any, warnings: list[str] | None = None) -> str:
    return _vocab("size", value, SIZE_WORDS, SIZES, warnings if warnings is not None else [], "unknown")


_HYPHENATED = sorted((k for k in (*COLOR_WORDS, *COLOR_STEMS) if "-" in k), key=len, reverse=True)


def _color_of_word(word: str) -> tuple[str, ...] | None:
    if word in COLOR_WORDS:
        return COLOR_WORDS[word]
    for stem in sorted(COLOR_STEMS, key=len, reverse=True):
        if word.startswith(stem):
            return COLOR_STEMS[stem]
    return None


def normalize_colors(value: Any, warnings: list[str] | None = None, species: str | None = None) -> list[str]:
    """A colour string or list → ordered, de-duplicated colours from :data:`COLORS` (several per listing).

    ``"Серый с леопардовыми пятнами"`` → ``["grey", "spotted"]``; ``"Black & White / Tuxedo"`` →
    ``["black", "white"]``; ``"бело-рыжий"`` → ``["white", "red"]``.
    """
    w = warnings if warnings is not None else []
    if value is None:
        return []
    items = [value] if isinstance(value, str) else [v for v in value if v is not None]
    out: list[str] = []
    for item in items:
        folded = _fold(item)
        if not folded:
            continue
        found: list[str] = []
        for part in re.split(r"[\s/,&+;()\[\]]+", folded):
            part = part.strip(".:'\"")
            hyphenated = next((k for k in _HYPHENATED if part.startswith(k)), None)
            words = [part] if hyphenated else part.split("-")
            for word in words:
                if not word or word.isdigit():
                    continue
                colors = _color_of_word(word)
                if colors:
                    found.extend(colors)
        if not found:
            w.append(f"colors: unrecognised colour {str(item)!r}")
        for c in found:
            c = COLOR_BY_SPECIES.get((c, species or ""), c)
            if c not in out:
                out.append(c)
    return out


def _age_months(text: str) -> float | None:
    """Sum "6 years 7 months 7 days", "1 year and 6 months", "1,5 года", "8 мес" into months."""
    folded = _fold(text).replace(",", ".")
    total = 0.0
    seen = False
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-zа-я]+)", folded):
        for stem in sorted(AGE_UNITS, key=len, reverse=True):
            if unit.startswith(stem):
                total += float(num) * AGE_UNITS[stem]
                seen = True
                break
    if not seen:
        half = re.search(r"полгода|пол года|half a year", folded)
        if half:
            return 6.0
        return None
    return total


def age_group_from_text(value: Any, warnings: list[str] | None = None) -> str:
    """Age text → baby (< 6 months), young (< 2 years), adult (< 8 years), senior; words like "Senior", "щенок"."""
    w = warnings if warnings is not None else []
    if value is None or not str(value).strip():
        return "unknown"
    word = _lookup(value, AGE_GROUP_WORDS)
    if word:
        return word
    months = _age_months(str(value))
    if months is None:
        w.append(f"age: unrecognised age {str(value)!r}")
        return "unknown"
    for bound, group in AGE_GROUP_BOUNDS:
        if months < bound:
            return group
    return "senior"


# ------------------------------------------------------------------------------------------------------ dates


def _aware(dt: datetime, zone: tzinfo = UTC) -> datetime:
    return dt.replace(tzinfo=zone) if dt.tzinfo is None else dt


def has_zone(value: Any) -> bool:
    """Whether a date value names its own instant (an ISO offset or "Z", epoch seconds, an aware datetime)."""
    if isinstance(value, datetime):
        return value.tzinfo is not None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return True
    text = str(value or "").strip()
    return bool(re.search(r"(?:[+-]\d{2}:?\d{2}|Z)$", text) and re.match(r"\d{4}-\d{2}-\d{2}[T ]", text)) or bool(
        re.fullmatch(r"\d{9,10}(?:\.\d+)?", text)
    )


def _hhmm(text: str) -> time | None:
    m = re.search(r"(\d{1,2})[:.](\d{2})(?::(\d{2}))?", text)
    if not m:
        return None
    h, mi, s = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    if h > 23 or mi > 59 or s > 59:
        return None
    return time(h, mi, s)


def _month_of(word: str) -> int | None:
    for stem in sorted(MONTHS, key=len, reverse=True):
        if word.startswith(stem):
            return MONTHS[stem]
    return None


def parse_when(value: Any, now: datetime | None = None, tz: tzinfo | None = None) -> tuple[datetime | None, bool]:
    """Parse a site's date/time text into an aware datetime: ``(dt, has_time)``, or ``(None, False)`` if unreadable.

    A date or time without an offset is read in ``tz`` (the source's time zone; UTC by default): "14.01.2024 10:00"
    on a Moscow site is 07:00 UTC. Relative words ("вчера в 22:27") are resolved against ``now`` (UTC now by
    default) as a clock in ``tz`` shows it. Epoch seconds and ISO texts with an offset keep their own instant.
    """
    zone = tz or UTC
    if value is None:
        return None, False
    if isinstance(value, datetime):
        return _aware(value, zone), True
    if isinstance(value, date):
        return datetime.combine(value, time(), zone), False
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or not 0 < value < 32503680000:
            return None, False
        return datetime.fromtimestamp(float(value), UTC), True
    text = str(value).strip()
    if not text:
        return None, False
    if re.fullmatch(r"\d{9,10}(?:\.\d+)?", text):
        return datetime.fromtimestamp(float(text), UTC), True
    # ISO 8601 (Python 3.11 reads "Z", "+00:00" and "+0000" offsets and fractional seconds)
    iso = re.match(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?$", text)
    if iso:
        try:
            dt = datetime.fromisoformat(text.replace(" ", "T", 1) if len(text) > 10 else text)
        except ValueError:
            return None, False
        return _aware(dt, zone) if len(text) > 10 else datetime.combine(dt.date(), time(), zone), len(text) > 10
    folded = _fold(text)
    now = (_aware(now) if now is not None else datetime.now(UTC)).astimezone(zone)
    t = _hhmm(folded)
    # dd.mm.yyyy / dd.mm.yy / dd/mm/yyyy (a weekday prefix like "пт," is ignored)
    m = re.search(r"(?<!\d)(\d{1,2})[./](\d{1,2})[./](\d{4}|\d{2})(?!\d)", folded)
    if m:
        d, mo, y = int(m.group(1)), int(m.group(2)), int(m.group(3))
        y = y + 2000 if y < 100 else y
        rest = folded[m.end() :]
        t = _hhmm(rest)
        try:
            return datetime.combine(date(y, mo, d), t or time(), zone), t is not None
        except ValueError:
            return None, False
    # "14 января 2024", "13 октября 2022 в 10:00", "08 May 2016"
    m = re.search(r"(?<!\d)(\d{1,2})\s+([a-zа-я]+)\.?,?\s+(\d{4})", folded)
    if m and _month_of(m.group(2)):
        try:
            d0 = date(int(m.group(3)), _month_of(m.group(2)) or 0, int(m.group(1)))
        except ValueError:
            return None, False
        t = _hhmm(folded[m.end() :])
        return datetime.combine(d0, t or time(), zone), t is not None
    # "May 08, 2016", "May 8 2016"
    m = re.search(r"([a-z]+)\.?\s+(\d{1,2}),?\s+(\d{4})", folded)
    if m and _month_of(m.group(1)):
        try:
            d0 = date(int(m.group(3)), _month_of(m.group(1)) or 0, int(m.group(2)))
        except ValueError:
            return None, False
        t = _hhmm(folded[m.end() :])
        return datetime.combine(d0, t or time(), zone), t is not None
    # "14 января" (no year): the latest such day not after ``now``
    m = re.search(r"(?<!\d)(\d{1,2})\s+([a-zа-я]+)", folded)
    if m and _month_of(m.group(2)):
        month = _month_of(m.group(2)) or 0
        try:
            d0 = date(now.year, month, int(m.group(1)))
            if d0 > now.date():
                d0 = date(now.year - 1, month, int(m.group(1)))
        except ValueError:
            return None, False
        t = _hhmm(folded[m.end() :])
        return datetime.combine(d0, t or time(), zone), t is not None
    # "сегодня в 00:10", "вчера в 22:27", "yesterday"
    for word, days in RELATIVE_DAYS.items():
        if re.search(rf"(?<![a-zа-я]){word}(?![a-zа-я])", folded):
            day = (now - timedelta(days=days)).date()
            return datetime.combine(day, t or time(), zone), t is not None
    # "3 дня назад", "2 hours ago", "час назад"
    m = re.search(r"(?:(\d+)\s+)?([a-zа-я]+)\s+(?:назад|ago)", folded)
    if m:
        for stem in sorted(RELATIVE_UNITS, key=len, reverse=True):
            if m.group(2).startswith(stem):
                delta = RELATIVE_UNITS[stem] * int(m.group(1) or 1)
                return now - delta, delta < timedelta(days=1)
    return None, False


# ---------------------------------------------------------------------------------------------------- listing

_TEXT_FIELDS = ("breed", "name", "location_text", "shelter_name", "shelter_id", "url", "source_id")


def _float_in(value: Any, lo: float, hi: float) -> float | None:
    try:
        f = float(str(value).replace(",", ".")) if not isinstance(value, int | float) else float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and lo <= f <= hi else None


def _clean_text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).replace("\u00a0", " ").replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(re.sub(r"[ \t\f\v]+", " ", line).strip() for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text or None


def _vocabularies(out: dict[str, Any], raw: Mapping[str, Any], warnings: list[str]) -> None:
    """Kind, status, species, sex, size, colours and age group onto the schema's words (unknown ones: a warning)."""
    if "kind" in out:
        kind = _lookup(out["kind"], KIND_WORDS) if out["kind"] is not None else None
        if out["kind"] is not None and kind not in KINDS:
            warnings.append(f"kind: unrecognised value {str(raw['kind'])!r}")
            kind = None
        out["kind"] = kind
    if "status" in out:
        status = _lookup(out["status"], STATUS_WORDS) if out["status"] is not None else None
        if out["status"] is not None and status not in LISTING_STATUSES:
            warnings.append(f"status: unrecognised value {str(raw['status'])!r}")
            status = None
        out["status"] = status or "active"
    else:
        out["status"] = "active"

    out["species"] = normalize_species(raw.get("species"), warnings)
    out["sex"] = normalize_sex(raw.get("sex"), warnings)
    if "size" in out:
        out["size"] = normalize_size(raw.get("size"), warnings)
    if "colors" in out:
        out["colors"] = normalize_colors(raw.get("colors"), warnings, species=out["species"])

    given_group = raw.get("age_group")
    if given_group is not None and str(given_group).strip():
        group = _lookup(given_group, AGE_GROUP_WORDS)
        if group not in AGE_GROUPS:
            group = age_group_from_text(given_group, warnings)
        out["age_group"] = group
    elif "age_text" in out or "age_group" in out:
        out["age_group"] = age_group_from_text(raw.get("age_text"), warnings)


def _place(
    out: dict[str, Any],
    raw: Mapping[str, Any],
    warnings: list[str],
    country: str | None,
    shelters: Mapping[str, str] | None,
) -> None:
    """Valid page coordinates, else a place from the page's words or its shelter (:func:`places.place_listing`)."""
    for key, lo, hi in (("lat", -90.0, 90.0), ("lon", -180.0, 180.0)):
        if key in out and out[key] is not None:
            val = _float_in(out[key], lo, hi)
            if val is None:
                warnings.append(f"{key}: not a coordinate {str(raw[key])!r}")
            out[key] = val
    if out.get("lat") is not None and out.get("lon") is not None and out["lat"] == 0 and out["lon"] == 0:
        warnings.append("lat/lon: 0,0 is no location")
        out["lat"] = out["lon"] = None
    out["lat"], out["lon"], out["geo_source"], note = places.place_listing(out, country=country, shelters=shelters)
    if note:
        warnings.append(f"place: {note}")


def _dates(
    out: dict[str, Any], raw: Mapping[str, Any], warnings: list[str], now: datetime | None, zone: tzinfo
) -> None:
    """``event_date`` as the day where it happened, ``posted_at`` in UTC; text without an offset read in ``zone``."""
    if "event_date" in out:
        ev = raw.get("event_date")
        dt, _ = parse_when(ev, now, zone)
        if dt is None and ev not in (None, ""):
            warnings.append(f"event_date: unreadable date {str(ev)!r}")
        if dt is not None and isinstance(ev, str) and re.search(r"[+-]\d{2}:?\d{2}$|Z$", ev.strip()):
            out["event_date"] = dt.date()  # the date as written where it happened
        else:
            out["event_date"] = dt.astimezone(zone).date() if dt is not None else None
    if "posted_at" in out:
        pv = raw.get("posted_at")
        dt, _ = parse_when(pv, now, zone)
        if dt is None and pv not in (None, ""):
            warnings.append(f"posted_at: unreadable date {str(pv)!r}")
        out["posted_at"] = dt.astimezone(UTC) if dt is not None else None


def _photo_urls(urls: Any, warnings: list[str]) -> list[str]:
    """Absolute http(s) URLs, each once, in page order."""
    urls = [urls] if isinstance(urls, str) else list(urls or [])
    kept: list[str] = []
    for u in urls:
        u = str(u or "").strip()
        if not re.match(r"https?://[^\s/]+", u, flags=re.I):
            warnings.append(f"photo_urls: not an absolute http(s) URL {u!r}")
            continue
        if u not in kept:
            kept.append(u)
    return kept


def normalize_listing(
    raw: Mapping[str, Any],
    *,
    now: datetime | None = None,
    tz: tzinfo | None = None,
    country: str | None = None,
    shelters: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Map a raw listing dict (the parsers' output) onto the schema's vocabularies and give it a place.

    Returns a new dict with the same keys, normalised values and ``parse_warnings: list[str]`` (the raw dict's own
    warnings first). ``age_group`` is added when the raw dict has ``age_text``; ``event_date`` becomes a
    ``datetime.date`` (the day where it happened), ``posted_at`` an aware UTC ``datetime``; dates without an offset
    are read in ``tz``. ``lat``/``lon``/``geo_source`` come from :func:`engine.places.place_listing` with the
    source's ``country`` hint and ``shelters`` directory. Never raises on bad values.
    """
    zone = tz or UTC
    out: dict[str, Any] = dict(raw)
    warnings: list[str] = [str(x) for x in (raw.get("parse_warnings") or [])]

    if not str(raw.get("source_id") or "").strip():
        warnings.append("source_id: missing")

    for key in _TEXT_FIELDS:
        if key in out:
            out[key] = _clean_text(out[key])
    if "description" in out:
        out["description"] = _clean_text(out["description"])

    _vocabularies(out, raw, warnings)
    _place(out, raw, warnings, country, shelters)
    _dates(out, raw, warnings, now, zone)
    if "photo_urls" in out:
        out["photo_urls"] = _photo_urls(out["photo_urls"], warnings)
    out["parse_warnings"] = warnings
    return out
