"""A small, realistic Homeward database for tests and for trying the dashboard without running the jobs.

:func:`populate` writes, through the real stores, what the crawl, enrich and match jobs would have left:

* a DuckDB ``listings`` snapshot: lost posts (craigslist, pet911, austin), shelter intakes of two shelters (Seattle
  Animal Shelter via petango, shelter key ``petango:SEAS``; Austin Animal Center via petharbor, ``petharbor:ASTN``)
  and a found post with no shelter (pet911, keyed by its source: ``pet911``);
* ``crawl_runs`` (one source healthy, one whose latest run failed, one that never succeeded), ``enrich_runs``;
* a scheduler round (``loop_rounds``, ``loop_steps``: a match step that failed once, then published) and an operator
  alert (``loop_alerts``);
* three ``match_runs``: an old published one, the latest published one, and a newer one still ``running`` whose
  rows must stay invisible (it holds a pair no published run has: :data:`GHOST_PAIR`);
* ``feedback``: one pair confirmed, one rejected, one rejected then confirmed;
* photos made with Pillow, stored in the PhotoStore WITH an EXIF block (GPS and camera tags), and their LanceDB
  ``photos`` rows, so the tests can prove that what Homeward shows is EXIF-free.

:func:`add_impostor` adds, on request, a listing of another source that claims Seattle Animal Shelter's id and name.

Run ``python -m dashboards.sample --data-dir DIR`` to fill a data dir, then ``homeward dashboard --data-dir DIR``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
from typing import Any

import pyarrow as pa
from PIL import Image, ImageDraw

from engine import ids, run_rows
from engine.config import Settings, load_settings
from engine.storage import LanceStore, PhotoStore, RunsDB, upsert_photos

UTC = dt.UTC

#: (source, source_id) of every listing, by a short name the tests use.
LISTINGS: dict[str, dict[str, Any]] = {
    "lost_buddy": dict(
        source="craigslist",
        source_id="sea-7781",
        kind="lost",
        species="dog",
        breed="labrador retriever",
        colors=["black"],
        sex="male",
        name="Buddy",
        location_text="Green Lake, Seattle, WA",
        lat=47.6805,
        lon=-122.3290,
        days_ago=10,
        url="https://seattle.craigslist.org/laf/7781.html",
    ),
    "lost_misha": dict(
        source="pet911",
        source_id="rl123456",
        kind="lost",
        species="cat",
        breed=None,
        colors=["grey", "white"],
        sex="female",
        name="Misha",
        location_text="Khamovniki, Moscow",
        lat=55.7289,
        lon=37.5731,
        days_ago=6,
        url="https://pet911.ru/moskva/lost/cat/rl123456",
    ),
    "lost_rex": dict(
        source="austin",
        source_id="A-LOST-2211",
        kind="lost",
        species="dog",
        breed="german shepherd",
        colors=["tan", "black"],
        sex="male",
        name="Rex",
        location_text="East Riverside, Austin, TX",
        lat=30.2400,
        lon=-97.7200,
        days_ago=20,
        url="https://www.austintexas.gov/lost/A-LOST-2211",
    ),
    "lost_luna": dict(
        source="craigslist",
        source_id="sea-7790",
        kind="lost",
        species="dog",
        breed="husky",
        colors=["white"],
        sex="female",
        name="Luna",
        location_text="Ballard, Seattle, WA",
        lat=47.6686,
        lon=-122.3860,
        days_ago=4,
        url="https://seattle.craigslist.org/laf/7790.html",
    ),
    "shelter_a101": dict(
        source="petango",
        source_id="A101",
        kind="shelter",
        species="dog",
        breed="labrador retriever mix",
        colors=["black"],
        sex="male",
        name=None,
        location_text="Seattle Animal Shelter",
        lat=47.5890,
        lon=-122.3170,
        days_ago=8,
        url="https://www.petango.com/Adopt/Dog-Labrador-Retriever-A101",
        shelter_id="SEAS",
        shelter_name="Seattle Animal Shelter",
    ),
    "shelter_a102": dict(
        source="petango",
        source_id="A102",
        kind="shelter",
        species="dog",
        breed="pit bull",
        colors=["brown"],
        sex="male",
        name=None,
        location_text="Seattle Animal Shelter",
        lat=47.5890,
        lon=-122.3170,
        days_ago=5,
        url="https://www.petango.com/Adopt/Dog-Pit-Bull-A102",
        shelter_id="SEAS",
        shelter_name="Seattle Animal Shelter",
    ),
    "found_cat": dict(
        source="pet911",
        source_id="rf654321",
        kind="found",
        species="cat",
        breed=None,
        colors=["grey"],
        sex="unknown",
        name=None,
        location_text="Frunzenskaya, Moscow",
        lat=55.7270,
        lon=37.5800,
        days_ago=3,
        url="https://pet911.ru/moskva/found/cat/rf654321",
    ),
    "shelter_k9": dict(
        source="petharbor",
        source_id="A881234",
        kind="shelter",
        species="dog",
        breed="german shepherd",
        colors=["tan", "black"],
        sex="male",
        name=None,
        location_text="Austin Animal Center",
        lat=30.2510,
        lon=-97.6890,
        days_ago=15,
        url="https://www.petharbor.com/pet.asp?uaid=ASTN.A881234",
        shelter_id="ASTN",
        shelter_name="Austin Animal Center",
    ),
}

#: Colours of each listing's generated photo (two tones: body and background).
_PALETTE = {
    "lost_buddy": ((20, 20, 24), (120, 170, 90)),
    "lost_misha": ((150, 150, 160), (230, 220, 200)),
    "lost_rex": ((180, 140, 80), (90, 120, 170)),
    "lost_luna": ((240, 240, 240), (60, 90, 60)),
    "shelter_a101": ((25, 25, 28), (200, 200, 190)),
    "shelter_a102": ((120, 70, 40), (200, 200, 190)),
    "found_cat": ((140, 140, 150), (90, 80, 70)),
    "shelter_k9": ((175, 135, 75), (210, 205, 195)),
}

#: A listing of another source whose page claims Seattle Animal Shelter's shelter_id and name (:func:`add_impostor`).
IMPOSTOR: dict[str, Any] = dict(
    source="rehome-board",
    source_id="p-666",
    kind="shelter",
    species="dog",
    breed="labrador retriever",
    colors=["black"],
    sex="male",
    name=None,
    location_text='=HYPERLINK("https://rehome-board.example/pay","Seattle Animal Shelter")',
    lat=47.5890,
    lon=-122.3170,
    days_ago=3,
    url="https://rehome-board.example/p-666",
    shelter_id="SEAS",
    shelter_name="Seattle Animal Shelter",
)

GHOST_PAIR = ("lost_luna", "shelter_a102")
"""Only the ``running`` match run holds this pair: no view, report or page may show it."""


def lid(name: str) -> str:
    spec = LISTINGS[name]
    return ids.listing_id(spec["source"], spec["source_id"])


def _insert_listing(con: Any, spec: dict[str, Any], photo_id: str, now: dt.datetime) -> str:
    listing_id = ids.listing_id(spec["source"], spec["source_id"])
    event = (now - dt.timedelta(days=spec["days_ago"])).date()
    posted = now - dt.timedelta(days=spec["days_ago"]) + dt.timedelta(hours=6)
    con.execute(
        "INSERT INTO listings (listing_id, source, source_id, url, kind, status, species, breed, colors, sex, "
        "age_group, size, name, description, location_text, lat, lon, event_date, posted_at, scraped_at, shelter_id, "
        "shelter_name, photo_ids, n_photos, geo_source) VALUES (?, ?, ?, ?, ?, 'active', ?, ?, ?, ?, 'adult', "
        "'medium', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)",
        [
            listing_id,
            spec["source"],
            spec["source_id"],
            spec["url"],
            spec["kind"],
            spec["species"],
            spec["breed"],
            spec["colors"],
            spec["sex"],
            spec["name"],
            f"{spec['species']} {spec.get('breed') or ''} seen near {spec['location_text']}",
            spec["location_text"],
            spec["lat"],
            spec["lon"],
            event,
            posted,
            now - dt.timedelta(hours=3),
            spec.get("shelter_id"),
            spec.get("shelter_name"),
            [photo_id],
            "none" if spec["lat"] is None else "page",
        ],
    )
    return listing_id


def _insert_match(con: Any, run_id: str, rank: int, pair: tuple[Any, ...], photos: tuple[str, str]) -> None:
    """One ``matches`` row: ``pair`` is (lost id, found id, score, image, text, attrs, geo, time, km, days)."""
    lost, found, score, img, txt, att, geo, tim, km, days = pair
    row = {
        "run_id": run_id, "lost_listing_id": lost, "found_listing_id": found, "score": score, "image_sim": img,
        "text_sim": txt, "attribute_score": att, "geo_score": geo, "time_score": tim, "distance_km": km,
        "days_apart": days, "photos_agreeing": 1, "rank_for_lost": rank, "rank_for_found": 1, "no_photo": False,
        "lost_photo_id": photos[0], "found_photo_id": photos[1],
        "explanation": f"image {img:.2f}; same species; {km:.1f} km apart; {days:+.0f} days",
    }  # fmt: skip
    run_rows.insert_matches(con, pa.Table.from_pylist([row]))


def add_impostor(settings: Settings, now: dt.datetime | None = None) -> str:
    """Add :data:`IMPOSTOR` to a populated database, matched to Buddy (lost) with the best score of the latest
    published run; return its listing id. Its shelter key is ``rehome-board:SEAS``: it must never reach
    ``petango:SEAS``'s report, page or token. Its location is a spreadsheet formula, for the CSV tests."""
    now = now or dt.datetime.now(UTC)
    with RunsDB(settings.duckdb).write() as con:
        photo = con.execute("SELECT photo_ids[1] FROM listings WHERE listing_id = ?", [lid("shelter_a101")]).fetchone()
        found = _insert_listing(con, IMPOSTOR, photo[0], now)
        lost_photo = con.execute("SELECT photo_ids[1] FROM listings WHERE listing_id = ?", [lid("lost_buddy")])
        pair = (lid("lost_buddy"), found, 0.97, 0.98, 0.70, 0.9, 0.9, 0.9, 2.0, -7.0)
        _insert_match(con, "match-latest", 1, pair, (lost_photo.fetchone()[0], photo[0]))
    return found


