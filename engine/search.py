"""``homeward search --photo FILE``: the listings most similar to one photo, with links.

What an owner or a shelter does first: upload a photo, see the closest lost, found and shelter posts. The photo goes
through the same models as enrichment (detector → animal crops → embedder of the configured profile) and is scored
against the stored detection vectors with the same scoring code as ``homeward match`` (best photo pair, background
standardisation, species rule, distance prior when ``--near`` is given). Listings of every active kind are searched.

A photo that cannot be read raises a clear :class:`HomewardError`. A photo in which no animal is detected is still
searched with the whole image, and the result says so (``fallback_full_frame``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from engine import schema
from engine.config import Settings
from engine.errors import HomewardError
from engine.scoring import attributes
from engine.scoring.allpairs import blocked_topk, resolve_device, tile_bounds, tile_for
from engine.scoring.fuse import SPECIES_CODES, ScoreParams, Scorer, Side, background_stats
from engine.scoring.geo import haversine_km
from engine.scoring.sides import active_listings, build_side, select_model_vectors
from engine.storage import LanceStore


def parse_near(near: str | None) -> tuple[float, float] | None:
    if not near:
        return None
    m = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*", near)
    if not m:
        raise HomewardError(f"--near expects LAT,LON in degrees (e.g. 47.61,-122.33), got {near!r}")
    lat, lon = float(m.group(1)), float(m.group(2))
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise HomewardError(f"--near {near!r} is not a place on Earth (lat -90..90, lon -180..180)")
    return lat, lon


def read_photo(photo: str) -> Any:
    from engine.images import decode_image

    path = Path(photo)
    if not path.is_file():
        raise HomewardError(f"search: photo {photo!r} does not exist or is not a file")
    try:
        return decode_image(path.read_bytes(), max_side=1280)
    except HomewardError as exc:
        raise HomewardError(f"search: cannot use {photo!r} as a photo ({exc})") from exc


def crops_of(image: Any, detector: Any, species: str | None) -> tuple[list[Any], list[dict[str, Any]], bool]:
    """Animal crops by the shared crop rule (the requested species first when given); the whole image when none is
    found."""
    from engine.models.crops import animal_crops

    dets = list(detector.detect([image])[0])
    if species and species != "unknown":
        wanted = [d for d in dets if d.species == species]
        dets = wanted or dets
    pairs = animal_crops(image, dets)
    info = [
        {
            "species": d.species,
            "confidence": round(float(d.confidence), 3),
            "bbox": [round(float(v), 1) for v in d.bbox],
            "full_frame": bool(d.full_frame),
        }
        for d, _ in pairs
    ]
    return [c for _, c in pairs], info, not dets


def query_side(vectors: np.ndarray, species: str, near: tuple[float, float] | None) -> Side:
    n = vectors.shape[0]
    return Side(
        listing_ids=np.array(["<query>"], dtype=object),
        species=torch.tensor([SPECIES_CODES.get(species, 0)]),
        lat=torch.tensor([near[0] if near else float("nan")], dtype=torch.float32),
        lon=torch.tensor([near[1] if near else float("nan")], dtype=torch.float32),
        day=torch.tensor([float("nan")]),
        attrs=attributes.encode([None], [None], [None], [None]),
        det_emb=torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)),
        det_owner=torch.zeros(n, dtype=torch.int64),
        det_photo=np.array(["<query>"] * n, dtype=object),
        text=torch.zeros((1, 1)),
        has_text=torch.zeros(1, dtype=torch.bool),
    )


def search(
    settings: Settings,
    *,
    photo: str,
    species: str | None = None,
    near: str | None = None,
    radius_km: float | None = None,
    k: int = 10,
) -> dict:
    """Find the listings whose photos look most like PHOTO (printed with their links; JSON on the last line).

    Args:
        photo: path of the photo to search with
        species: dog or cat (default: what the detector sees)
        near: LAT,LON of where the animal was lost or found (adds the distance prior)
        radius_km: only listings within this distance of --near (listings without a location are kept)
        k: how many listings to show
    """
    if not photo:
        raise HomewardError("search needs a photo: homeward search --photo FILE")
    if species and species not in schema.SPECIES:
        raise HomewardError(f"--species must be one of {', '.join(schema.SPECIES)}, got {species!r}")
    where = parse_near(near)
    if radius_km is not None and where is None:
        raise HomewardError("--radius-km needs --near LAT,LON")
    image = read_photo(photo)

    from engine.models import load_detector, load_embedder

    crops, dets, fallback = crops_of(image, load_detector(settings), species)
    embedder = load_embedder(settings)
    vectors = np.asarray(embedder.embed(crops), dtype=np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    seen = [d["species"] for d in dets if d["species"] in ("dog", "cat")]
    q_species = species or (max(set(seen), key=seen.count) if seen else "unknown")
    result: dict[str, Any] = {
        "photo": photo,
        "model": embedder.model_id,
        "detections": dets,
        "fallback_full_frame": fallback,
        "species": q_species,
        "results": [],
    }
    messages = []
    if fallback:
        messages.append("no animal detected in the photo: searched with the whole image")

    store = LanceStore(settings.lance, settings.storage_options)
    listings = store.read("listings") if store.exists("listings") else pa.table({})
    det = store.read("detections") if store.exists("detections") else pa.table({})
    if listings.num_rows == 0 or det.num_rows == 0:
        messages.append("nothing to search yet: no enriched listings (run `homeward crawl` and `homeward enrich`)")
        return _finish(result, messages)
    cand = active_listings(listings, schema.LOST_KINDS + schema.FOUND_KINDS)
    if species:
        cand = cand.filter(pc.is_in(pc.fill_null(cand["species"], "unknown"), pa.array([species, "unknown"])))
    det = det.filter(pc.is_in(det["listing_id"], cand["listing_id"]))
    det = det.filter(pc.invert(pc.is_in(pc.fill_null(det["status"], "ok"), pa.array(["failed", "error"]))))
    det = det.filter(pc.is_valid(det["embedding"]))
    mine = det.filter(pc.equal(pc.fill_null(det["embed_model"], ""), embedder.model_id))
    if mine.num_rows == 0:
        models = sorted({m for m in det["embed_model"].to_pylist() if m})
        if models:
            raise HomewardError(
                f"search embeds with {embedder.model_id!r} but the stored vectors are of {', '.join(map(repr, models))}"
                ": vectors of different models cannot be compared; search with the profile that enriched the data "
                "(--set enrich.profile=...) or re-run `homeward enrich`"
            )
        messages.append("no stored photo vectors to compare with")
        return _finish(result, messages)
    skipped = len(set(det["listing_id"].to_pylist()) - set(mine["listing_id"].to_pylist()))
    if skipped:
        messages.append(f"{skipped} listings have no vector of {embedder.model_id!r} yet and were not searched")
    mine, _, _ = select_model_vectors(mine, embedder.model_id)
    cand = cand.filter(pc.is_in(cand["listing_id"], mine["listing_id"]))
    found = build_side(cand, mine)
    query = query_side(vectors, q_species, where)
    params = background_stats(query, found, ScoreParams.from_settings(settings.match))
    dev = resolve_device(settings.match.device)
    scorer = Scorer(query, found, params, dev)
    kk = max(1, int(k))

    def tile(r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        scores = scorer.tile(r0, r1, c0, c1)
        if radius_km is None or where is None:
            return scores
        lat, lon = found.lat[c0:c1].to(dev), found.lon[c0:c1].to(dev)
        dist = haversine_km(torch.tensor(where[0], device=dev), torch.tensor(where[1], device=dev), lat, lon)
        return torch.where(dist[None, :] > radius_km, torch.full_like(scores, float("-inf")), scores)

    bounds = tile_bounds(found.det_counts.numpy(), tile_for(settings.match.tile_size, dev))
    top = blocked_topk(1, found.n, kk, tile, [(0, 1)], bounds, device=dev, want_cols=False)
    _, cols, _, _ = top.row_pairs()
    terms = Scorer(query, found, params, "cpu").pairs(np.zeros(len(cols), dtype=np.int64), cols)
    meta_cols = ["listing_id", "url", "kind", "species", "location_text"]
    by_id = {r["listing_id"]: r for r in cand.select(meta_cols).to_pylist()}
    rows = []
    for n, j in enumerate(cols.tolist()):
        dist = terms["distance_km"][n]
        lid = found.listing_ids[j]
        meta = by_id[lid]
        rows.append(
            {
                "rank": len(rows) + 1,
                "listing_id": lid,
                "kind": meta["kind"],
                "species": meta["species"],
                "url": meta["url"],
                "location": meta["location_text"],
                "score": round(float(terms["score"][n]), 4),
                "image_sim": round(float(terms["image_sim"][n]), 4),
                "distance_km": None if not np.isfinite(dist) else round(float(dist), 2),
                "photo_id": terms["found_photo_id"][n],
                "explanation": terms["explanation"][n],
            }
        )
    result["results"] = rows
    result["searched_listings"] = found.n
    return _finish(result, messages)


def _finish(result: dict[str, Any], messages: list[str]) -> dict[str, Any]:
    result["message"] = "; ".join(messages) if messages else None
    for m in messages:
        print(f"note: {m}")
    for r in result["results"]:
        where = f", {r['distance_km']} km" if r["distance_km"] is not None else ""
        print(f"{r['rank']:>3}. {r['score']:.3f}  {r['kind']:<9} {r['species'] or '?':<7} {r['url']}{where}")
    if not result["results"]:
        print("no matching listings")
    return result
