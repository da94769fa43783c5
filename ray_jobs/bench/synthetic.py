"""A synthetic region for load tests: listings and photos whose field distributions come from real datasets.

The distributions are read **at run time** from the team's datasets folder (``../shared/data/datasets``, or
``HW_DATASETS_DIR``); nothing from them is copied into the repository or into the generated rows except the
vocabulary of normalised values (species, sex, colours, size, age group) and coarse breed names. What comes from where:

============================  ===================================================================================
field                         source (normalised with :mod:`engine.normalize`, Homeward's own vocabulary)
============================  ===================================================================================
kind lost : found             pet911_2025 lost/found files and vk_posts_labelled ``MessageType`` (L/F) counts
kind shelter : adoptable      sonoma_shelter ``Intake Type`` (STRAY → shelter, other intakes → adoptable);
                              their share of all listings is ``shelter_share`` (a deployment choice, default 0.3)
species per kind group        posts: pet911 ``тип_животного`` + vk ``Species``; shelters: sonoma + long_beach types
colours, sex, size, breed,    sonoma_shelter (dogs and cats) and long_beach_shelter (cats), per species
age group
photos per listing            posts: pet911 ``количество_фото``; shelter/adoptable: petfinder_my ``PhotoAmt``;
                              then scaled so the region holds ``n_photos`` in total
event → posted delay          pet911: ``дата пропажи`` / ``дата находки`` → ``дата_публикации`` (days)
lost → found delay            sonoma + long_beach ``RETURN TO OWNER`` intake → outcome days (the time an owner
                              takes to find a found animal: the closest recorded proxy for loss → find)
reunion share                 pet911 lost posts whose status is ``питомец найден`` (pet found)
geography                     sonoma_shelter ``Location`` coordinates (zip centroids) as offsets from their median,
                              plus 1.5 km jitter; season: intake day-of-year histogram of both shelter files
============================  ===================================================================================

Reunions are planted: a share of lost listings gets a found-side listing of the *same animal* (same species and
looks, found ``lost → found delay`` days later, a few km away). Photo vectors are synthetic (an identity vector per
animal plus noise, unit length) because enriching 500k photos on 2 CPUs would take about a day (YOLO ~6 img/s +
embedder ~26 img/s); the match stage does not care where its vectors came from.

Python::

    from ray_jobs.bench.synthetic import load_region_model, Region
    region = Region(load_region_model(), n_listings=200_000, n_photos=500_000, seed=1)
    for items in region.items(chunk=10_000): ...          # ListingItem-ready dicts with their photo rows
    for table in region.detections(dim=512, text_dim=384, embed_model="m", chunk=50_000): ...
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from engine import ids, schema
from engine.errors import HomewardError

REPO = Path(__file__).resolve().parents[2]
SOURCE = "synthetic"
START = dt.date(2024, 1, 1)
KM_PER_DEG_LAT = 110.574


class DatasetsMissing(HomewardError, FileNotFoundError):
    """The datasets folder (or one of the files the model reads) is not on this machine."""


def default_datasets_dir() -> Path:
    return Path(os.environ.get("HW_DATASETS_DIR") or REPO.parent / "shared" / "data" / "datasets")


@dataclass(frozen=True)
class Empirical:
    """A discrete distribution: ``values`` with probabilities ``probs`` (from counts)."""

    values: tuple[Any, ...]
    probs: np.ndarray

    @classmethod
    def of(cls, counts: Counter[Any] | dict[Any, float], min_count: float = 0) -> Empirical:
        items = sorted(((v, c) for v, c in counts.items() if c > min_count), key=lambda kv: (-kv[1], str(kv[0])))
        if not items:
            raise ValueError("empty distribution")
        total = float(sum(c for _, c in items))
        return cls(tuple(v for v, _ in items), np.array([c / total for _, c in items]))

    def sample_index(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.choice(len(self.values), size=n, p=self.probs)

    def sample(self, rng: np.random.Generator, n: int) -> list[Any]:
        return [self.values[i] for i in self.sample_index(rng, n)]

    def mean(self) -> float:
        return float(sum(float(v) * p for v, p in zip(self.values, self.probs, strict=True)))

    def top(self, n: int = 5) -> dict[str, float]:
        return {str(v): round(float(p), 4) for v, p in list(zip(self.values, self.probs, strict=True))[:n]}


@dataclass
class RegionModel:
    """Every distribution the generator samples from, with the row counts it was estimated on."""

    kind: Empirical
    species: dict[str, Empirical]  # "post" | "shelter"
    colors: dict[str, Empirical]  # per species; values are tuples of colour words
    sex: dict[str, Empirical]
    size: dict[str, Empirical]
    breed: dict[str, Empirical]
    age_group: dict[str, Empirical]
    photos: dict[str, Empirical]  # "post" | "shelter"
    post_delay: Empirical
    reunion_delay: Empirical
    reunion_share: float
    geo_km: np.ndarray  # (n, 2): east, north offsets from the centre, km
    centre: tuple[float, float]
    season: np.ndarray  # 366 day-of-year weights
    rows_read: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind.top(),
            "species_posts": self.species["post"].top(),
            "species_shelters": self.species["shelter"].top(),
            "dog_colors": self.colors["dog"].top(3),
            "photos_per_post_mean": round(self.photos["post"].mean(), 3),
            "photos_per_shelter_listing_mean": round(self.photos["shelter"].mean(), 3),
            "post_delay_days_mean": round(self.post_delay.mean(), 2),
            "reunion_delay_days_mean": round(self.reunion_delay.mean(), 2),
            "reunion_share": round(self.reunion_share, 4),
            "geo_points": len(self.geo_km),
            "rows_read": self.rows_read,
        }


# ----------------------------------------------------------------------------------------------------- reading
def _csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise DatasetsMissing(f"dataset file {path} is missing")
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as fh:
        return list(csv.DictReader(fh))


_RU_DATE = re.compile(r"(\d{1,2})\.(\d{1,2})\.(\d{4})")
_US_DATE = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})")
_COORDS = re.compile(r"\((-?\d+\.\d+),\s*(-?\d+\.\d+)\)")


def _date(text: str | None) -> dt.date | None:
    for rx, order in ((_RU_DATE, "dmy"), (_US_DATE, "mdy")):
        m = rx.search(text or "")
        if m:
            a, b, y = (int(g) for g in m.groups())
            d, mo = (a, b) if order == "dmy" else (b, a)
            try:
                return dt.date(y, mo, d)
            except ValueError:
                return None
    return None


_SEX_PRE = {"neutered": "male", "spayed": "female"}


def _normalised(counts: Counter[str], fn: Any) -> Counter[Any]:
    """Apply a normaliser once per distinct raw value and add up the counts."""
    out: Counter[Any] = Counter()
    for raw, n in counts.items():
        out[fn(raw)] += n
    return out


@dataclass
class _Rows:
    """The rows of every dataset the region model is estimated from."""

    lost: list[dict[str, Any]]  # pet911 lost posts
    found: list[dict[str, Any]]  # pet911 found posts
    vk: list[dict[str, Any]]  # labelled VK posts
    sonoma: list[dict[str, Any]]  # Sonoma County shelter intakes and outcomes
    beach: list[dict[str, Any]]  # Long Beach shelter intakes and outcomes (cats)
    petfinder: list[dict[str, Any]]  # PetFinder.my listings

    @classmethod
    def read(cls, root: Path) -> _Rows:
        vk: list[dict[str, Any]] = []
        for path in sorted((root / "vk_posts_labelled").glob("*.json")):
            vk.extend(json.loads(path.read_text(encoding="utf-8")))
        return cls(
            lost=_csv(root / "pet911_2025" / "Dataset_final_Pet911_lost.csv"),
            found=_csv(root / "pet911_2025" / "dataset_final_Pet911_found.csv"),
            vk=vk,
            sonoma=_csv(root / "sonoma_shelter" / "Animal_Shelter_Intake_and_Outcome.csv"),
            beach=_csv(root / "long_beach_shelter" / "animal-shelter-intakes-and-outcomes.csv"),
            petfinder=_csv(root / "petfinder_my" / "test.csv"),
        )


def _kinds(rows: _Rows, shelter_share: float) -> Empirical:
    n_lost = len(rows.lost) + sum(r.get("MessageType") == "L" for r in rows.vk)
    n_found = len(rows.found) + sum(r.get("MessageType") == "F" for r in rows.vk)
    stray = sum(r["Intake Type"] == "STRAY" for r in rows.sonoma)
    posts = n_lost + n_found
    return Empirical.of(
        {
            "lost": (1 - shelter_share) * n_lost / posts,
            "found": (1 - shelter_share) * n_found / posts,
            "shelter": shelter_share * stray / len(rows.sonoma),
            "adoptable": shelter_share * (len(rows.sonoma) - stray) / len(rows.sonoma),
        }
    )


def _species(rows: _Rows) -> dict[str, Empirical]:
    from engine.normalize import normalize_species

    vk_species = {"D": "dog", "C": "cat", "O": "other"}
    post = _normalised(Counter(r["тип_животного"] for r in rows.lost + rows.found), normalize_species)
    post.update(vk_species[r["Species"]] for r in rows.vk if r.get("Species") in vk_species)
    shelter = _normalised(
        Counter([r["Type"] for r in rows.sonoma] + [r["Animal Type"] for r in rows.beach]), normalize_species
    )
    post.pop("unknown", None)
    shelter.pop("unknown", None)
    return {"post": Empirical.of(post), "shelter": Empirical.of(shelter)}


def _looks(rows: _Rows) -> dict[str, dict[str, Empirical]]:
    """Colours, sex, size, breed and age group per species (dog/cat from the shelters; "other" gets the shelters'
    OTHER rows, else the cat or dog table)."""
    from engine.normalize import age_group_from_text, normalize_colors, normalize_sex, normalize_size, normalize_species

    def by_species(pairs: list[tuple[str, str]], fn: Any) -> dict[str, Empirical]:
        per: dict[str, Counter[str]] = {}
        for sp, raw in pairs:
            per.setdefault(sp, Counter())[raw] += 1
        return {sp: Empirical.of(_normalised(c, fn)) for sp, c in per.items()}

    sonoma = [(normalize_species(r["Type"]), r) for r in rows.sonoma]
    beach = [("cat", r) for r in rows.beach]
    tables = {
        "colors": by_species(
            [(sp, r["Color"]) for sp, r in sonoma]
            + [(sp, "/".join(x for x in (r["Primary Color"], r["Secondary Color"]) if x)) for sp, r in beach],
            lambda raw: tuple(normalize_colors(raw.replace("BRN", "BROWN").replace("ORG", "ORANGE"))) or ("unknown",),
        ),
        "sex": by_species(
            [(sp, r["Sex"]) for sp, r in sonoma] + [(sp, r["Sex"]) for sp, r in beach],
            lambda raw: normalize_sex(_SEX_PRE.get(raw.strip().lower(), raw)),
        ),
        "size": by_species([(sp, r["Size"]) for sp, r in sonoma], normalize_size),
        "breed": by_species([(sp, r["Breed"]) for sp, r in sonoma], lambda raw: raw.strip().lower() or "unknown"),
        "age_group": by_species(
            [(sp, f"{r['Age']} years") for sp, r in beach if r["Age"].strip().isdigit()]
            + [(sp, _age_text(r["Date Of Birth"], r["Intake Date"])) for sp, r in sonoma],
            age_group_from_text,
        ),
    }
    for table in tables.values():
        for sp in ("dog", "cat", "other"):
            table.setdefault(sp, table.get("cat") or table.get("dog") or Empirical.of({"unknown": 1}))
    return tables


def _photos(rows: _Rows) -> dict[str, Empirical]:
    post = Counter(int(r["количество_фото"]) for r in rows.lost + rows.found if r["количество_фото"].strip().isdigit())
    shelter = Counter(
        int(float(r["PhotoAmt"])) for r in rows.petfinder if r.get("PhotoAmt", "").replace(".", "", 1).isdigit()
    )
    return {"post": Empirical.of(post), "shelter": Empirical.of(shelter)}


def _delays(rows: _Rows) -> tuple[Empirical, Empirical]:
    """Days from the event to the post (pet911), and from intake to a return to the owner (the shelters)."""
    post_delay: Counter[int] = Counter()
    for posts, event_col in ((rows.lost, "дата пропажи"), (rows.found, "дата находки")):
        for r in posts:
            ev, posted = _date(r.get(event_col)), _date(r.get("дата_публикации"))
            if ev and posted and 0 <= (posted - ev).days <= 365:
                post_delay[(posted - ev).days] += 1
    reunion: Counter[int] = Counter()
    for r in rows.sonoma:
        if r["Outcome Type"] == "RETURN TO OWNER" and r["Days in Shelter"].strip().isdigit():
            reunion[int(r["Days in Shelter"])] += 1
    for r in rows.beach:
        if "RETURN" in r["Outcome Type"] and "OWNER" in r["Outcome Type"]:
            a, b = _date(r["Intake Date"]), _date(r["Outcome Date"])
            if a and b and 0 <= (b - a).days <= 365:
                reunion[(b - a).days] += 1
    return Empirical.of(post_delay), Empirical.of(reunion)


def _geography(rows: _Rows) -> tuple[np.ndarray, tuple[float, float], np.ndarray]:
    """Sonoma intake places as km offsets from their median centre, the centre, and the intake-day season."""
    coords = [
        tuple(float(g) for g in m.groups()) for r in rows.sonoma if (m := _COORDS.search(r.get("Location") or ""))
    ]
    if len(coords) < 100:
        raise DatasetsMissing("sonoma_shelter Location coordinates are missing or unreadable")
    arr = np.array(coords)
    centre = (float(np.median(arr[:, 0])), float(np.median(arr[:, 1])))
    km_lon = 111.32 * math.cos(math.radians(centre[0]))
    geo = np.column_stack([(arr[:, 1] - centre[1]) * km_lon, (arr[:, 0] - centre[0]) * KM_PER_DEG_LAT])
    geo = geo[np.hypot(geo[:, 0], geo[:, 1]) < 80]  # drop far-away out-of-county addresses
    season = np.ones(366)
    for r in [*rows.sonoma, *rows.beach]:
        d = _date(r.get("Intake Date"))
        if d:
            season[d.timetuple().tm_yday - 1] += 1
    return geo, centre, season / season.sum()


def load_region_model(datasets_dir: str | os.PathLike[str] | None = None, shelter_share: float = 0.3) -> RegionModel:
    """Estimate every distribution from the datasets folder (see the module docstring for what comes from where)."""
    root = Path(datasets_dir) if datasets_dir else default_datasets_dir()
    if not root.is_dir():
        raise DatasetsMissing(f"datasets folder {root} is missing (set HW_DATASETS_DIR or pass datasets_dir)")
    rows = _Rows.read(root)
    post_delay, reunion_delay = _delays(rows)
    geo, centre, season = _geography(rows)
    return RegionModel(
        kind=_kinds(rows, shelter_share),
        species=_species(rows),
        **_looks(rows),
        photos=_photos(rows),
        post_delay=post_delay,
        reunion_delay=reunion_delay,
        reunion_share=sum(r["статус"] == "питомец найден" for r in rows.lost) / max(1, len(rows.lost)),
        geo_km=geo,
        centre=centre,
        season=season,
        rows_read={
            "pet911": len(rows.lost) + len(rows.found),
            "vk": len(rows.vk),
            "sonoma": len(rows.sonoma),
            "long_beach": len(rows.beach),
            "petfinder_my": len(rows.petfinder),
        },
    )


def _age_text(born: str, at: str) -> str:
    b, a = _date(born), _date(at)
    if not (b and a) or a < b:
        return ""
    months = (a - b).days / 30.4
    return f"{months / 12:.0f} years" if months >= 12 else f"{max(1, round(months))} months"


# ----------------------------------------------------------------------------------------------------- generating
_M1, _M2, _M3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _hash_normal(keys: np.ndarray, dim: int, salt: int) -> np.ndarray:
    """A deterministic pseudo-random vector per key (splitmix64 of key and coordinate, uniform with unit variance):
    the same animal gets the same identity vector in every chunk without storing one per animal."""
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64)[:, None] * _M1 + np.arange(dim, dtype=np.uint64)[None, :] * _M2
        z += np.uint64(salt) * _M3 + _M1
        z = (z ^ (z >> np.uint64(30))) * _M2
        z = (z ^ (z >> np.uint64(27))) * _M3
        z ^= z >> np.uint64(31)
    u = (z >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)
    return (u - 0.5) * math.sqrt(12.0)


def clustered_vectors(
    animals: np.ndarray, dim: int, rng: np.random.Generator, *, groups: int, seed: int = 0
) -> np.ndarray:
    """Unit float32 photo vectors shaped like a re-identification embedder's: a direction every photo shares (CNN
    features are non-negative, so two unrelated animals are still ~0.27 alike), a look shared by the animals of one
    group (``animal % groups``: breed and coat, ~0.46), the animal's own identity (two photos of it ~0.73) and
    per-photo noise. Nearest neighbours are then meaningful at any ``dim`` — the same animal first, then its look-
    alikes — which is what a vector index is measured on; independent noise vectors would make every neighbour past
    the same animal a tie. Identity and group vectors are hashed from their ids (:func:`_hash_normal`), so chunks of
    any size give the same animals."""
    scale = 1.0 / math.sqrt(dim)
    shared = _hash_normal(np.zeros(1, np.int64), dim, seed * 3 + 1)
    look = _hash_normal(animals % max(1, groups), dim, seed * 3 + 2)
    ident = _hash_normal(animals, dim, seed * 3 + 3)
    vec = (0.6 * shared + 0.5 * look + 0.6 * ident + 0.6 * rng.standard_normal((len(animals), dim))) * scale
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    return vec.astype(np.float32)


@dataclass
class Region:
    """``n_listings`` listings holding ``n_photos`` photos in total, sampled from ``model``; deterministic per seed.

    Every per-listing attribute is drawn up front as numpy arrays (a few dozen bytes per listing); rows and vectors
    are produced in chunks, so memory stays flat in ``n``.
    """

    model: RegionModel
    n_listings: int
    n_photos: int
    seed: int = 0
    days: int = 730
    """Event dates spread over this many days from 2024-01-01 (seasonal weights repeat each year)."""

    def __post_init__(self) -> None:
        m, n = self.model, int(self.n_listings)
        rng = np.random.default_rng(self.seed)
        kinds = np.array(m.kind.values, dtype=object)
        self.kind = kinds[m.kind.sample_index(rng, n)]
        shelterish = np.isin(self.kind, ["shelter", "adoptable"])
        self.species = np.empty(n, dtype=object)
        for group, mask in (("post", ~shelterish), ("shelter", shelterish)):
            dist = m.species[group]
            self.species[mask] = np.array(dist.values, dtype=object)[dist.sample_index(rng, int(mask.sum()))]
        # photos per listing: the empirical counts, scaled to the requested total
        counts = np.zeros(n, dtype=np.int64)
        for group, mask in (("post", ~shelterish), ("shelter", shelterish)):
            dist = m.photos[group]
            counts[mask] = np.array(dist.values, dtype=np.int64)[dist.sample_index(rng, int(mask.sum()))]
        counts = self._scale_counts(counts, rng)
        self.n_photos_of = counts
        self.photo_offset = np.concatenate([[0], np.cumsum(counts)])
        # dates: season × years, then the posting delay
        day_of_year = rng.choice(366, size=n, p=m.season)
        year = rng.integers(0, max(1, math.ceil(self.days / 365)), size=n)
        self.day = np.minimum(year * 365 + day_of_year, self.days - 1)
        self.post_delay = np.array(m.post_delay.values)[m.post_delay.sample_index(rng, n)]
        # places: real offsets from the centre plus jitter
        pick = rng.integers(0, len(m.geo_km), size=n)
        self.xy = m.geo_km[pick] + rng.normal(0, 1.5, size=(n, 2))
        # animals: each listing its own, except planted reunions (a found-side listing showing a lost animal)
        self.animal = np.arange(n, dtype=np.int64)
        lost_idx = np.flatnonzero(self.kind == "lost")
        found_idx = np.flatnonzero(np.isin(self.kind, ["found", "shelter"]))
        n_pairs = min(round(len(lost_idx) * m.reunion_share), len(found_idx))
        lost_pick = rng.choice(lost_idx, size=n_pairs, replace=False)
        found_pick = rng.choice(found_idx, size=n_pairs, replace=False)
        delay = np.array(m.reunion_delay.values)[m.reunion_delay.sample_index(rng, n_pairs)]
        self.animal[found_pick] = lost_pick
        self.species[found_pick] = self.species[lost_pick]
        self.day[found_pick] = np.minimum(self.day[lost_pick] + delay, self.days + 365)
        self.xy[found_pick] = self.xy[lost_pick] + rng.normal(0, 2.0, size=(n_pairs, 2))
        self.reunions = np.column_stack([lost_pick, found_pick])
        self._attr_seed = int(rng.integers(2**62))
        # looks: drawn per species, then copied from each lost animal onto its found listing (same animal)
        self.attr: dict[str, np.ndarray] = {}
        for name in ("colors", "breed", "sex", "size", "age_group"):
            values = np.empty(n, dtype=object)
            for sp, table in getattr(m, name).items():
                mask = self.species == sp
                if mask.any():
                    vals = np.empty(len(table.values), dtype=object)
                    vals[:] = list(table.values)
                    values[mask] = vals[table.sample_index(rng, int(mask.sum()))]
            values[found_pick] = values[lost_pick]
            self.attr[name] = values

    def _scale_counts(self, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        total = int(counts.sum())
        target = int(self.n_photos)
        if total == 0 or target == 0:
            return np.zeros_like(counts)
        scaled = counts * (target / total)
        out = np.floor(scaled).astype(np.int64)
        out += rng.random(len(out)) < (scaled - out)  # stochastic rounding keeps the shape
        diff = target - int(out.sum())
        if diff > 0:
            np.add.at(out, rng.choice(len(out), size=diff, replace=True), 1)
        elif diff < 0:
            have = np.flatnonzero(out > 0)
            take = rng.choice(np.repeat(have, out[have]), size=-diff, replace=False)
            np.subtract.at(out, take, 1)
        return out

    # -- ids --------------------------------------------------------------------------------------------------
    def source_id(self, i: int) -> str:
        return f"{self.kind[i][0]}{i:07d}"

    def listing_id(self, i: int) -> str:
        return ids.listing_id(SOURCE, self.source_id(i))

    def photo_id(self, i: int, j: int) -> str:
        """A stand-in for the sha256 of the image bytes: unique per (animal photo), stable per seed."""
        return ids.content_hash("synthetic-photo", self.seed, i, j)

    # -- rows -------------------------------------------------------------------------------------------------
    def items(self, chunk: int = 10_000) -> Iterator[list[dict[str, Any]]]:
        """Listing items as the crawl's pipelines hand them to the LanceDB writer (``crawlers/pipelines/lance.py``):
        normalised fields, ids, ``content_hash`` and the rows of their fetched photos."""
        m = self.model
        now = dt.datetime.now(dt.UTC)
        c_lat, c_lon = m.centre
        km_lon = 111.32 * math.cos(math.radians(c_lat))
        for start in range(0, self.n_listings, chunk):
            stop = min(self.n_listings, start + chunk)
            rng = np.random.default_rng([self._attr_seed, start])
            out = []
            for i in range(start, stop):
                sp = str(self.species[i])
                colors = list(self.attr["colors"][i])
                breed, sex, size, age = (self.attr[k][i] for k in ("breed", "sex", "size", "age_group"))
                kind = str(self.kind[i])
                event = START + dt.timedelta(days=int(self.day[i]))
                posted = dt.datetime.combine(event, dt.time(12), dt.UTC) + dt.timedelta(days=int(self.post_delay[i]))
                sid = self.source_id(i)
                lid = ids.listing_id(SOURCE, sid)
                lat = c_lat + float(self.xy[i, 1]) / KM_PER_DEG_LAT
                lon = c_lon + float(self.xy[i, 0]) / km_lon
                description = (
                    f"{kind.capitalize()} {sp}: {' and '.join(colors)} {breed}, {sex}, {size}. "
                    f"Seen near point {lat:.3f}, {lon:.3f} on {event.isoformat()}."
                )
                photos = []
                for j in range(int(self.n_photos_of[i])):
                    url = f"https://synthetic.invalid/{sid}/{j}.jpg"
                    pid = self.photo_id(i, j)
                    photos.append(
                        {
                            "photo_key": ids.photo_key(lid, url),
                            "photo_id": pid,
                            "listing_id": lid,
                            "source_url": url,
                            "uri": f"synthetic://{pid[:2]}/{pid}.jpg",
                            "width": int(rng.integers(480, 1600)),
                            "height": int(rng.integers(360, 1200)),
                            "format": "JPEG",
                            "fetched_at": now,
                            "status": "ok",
                            "error": None,
                            "enrich_status": "pending",
                            "enrich_error": None,
                            "enriched_at": None,
                        }
                    )
                item = {
                    "source": SOURCE,
                    "source_id": sid,
                    "listing_id": lid,
                    "url": f"https://synthetic.invalid/{sid}",
                    "kind": kind,
                    "status": "active",
                    "species": sp,
                    "breed": breed,
                    "colors": colors,
                    "sex": sex,
                    "age_group": age,
                    "size": size,
                    "description": description,
                    "location_text": f"{lat:.3f}, {lon:.3f}",
                    "lat": lat,
                    "lon": lon,
                    "event_date": event.isoformat(),
                    "posted_at": posted.isoformat(),
                    "scraped_at": now.isoformat(),
                    "photo_urls": [p["source_url"] for p in photos],
                    "photo_ids": [p["photo_id"] for p in photos],
                    "photos": photos,
                    "parse_warnings": [],
                }
                item["content_hash"] = ids.content_hash(lid, description, item["photo_ids"])
                out.append(item)
            yield out

    def detections(
        self, dim: int, text_dim: int, embed_model: str, chunk: int = 50_000, noise: float = 0.9
    ) -> Iterator[pa.Table]:
        """One detection per photo with a synthetic unit vector: the animal's identity vector plus Gaussian noise
        (``noise`` 0.9 gives a same-animal cosine of ~0.55 against ~0 for two animals at dim 512), and a text vector
        built the same way from the animal's looks. Arrow tables of ``chunk`` rows, ``detections`` schema."""
        det_schema = schema.detections_schema(dim, text_dim)
        now = dt.datetime.now(dt.UTC)
        listing_of_photo = np.repeat(np.arange(self.n_listings), self.n_photos_of)
        total = len(listing_of_photo)
        for start in range(0, total, chunk):
            stop = min(total, start + chunk)
            rows = listing_of_photo[start:stop]
            rng = np.random.default_rng([self._attr_seed, 7, start])
            animals = self.animal[rows]
            ident = _hash_normal(animals, dim, self.seed * 2 + 1)
            tident = _hash_normal(animals, text_dim, self.seed * 2 + 2)
            img = ident / math.sqrt(dim) + rng.normal(0, noise / math.sqrt(dim), size=(len(rows), dim))
            txt = tident / math.sqrt(text_dim) + rng.normal(0, 1.2 / math.sqrt(text_dim), size=(len(rows), text_dim))
            img /= np.linalg.norm(img, axis=1, keepdims=True)
            txt /= np.linalg.norm(txt, axis=1, keepdims=True)
            j = np.arange(start, stop) - self.photo_offset[rows]
            lids = [self.listing_id(int(i)) for i in rows]
            pids = [self.photo_id(int(i), int(jj)) for i, jj in zip(rows, j, strict=True)]
            keys = [
                ids.photo_key(lid, f"https://synthetic.invalid/{self.source_id(int(i))}/{int(jj)}.jpg")
                for lid, i, jj in zip(lids, rows, j, strict=True)
            ]
            n = len(rows)
            yield (
                pa.table(
                    {
                        "detection_id": [ids.content_hash("detection", k, 0, embed_model) for k in keys],
                        "photo_id": pids,
                        "photo_key": keys,
                        "listing_id": lids,
                        "species": [str(s) for s in self.species[rows]],
                        "confidence": np.full(n, 0.9, dtype=np.float32),
                        "bbox": pa.FixedSizeListArray.from_arrays(
                            pa.array(np.tile(np.array([0, 0, 1, 1], np.float32), n)), 4
                        ),
                        "full_frame": np.zeros(n, dtype=bool),
                        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(img.astype(np.float32).ravel()), dim),
                        "embed_model": [embed_model] * n,
                        "caption": pa.nulls(n, pa.string()),
                        "attributes": ["{}"] * n,
                        "text_embedding": pa.FixedSizeListArray.from_arrays(
                            pa.array(txt.astype(np.float32).ravel()), text_dim
                        ),
                        "text_model": ["synthetic-text/1"] * n,
                        "detector_model": ["synthetic-detector/1"] * n,
                        "created_at": pa.array([now] * n, schema.UTC_TS),
                        "status": ["ok"] * n,
                        "error": pa.nulls(n, pa.string()),
                    },
                )
                .select(det_schema.names)
                .cast(det_schema)
            )


__all__ = [
    "DatasetsMissing",
    "Empirical",
    "Region",
    "RegionModel",
    "clustered_vectors",
    "default_datasets_dir",
    "load_region_model",
]