def make_photo(
    body: tuple[int, int, int], background: tuple[int, int, int], size: tuple[int, int] = (900, 700), exif: bool = True
) -> bytes:
    """A JPEG of a cartoon animal (ears, eyes, nose) in two colours, with EXIF GPS and camera tags when ``exif``."""
    w, h = size
    img = Image.new("RGB", size, background)
    d = ImageDraw.Draw(img)
    cx, cy, r = w // 2, h // 2 + h // 10, min(w, h) // 3
    d.polygon([(cx - r, cy - r // 2), (cx - r // 2, cy - r - r // 2), (cx - r // 5, cy - r)], fill=body)
    d.polygon([(cx + r, cy - r // 2), (cx + r // 2, cy - r - r // 2), (cx + r // 5, cy - r)], fill=body)
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=body)
    eye = (250, 250, 250) if sum(body) < 300 else (30, 30, 30)
    for ex in (cx - r // 3, cx + r // 3):
        d.ellipse([ex - r // 9, cy - r // 4 - r // 9, ex + r // 9, cy - r // 4 + r // 9], fill=eye)
    d.ellipse([cx - r // 7, cy + r // 6, cx + r // 7, cy + r // 3], fill=(200, 90, 90))
    out = io.BytesIO()
    if exif:
        ex = Image.Exif()
        ex[0x010F] = "PhoneMaker"  # Make
        ex[0x0110] = "Phone 12"  # Model
        ex[0x0131] = "HomewardSampleCamera"  # Software
        gps = ex.get_ifd(0x8825)
        gps[1], gps[2], gps[3], gps[4] = "N", (47.0, 40.0, 49.8), "W", (122.0, 19.0, 44.4)
        img.save(out, "JPEG", quality=88, exif=ex)
    else:
        img.save(out, "JPEG", quality=88)
    return out.getvalue()


def _store_photos(settings: Settings, now: dt.datetime) -> dict[str, str]:
    """One EXIF-carrying photo per listing in the PhotoStore and its LanceDB row; photo ids by listing name."""
    lance = LanceStore(settings.lance, settings.storage_options)
    store = PhotoStore(settings.photos, settings.storage_options)
    photo_ids: dict[str, str] = {}
    photo_rows = []
    for name in LISTINGS:
        pid, uri = store.put(make_photo(*_PALETTE[name]), "jpg")
        photo_ids[name] = pid
        src_url = f"https://img.example.invalid/{name}.jpg"
        photo_rows.append(
            dict(
                photo_key=ids.photo_key(lid(name), src_url),
                photo_id=pid,
                listing_id=lid(name),
                source_url=src_url,
                uri=uri,
                width=900,
                height=700,
                format="JPEG",
                fetched_at=now,
                status="ok",
                error=None,
                enrich_status="ok",
                enrich_error=None,
                enriched_at=now,
            )
        )
    upsert_photos(lance, photo_rows)
    return photo_ids


def _match_runs(now: dt.datetime) -> dict[str, tuple[str, dt.datetime, dt.datetime | None, str]]:
    """(run id, started, finished, status) by the name the tests use."""
    return {
        "old": (
            "match-old",
            now - dt.timedelta(days=8),
            now - dt.timedelta(days=8) + dt.timedelta(seconds=95),
            "published",
        ),
        "latest": ("match-latest", now - dt.timedelta(minutes=62), now - dt.timedelta(minutes=60), "published"),
        "running": ("match-running", now - dt.timedelta(minutes=5), None, "running"),
    }


#: (lost, found, score, image, text, attrs, geo, time, distance_km, days_apart) of each match run, by its name.
PAIRS: dict[str, list[tuple[Any, ...]]] = {
    "old": [
        ("lost_buddy", "shelter_a101", 0.88, 0.90, 0.61, 0.9, 0.8, 0.9, 7.4, 2.0),
        ("lost_rex", "shelter_k9", 0.64, 0.66, 0.50, 0.8, 0.7, 0.6, 3.6, 5.0),
    ],
    "latest": [
        ("lost_buddy", "shelter_a101", 0.91, 0.93, 0.64, 0.9, 0.8, 0.9, 7.4, 2.0),
        ("lost_buddy", "shelter_a102", 0.52, 0.55, 0.30, 0.4, 0.8, 0.9, 7.4, 5.0),
        ("lost_misha", "found_cat", 0.77, 0.81, 0.58, 0.7, 0.9, 0.9, 0.6, 3.0),
        ("lost_rex", "shelter_k9", 0.62, 0.63, 0.52, 0.8, 0.7, 0.6, 3.6, 5.0),
        ("lost_luna", "shelter_a101", 0.41, 0.45, 0.20, 0.3, 0.9, 0.9, 10.1, -4.0),
    ],
    "running": [
        ("lost_buddy", "shelter_a101", 0.95, 0.96, 0.70, 0.9, 0.8, 0.9, 7.4, 2.0),
        (*GHOST_PAIR, 0.99, 0.99, 0.90, 0.9, 0.9, 0.9, 8.0, 1.0),
    ],
}


def _insert_match_runs(
    con: Any, runs_info: dict[str, tuple[str, dt.datetime, dt.datetime | None, str]], photo_ids: dict[str, str]
) -> None:
    for key, (run_id, started, finished, status) in runs_info.items():
        rows = PAIRS[key]
        con.execute(
            "INSERT INTO match_runs (run_id, started, finished, status, parameters, embed_model, lost_listings, "
            "found_listings, candidate_pairs, matches, duration_s, message) VALUES (?, ?, ?, ?, ?, 'tiny-test', "
            "4, 4, ?, ?, ?, NULL)",
            [
                run_id,
                started,
                finished,
                status,
                json.dumps({"top_k": 10}),
                16 * (len(rows) + 1),
                len(rows),
                (finished - started).total_seconds() if finished else None,
            ],
        )
        for rank, (lost, found, *terms) in enumerate(rows):
            _insert_match(con, run_id, rank + 1, (lid(lost), lid(found), *terms), (photo_ids[lost], photo_ids[found]))


def _insert_feedback(con: Any, now: dt.datetime) -> None:
    """One pair confirmed, one rejected, one rejected then confirmed."""
    feedback = [
        (
            "lost_buddy",
            "shelter_a101",
            "confirmed",
            "seas-staff",
            now - dt.timedelta(minutes=30),
            "owner verified chip",
        ),
        ("lost_luna", "shelter_a101", "rejected", "seas-staff", now - dt.timedelta(minutes=20), "different dog"),
        ("lost_rex", "shelter_k9", "rejected", "astn-staff", now - dt.timedelta(days=5), "first look: no"),
        ("lost_rex", "shelter_k9", "confirmed", "astn-staff", now - dt.timedelta(days=2), "owner came in"),
    ]
    for lost, found, verdict, who, at, note in feedback:
        con.execute("INSERT INTO feedback VALUES (?, ?, ?, ?, ?, ?)", [lid(lost), lid(found), verdict, who, at, note])


def _insert_job_runs(con: Any, now: dt.datetime) -> None:
    """Crawl runs (one source healthy, one whose latest run failed, one that never succeeded) and an enrich run."""
    crawl = [
        ("crawl-petango-1", "petango", now - dt.timedelta(days=2), "ok", 40, 1),
        ("crawl-petango-2", "petango", now - dt.timedelta(hours=5), "ok", 42, 0),
        ("crawl-pet911-1", "pet911", now - dt.timedelta(days=3), "ok", 120, 4),
        ("crawl-pet911-2", "pet911", now - dt.timedelta(hours=4), "failed", 0, 9),
        ("crawl-craigslist-1", "craigslist", now - dt.timedelta(days=1), "failed", 0, 3),
        ("crawl-petharbor-1", "petharbor", now - dt.timedelta(days=20), "ok", 12, 0),
    ]
    for run_id, source, started, status, items, errors in crawl:
        con.execute(
            "INSERT INTO crawl_runs (run_id, source, started, finished, status, pages, items, new_items, errors, "
            "errors_by_reason, duration_s, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 60, ?)",
            [
                run_id,
                source,
                started,
                started + dt.timedelta(minutes=1),
                status,
                items + errors,
                items,
                items // 2,
                errors,
                json.dumps({"http_503": errors} if errors else {}),
                "robots.txt refused" if status == "failed" else None,
            ],
        )
    con.execute(
        "INSERT INTO enrich_runs (run_id, started, finished, status, photos, ok, no_animal, failed, detections, "
        "duration_s) VALUES ('enrich-1', ?, ?, 'ok', 160, 150, 6, 4, 151, 40.0)",
        [now - dt.timedelta(hours=3), now - dt.timedelta(hours=3) + dt.timedelta(seconds=40)],
    )


def _insert_loop(con: Any, now: dt.datetime) -> None:
    """A scheduler round whose match step failed once before it published, and an operator alert."""
    started = now - dt.timedelta(minutes=70)
    con.execute(
        "INSERT INTO loop_rounds (round_id, started, finished, status, steps, changed_listings, match_run_id, "
        "published, latency_s) VALUES ('round-1', ?, ?, 'ok', '[\"enrich\", \"match\"]', 7, 'match-latest', ?, 610)",
        [started, now - dt.timedelta(minutes=60), now - dt.timedelta(minutes=60)],
    )
    for step, attempt, status, error in (("enrich", 1, "ok", None), ("match", 1, "failed", "out of memory"),
                                         ("match", 2, "ok", None)):  # fmt: skip
        con.execute(
            "INSERT INTO loop_steps (round_id, step, source, attempt, status, started, finished, error) "
            "VALUES ('round-1', ?, '', ?, ?, ?, ?, ?)",
            [step, attempt, status, started + dt.timedelta(minutes=attempt), started + dt.timedelta(minutes=2), error],
        )
    con.execute(
        "INSERT INTO loop_alerts VALUES ('craigslist', 'failing', 'crawl-craigslist-1', ?, ?, NULL)",
        [now - dt.timedelta(hours=20), "craigslist failed 3 times in a row: robots.txt refused"],
    )


def populate(settings: Settings, now: dt.datetime | None = None) -> dict[str, Any]:
    """Write the sample database under ``settings``; return listing ids, photo ids and run ids by name."""
    now = now or dt.datetime.now(UTC)
    photo_ids = _store_photos(settings, now)
    runs_info = _match_runs(now)
    with RunsDB(settings.duckdb).write() as con:
        for table in ("match_members", "match_pairs", "match_runs", "feedback", "listings", "crawl_runs",
                      "enrich_runs", "loop_rounds", "loop_steps", "loop_alerts"):  # fmt: skip
            con.execute(f"DELETE FROM {table}")
        for name, spec in LISTINGS.items():
            _insert_listing(con, spec, photo_ids[name], now)
        _insert_match_runs(con, runs_info, photo_ids)
        _insert_feedback(con, now)
        _insert_job_runs(con, now)
        _insert_loop(con, now)
    return {
        "listings": {name: lid(name) for name in LISTINGS},
        "photos": photo_ids,
        "runs": {k: v[0] for k, v in runs_info.items()},
        "now": now,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    args = parser.parse_args(argv)
    info = populate(load_settings(overrides={"data_dir": args.data_dir}))
    print(json.dumps({k: v for k, v in info.items() if k != "now"}, indent=1))


if __name__ == "__main__":
    main()
