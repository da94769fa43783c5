"""Generate the demo's lost-and-found website, with reunions planted in it.

Each planted reunion is one animal seen twice: a *lost* post and a *found* post, a few days later and a few
kilometres away, each carrying 1–3 photos of the animal (drawn at random per post; no photo appears twice on the
site, so the found post never shows a photo the lost post showed). Distractor posts (other animals, same area, same
weeks) surround them, so a match can only rank the true pair first by recognising the animal.

Photos come from an identity-labelled folder (``<identity>/<image>.jpg``, e.g. ../shared/data/realpets/images or
../shared/data/dogfacenet/images) when one is given; otherwise the generator paints its own synthetic animals (two
views of each: shifted, rotated, re-lit; one photo per post), so the demo still runs on a clone without the team's
data. An identity with few photos gives fewer per post; one with a single photo can only be a distractor. When the
folder has fewer identities than distractor posts asked for, a distractor animal carries several posts, all of the
same kind (all lost or all found), so no reunion appears that was not planted. An unreadable image is skipped and
named in the site's ``warnings``.

The posts never state a species: the folder name or a manifest could tell it, but a site that did would hand the
matcher the answer, so species comes from the detector at enrich time (unknown is compatible with anything in the
match's blocking). The text is species-neutral for the same reason: colour, breed, name and sex are drawn at random
per animal (from a vocabulary mixing dog and cat breeds), shared by its posts (a finder sometimes leaves the sex out
or guesses another breed), and say nothing about the photos. The true species is read only for the summary, from
``manifest.csv`` beside the images folder (columns ``identity`` and ``species``; without it, or without that column,
``unknown``).

Pages publish their facts as JSON-LD, which Homeward's configurable spider reads, and link to each other through
paginated catalog pages.
"""

from __future__ import annotations

import csv
import html
import json
import logging
import random
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from engine.errors import HomewardError
from engine.normalize import normalize_species

log = logging.getLogger(__name__)

CENTRE = (47.6062, -122.3321)  # a city centre; posts scatter within ~10 km of it
CARDS_PER_PAGE = 10
MAX_PHOTOS_PER_POST = 3
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
BREEDS = ("mixed", "labrador retriever", "german shepherd", "husky", "terrier mix", "beagle", "poodle",
          "domestic shorthair", "siamese", "maine coon", "tabby mix")  # fmt: skip
COLOURS = ("black", "white", "brown", "tan", "grey", "cream", "red")
NAMES = ("Max", "Bella", "Charlie", "Luna", "Rocky", "Daisy", "Buddy", "Molly", "Toby", "Lucy", "Bear", "Zoe")
LOST_TEMPLATES = (
    "Our {colour} {breed} {name} slipped out near the park and ran off. Very friendly, answers to {name}.",
    "Lost pet: {name}, {colour} {breed}, last seen by the bus stop in the evening. Please call if you see them.",
    "{name} got out through the fence gap. {colour} coat, {breed}. Shy with strangers, may hide.",
)
FOUND_TEMPLATES = (
    "Found this {colour} animal wandering near the school, no collar. Looks like a {breed}. Safe with us for now.",
    "Friendly {colour} {breed} found on the trail this morning. Well fed, someone must be missing them.",
    "Picked up a scared {colour} pet by the gas station. Could be a {breed}. Reach out if this is yours.",
)

#: A photo to post: a file of the identity folder, or a painted synthetic view.
Photo = Path | Image.Image


class DemoSiteError(HomewardError):
    """The photos folder cannot give a demo site (missing, no identity folders, an unreadable manifest)."""


@dataclass(frozen=True)
class PlantedReunion:
    identity: str
    lost_source_id: str
    found_source_id: str


@dataclass
class DemoSite:
    root: Path
    photos_from: str
    reunions: list[PlantedReunion] = field(default_factory=list)
    posts: int = 0
    #: source_id → the identity its photos show
    post_identity: dict[str, str] = field(default_factory=dict)
    #: source_id → how many photos the post carries
    post_photos: dict[str, int] = field(default_factory=dict)
    #: identity → true species, for the summary only (never published on the site)
    species: dict[str, str] = field(default_factory=dict)
    #: what the site could not honour: unreadable images, fewer reunions or distractors than asked for
    warnings: list[str] = field(default_factory=list)

    def species_of(self, identity: str) -> str:
        return self.species.get(identity, "unknown")

    def photos_per_post(self) -> dict[str, object]:
        counts = list(self.post_photos.values())
        if not counts:
            return {"min": 0, "max": 0, "mean": 0.0, "posts_with": {}}
        histogram = Counter(counts)
        return {
            "min": min(counts),
            "max": max(counts),
            "mean": round(sum(counts) / len(counts), 2),
            "posts_with": {str(n): histogram[n] for n in sorted(histogram)},
        }


