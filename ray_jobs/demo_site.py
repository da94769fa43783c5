"""Generate the demo's lost-and-found website, with reunions planted in it.

Each planted reunion is one animal seen twice: a *lost* post carrying one photo of it and a *found* post carrying a
different photo of the same animal, a few days later and a few kilometres away. Distractor posts (other animals,
same area, same weeks) surround them, so a match can only rank the true pair first by recognising the animal.

Photos come from an identity-labelled folder (``<identity>/<image>.jpg``, e.g. ../shared/data/dogfacenet/images)
when one is given; otherwise the generator paints its own synthetic animals (two views of each: shifted, rotated,
re-lit), so the demo still runs on a clone without the team's data. Pages publish their facts as JSON-LD, which
Homeward's configurable spider reads, and link to each other through paginated catalog pages.
"""

from __future__ import annotations

import html
import json
import random
import shutil
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

CENTRE = (47.6062, -122.3321)  # a city centre; posts scatter within ~10 km of it
CARDS_PER_PAGE = 10
BREEDS = ("mixed", "labrador retriever", "german shepherd", "husky", "terrier mix", "beagle", "pit bull", "poodle")
COLOURS = ("black", "white", "brown", "tan", "grey", "cream", "red")
NAMES = ("Max", "Bella", "Charlie", "Luna", "Rocky", "Daisy", "Buddy", "Molly", "Toby", "Lucy", "Bear", "Zoe")
LOST_TEMPLATES = (
    "Our {colour} {breed} {name} slipped the leash near the park and ran off. Very friendly, answers to {name}.",
    "Lost dog: {name}, {colour} {breed}, last seen by the bus stop in the evening. Please call if you see him.",
    "{name} got out through the fence gap. {colour} coat, {breed}. Shy with strangers, may hide.",
)
FOUND_TEMPLATES = (
    "Found this {colour} dog wandering near the school, no collar. Looks like a {breed}. Safe with us for now.",
    "Friendly {colour} {breed} found on the trail this morning. Well fed, someone must be missing them.",
    "Picked up a scared {colour} dog by the gas station. Could be a {breed}. Reach out if this is yours.",
)


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


def _identity_photos(images_dir: Path) -> dict[str, list[Path]]:
    by_identity = {
        d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        for d in sorted(images_dir.iterdir())
        if d.is_dir()
    }
    return {k: v for k, v in by_identity.items() if v}


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


def build_demo_site(
    root: Path, *, reunions: int = 20, distractors: int = 60, images_dir: Path | None = None, seed: int = 7
) -> DemoSite:
    """Write the site under ``root`` (replacing what was there) and return what was planted in it."""
    rng = random.Random(seed)
    if root.exists():
        shutil.rmtree(root)
    (root / "photos").mkdir(parents=True)
    (root / "pets").mkdir()
    (root / "catalog").mkdir()
    (root / "robots.txt").write_text("User-agent: *\nAllow: /\n")

    pool = _identity_photos(images_dir) if images_dir and images_dir.is_dir() else {}
    paired = [k for k, v in pool.items() if len(v) >= 2]
    site = DemoSite(root=root, photos_from=str(images_dir) if pool else "synthetic")
    identities = rng.sample(paired, min(reunions, len(paired))) if pool else [f"synthetic{i}" for i in range(reunions)]
    others = (
        rng.sample(sorted(set(pool) - set(identities)), min(distractors, len(pool) - len(identities)))
        if pool
        else [f"synthetic{reunions + i}" for i in range(distractors)]
    )

    def photo_pair(identity: str) -> tuple[Image.Image, Image.Image]:
        if pool:
            first, second = rng.sample(pool[identity], 2)
            return Image.open(first).convert("RGB"), Image.open(second).convert("RGB")
        return _synthetic_identity(rng)

    today = date(2026, 11, 1)
    posts: list[dict[str, object]] = []

    traits: dict[str, dict[str, str]] = {}

    def add_post(kind: str, identity: str, photo: Image.Image, where: tuple[float, float], when: date) -> str:
        source_id = f"{kind[0]}{len(posts) + 1000}"
        photo_path = root / "photos" / f"{source_id}.jpg"
        photo.save(photo_path, "JPEG", quality=90)
        # One animal, one set of traits; a finder sometimes can't tell the sex or guesses another breed.
        words = dict(
            traits.setdefault(
                identity,
                {
                    "colour": rng.choice(COLOURS),
                    "breed": rng.choice(BREEDS),
                    "name": rng.choice(NAMES),
                    "sex": rng.choice(("male", "female")),
                },
            )
        )
        if kind == "found":
            words["sex"] = words["sex"] if rng.random() < 0.7 else "unknown"
            words["breed"] = words["breed"] if rng.random() < 0.5 else rng.choice(BREEDS)
        template = rng.choice(LOST_TEMPLATES if kind == "lost" else FOUND_TEMPLATES)
        posts.append(
            {
                "@context": "https://schema.org",
                "@type": "homeward:Listing",
                "identifier": source_id,
                "kind": kind,
                "name": words["name"] if kind == "lost" else "Found dog",
                "species": "dog",
                "breed": words["breed"],
                "gender": words["sex"],
                "color": [words["colour"]],
                "description": template.format(**words),
                "image": [f"/photos/{source_id}.jpg"],
                "eventDate": when.isoformat(),
                "datePosted": datetime.combine(when, datetime.min.time(), UTC).isoformat(),
                "address": {"addressLocality": "Seattle, WA"},
                "geo": {"latitude": round(where[0], 5), "longitude": round(where[1], 5)},
            }
        )
        return source_id

    for identity in identities:
        lost_photo, found_photo = photo_pair(identity)
        lost_at = _jitter(rng, CENTRE, 8)
        lost_on = today - timedelta(days=rng.randrange(10, 40))
        lost_id = add_post("lost", identity, lost_photo, lost_at, lost_on)
        found_id = add_post(
            "found", identity, found_photo, _jitter(rng, lost_at, 3), lost_on + timedelta(rng.randrange(1, 9))
        )
        site.reunions.append(PlantedReunion(identity, lost_id, found_id))
    for i, identity in enumerate(others):
        photo = Image.open(rng.choice(pool[identity])).convert("RGB") if pool else _synthetic_identity(rng)[0]
        kind = "lost" if i % 4 == 0 else "found"
        add_post(kind, identity, photo, _jitter(rng, CENTRE, 8), today - timedelta(days=rng.randrange(0, 40)))

    rng.shuffle(posts)
    for post in posts:
        (root / "pets" / f"{post['identifier']}.html").write_text(_card_html(post), encoding="utf-8")
    ids = [str(p["identifier"]) for p in posts]
    pages = max(1, -(-len(ids) // CARDS_PER_PAGE))
    for page in range(1, pages + 1):
        chunk = ids[(page - 1) * CARDS_PER_PAGE : page * CARDS_PER_PAGE]
        (root / "catalog" / f"{page}.html").write_text(_catalog_html(page, pages, chunk), encoding="utf-8")
    site.posts = len(posts)
    return site