def _identity_photos(images_dir: Path) -> dict[str, list[Path]]:
    if not images_dir.is_dir():
        raise DemoSiteError(f"photos folder {images_dir} is not a directory")
    by_identity = {
        d.name: sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        for d in sorted(images_dir.iterdir())
        if d.is_dir()
    }
    found = {k: v for k, v in by_identity.items() if v}
    if not any(len(v) >= 2 for v in found.values()):
        raise DemoSiteError(
            f"photos folder {images_dir} has no identity folder with two or more images "
            f"(expected {images_dir}/<identity>/<image>{{{','.join(IMAGE_SUFFIXES)}}})"
        )
    return found


def _loose_photos(folder: Path, images_dir: Path | None) -> dict[str, list[Path]]:
    """Every image under ``folder`` (any depth) as an animal of its own, keyed by its path inside the folder."""
    if not folder.is_dir():
        raise DemoSiteError(f"distractor photos folder {folder} is not a directory")
    if images_dir is not None:
        a, b = folder.resolve(), images_dir.resolve()
        if a == b or a in b.parents or b in a.parents:
            raise DemoSiteError(
                f"distractor photos {folder} overlap the reunions' photos {images_dir}: a planted animal's own photo "
                "could be posted as another animal"
            )
    photos = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not photos:
        raise DemoSiteError(f"distractor photos folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return {f"other:{p.relative_to(folder).as_posix()}": [p] for p in photos}


def manifest_species(images_dir: Path) -> dict[str, str]:
    """identity → species from ``manifest.csv`` beside ``images_dir`` (empty when there is none or no such column)."""
    path = images_dir.parent / "manifest.csv"
    if not path.is_file():
        return {}
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            if "identity" not in columns:
                raise DemoSiteError(f"{path}: no 'identity' column (columns: {', '.join(columns) or 'none'})")
            if "species" not in columns:
                return {}
            species: dict[str, str] = {}
            for row in reader:
                label = normalize_species(row.get("species") or None)
                if row.get("identity") and label != "unknown":
                    species.setdefault(row["identity"], label)
            return species
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DemoSiteError(f"cannot read {path}: {exc}") from exc


def _synthetic_identity(rng: random.Random, size: int = 256) -> tuple[Image.Image, Image.Image]:
    """Paint one synthetic 'animal' and a second view of it (moved, turned, re-lit), as two photos."""
    base = Image.new("RGB", (size, size), tuple(rng.randrange(60, 200) for _ in range(3)))
    draw = ImageDraw.Draw(base)
    coat = tuple(rng.randrange(256) for _ in range(3))
    draw.ellipse((40, 70, 216, 210), fill=coat)
    draw.ellipse((150, 40, 230, 120), fill=coat)
    for _ in range(6):
        x, y, r = rng.randrange(50, 200), rng.randrange(80, 200), rng.randrange(8, 30)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
    second = base.rotate(rng.uniform(-12, 12), translate=(rng.randrange(-15, 15), rng.randrange(-15, 15)))
    second = ImageEnhance.Brightness(second).enhance(rng.uniform(0.7, 1.2)).filter(ImageFilter.GaussianBlur(1))
    return base, second


def _jitter(rng: random.Random, origin: tuple[float, float], km: float) -> tuple[float, float]:
    return origin[0] + rng.uniform(-km, km) / 111.0, origin[1] + rng.uniform(-km, km) / 75.0


def _card_html(post: dict[str, object]) -> str:
    jsonld = json.dumps(post, ensure_ascii=False, indent=1).replace("</", "<\\/")
    photos = "".join(f'<img src="{html.escape(str(u))}" alt="photo">' for u in post["image"])  # type: ignore[union-attr]
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(str(post['name']))}</title>"
        f'<script type="application/ld+json">{jsonld}</script></head><body>'
        f"<h1>{html.escape(str(post['kind']).title())}: {html.escape(str(post['name']))}</h1>"
        f"<p class='description'>{html.escape(str(post['description']))}</p>{photos}</body></html>"
    )


def _catalog_html(page: int, pages: int, cards: list[str]) -> str:
    links = "".join(f'<li><a class="card" href="/pets/{c}.html">{c}</a></li>' for c in cards)
    nxt = f'<link rel="next" href="/catalog/{page + 1}.html">' if page < pages else ""
    anchor = f'<a rel="next" class="next" href="/catalog/{page + 1}.html">next</a>' if page < pages else ""
    return f"<!doctype html><html><head>{nxt}</head><body><ul>{links}</ul>{anchor}</body></html>"


def _take(deck: list[Photo], n: int, warnings: list[str]) -> list[Image.Image]:
    """Up to ``n`` readable photos off the top of ``deck`` (an unreadable file is dropped and named in ``warnings``)."""
    out: list[Image.Image] = []
    while deck and len(out) < n:
        photo = deck.pop()
        if isinstance(photo, Image.Image):
            out.append(photo)
            continue
        try:
            with Image.open(photo) as img:
                out.append(img.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            warnings.append(f"skipped unreadable image {photo}: {exc}")
    return out


def _round_robin(identities: list[str], decks: dict[str, list[Photo]]) -> Iterator[str]:
    """The identities in turn, again and again, while any of them has photos left."""
    while any(decks[i] for i in identities):
        yield from (i for i in identities if decks[i])


class _Poster:
    """Writes posts' photos under ``root/photos`` and keeps their JSON-LD cards; one animal keeps one set of traits
    across its posts."""

    def __init__(self, root: Path, site: DemoSite, rng: random.Random) -> None:
        self.root, self.site, self.rng = root, site, rng
        self.posts: list[dict[str, object]] = []
        self.traits: dict[str, dict[str, str]] = {}

    def _words(self, kind: str, identity: str) -> dict[str, str]:
        rng = self.rng
        words = dict(
            self.traits.setdefault(
                identity,
                {
                    "colour": rng.choice(COLOURS),
                    "breed": rng.choice(BREEDS),
                    "name": rng.choice(NAMES),
                    "sex": rng.choice(("male", "female")),
                },
            )
        )
        # A finder sometimes can't tell the sex or guesses another breed.
        if kind == "found":
            words["sex"] = words["sex"] if rng.random() < 0.7 else "unknown"
            words["breed"] = words["breed"] if rng.random() < 0.5 else rng.choice(BREEDS)
        return words

    def add(self, kind: str, identity: str, photos: list[Image.Image], where: tuple[float, float], when: date) -> str:
        source_id = f"{kind[0]}{len(self.posts) + 1000}"
        urls = []
        for n, photo in enumerate(photos):
            photo.save(self.root / "photos" / f"{source_id}-{n}.jpg", "JPEG", quality=90)
            urls.append(f"/photos/{source_id}-{n}.jpg")
        words = self._words(kind, identity)
        template = self.rng.choice(LOST_TEMPLATES if kind == "lost" else FOUND_TEMPLATES)
        self.posts.append(
            {
                "@context": "https://schema.org",
                "@type": "homeward:Listing",
                "identifier": source_id,
                "kind": kind,
                "name": words["name"] if kind == "lost" else "Found pet",
                "breed": words["breed"],
                "gender": words["sex"],
                "color": [words["colour"]],
                "description": template.format(**words),
                "image": urls,
                "eventDate": when.isoformat(),
                "datePosted": datetime.combine(when, datetime.min.time(), UTC).isoformat(),
                "address": {"addressLocality": "Seattle, WA"},
                "geo": {"latitude": round(where[0], 5), "longitude": round(where[1], 5)},
            }
        )
        self.site.post_identity[source_id] = identity
        self.site.post_photos[source_id] = len(urls)
        return source_id


DEMO_TODAY = date(2026, 11, 1)


def _plant_reunions(poster: _Poster, candidates: list[str], decks: dict[str, list[Photo]], reunions: int) -> None:
    """A lost post and a later found post nearby for each planted animal, its photos split between them."""
    site, rng = poster.site, poster.rng
    for identity in candidates:
        if len(site.reunions) == reunions:
            break
        want_lost, want_found = rng.randint(1, MAX_PHOTOS_PER_POST), rng.randint(1, MAX_PHOTOS_PER_POST)
        photos = _take(decks[identity], want_lost + want_found, site.warnings)
        if len(photos) < 2:
            continue
        n_lost = min(want_lost, len(photos) - 1)
        lost_at = _jitter(rng, CENTRE, 8)
        lost_on = DEMO_TODAY - timedelta(days=rng.randrange(10, 40))
        lost_id = poster.add("lost", identity, photos[:n_lost], lost_at, lost_on)
        found_on = lost_on + timedelta(rng.randrange(1, 9))
        found_id = poster.add("found", identity, photos[n_lost:], _jitter(rng, lost_at, 3), found_on)
        site.reunions.append(PlantedReunion(identity, lost_id, found_id))
    if len(site.reunions) < reunions:
        site.warnings.append(f"planted {len(site.reunions)} reunions of {reunions} asked for: too few identities")


def _post_distractors(poster: _Poster, order: list[str], decks: dict[str, list[Photo]], distractors: int) -> None:
    site, rng = poster.site, poster.rng
    planted = {r.identity for r in site.reunions}
    others = [k for k in order if k not in planted]
    # A distractor animal keeps one kind across its posts: a lost and a found post of it would be an unplanted reunion.
    kinds = {identity: "lost" if j % 4 == 0 else "found" for j, identity in enumerate(others)}
    made = 0
    for identity in _round_robin(others, decks):
        if made == distractors:
            break
        photos = _take(decks[identity], rng.randint(1, MAX_PHOTOS_PER_POST), site.warnings)
        if photos:
            when = DEMO_TODAY - timedelta(days=rng.randrange(0, 40))
            poster.add(kinds[identity], identity, photos, _jitter(rng, CENTRE, 8), when)
            made += 1
    if made < distractors:
        site.warnings.append(f"posted {made} distractors of {distractors} asked for: the other identities ran out")


def _write_pages(root: Path, posts: list[dict[str, object]]) -> None:
    for post in posts:
        (root / "pets" / f"{post['identifier']}.html").write_text(_card_html(post), encoding="utf-8")
    ids = [str(p["identifier"]) for p in posts]
    pages = max(1, -(-len(ids) // CARDS_PER_PAGE))
    for page in range(1, pages + 1):
        chunk = ids[(page - 1) * CARDS_PER_PAGE : page * CARDS_PER_PAGE]
        (root / "catalog" / f"{page}.html").write_text(_catalog_html(page, pages, chunk), encoding="utf-8")


def build_demo_site(
    root: Path,
    *,
    reunions: int = 20,
    distractors: int = 60,
    images_dir: Path | None = None,
    distractor_photos: Path | None = None,
    seed: int = 7,
) -> DemoSite:
    """Write the site under ``root`` (replacing what was there) and return what was planted in it.

    ``images_dir`` None paints synthetic animals; a folder that is missing or has no identity with two images raises
    :class:`DemoSiteError`. Fewer reunions or distractors than asked for (a small folder) are a warning on the site.
    ``distractor_photos``: the distractors' photos come from this folder instead (any layout: every image is one
    other animal, one photo a post), e.g. unlabelled pet photos around a small set of held-out animals; it must not
    overlap ``images_dir``.
    """
    if reunions < 1 or distractors < 0:
        raise DemoSiteError(f"need at least one reunion and no negative distractors (got {reunions}, {distractors})")
    rng = random.Random(seed)
    if images_dir is not None:
        pool = _identity_photos(images_dir)
        site = DemoSite(root=root, photos_from=str(images_dir), species=manifest_species(images_dir))
        decks: dict[str, list[Photo]] = {k: list(rng.sample(v, len(v))) for k, v in pool.items()}
        order = rng.sample(sorted(decks), len(decks))
        candidates = [k for k in order if len(decks[k]) >= 2]
    else:
        site = DemoSite(root=root, photos_from="synthetic")
        decks = {f"synthetic{i}": list(_synthetic_identity(rng)) for i in range(reunions)}
        decks |= {f"synthetic{reunions + i}": [_synthetic_identity(rng)[0]] for i in range(distractors)}
        order = list(decks)
        candidates = order[:reunions]

    if distractor_photos is not None:
        others = _loose_photos(distractor_photos, images_dir)
        decks |= others
        order = rng.sample(sorted(others), len(others))

    if root.exists():
        shutil.rmtree(root)
    for folder in ("photos", "pets", "catalog"):
        (root / folder).mkdir(parents=True)
    (root / "robots.txt").write_text("User-agent: *\nAllow: /\n")

    poster = _Poster(root, site, rng)
    _plant_reunions(poster, candidates, decks, reunions)
    _post_distractors(poster, order, decks, distractors)
    for warning in site.warnings:
        log.warning("demo site: %s", warning)
    rng.shuffle(poster.posts)
    _write_pages(root, poster.posts)
    site.posts = len(poster.posts)
    return site
