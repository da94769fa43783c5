"""``homeward search --photo FILE``: the listings most similar to one photo, with links.

What an owner or a shelter does first: upload a photo, see the closest lost, found and shelter posts. The photo goes
through the same models as enrichment (detector → animal crops → embedder of the configured profile) and is scored
against the stored detection vectors with the same scoring code as ``homeward match`` (best photo pair, background
standardisation, species rule, distance prior when ``--near`` is given). Listings of every active kind are searched.

A photo that cannot be read raises a clear :class:`HomewardError`. A photo in which no animal is detected is still
searched with the whole image, and the result says so (``fallback_full_frame``).

:func:`search_image` is the search itself: an image in, a typed :class:`SearchResult` out (the dashboard calls it
with an upload, no temporary file). :func:`search` is the ``homeward search`` verb around it: a file path in, the
hits printed and the same result as a JSON-ready dict (:func:`dataclasses.asdict`) out.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from engine import places, schema
from engine.config import Settings
from engine.errors import HomewardError
from engine.scoring import attributes
from engine.scoring.allpairs import blocked_topk, resolve_device, tile_bounds, tile_for
from engine.scoring.fuse import SPECIES_CODES, ScoreParams, Scorer, Side, background_stats
from engine.scoring.geo import haversine_km
from engine.scoring.sides import active_listings, build_side, select_model_vectors
from engine.storage import LanceStore


class VectorModelMismatch(HomewardError):
    """The query's vectors come from another embedder than the stored ones: they cannot be compared."""


@dataclass(frozen=True)
class SearchHit:
    """One listing found, ranked by ``score`` (calibrated, as in ``homeward match``)."""

    rank: int
    listing_id: str
    source: str | None
    url: str | None
    kind: str | None
    species: str | None
    name: str | None
    location: str | None
    event_date: dt.date | None  # when the animal was lost or found
    posted_at: dt.datetime | None
    distance_km: float | None  # None when the query or the listing has no place
    score: float
    image_sim: float
    photo_id: str | None  # the listing's photo that matched best
    explanation: str


@dataclass
class SearchResult:
    """What a search saw in the query photo and the listings it found."""

    model: str  # the embedder that compared the photos
    species: str  # asked for, else what the detector saw most, else "unknown"
    detections: list[dict[str, Any]]  # species, confidence, bbox, full_frame of each crop searched with
    fallback_full_frame: bool  # no animal detected: searched with the whole image
    results: list[SearchHit] = field(default_factory=list)
    searched_listings: int = 0
    notes: list[str] = field(default_factory=list)  # why the results are few or none
    photo: str | None = None  # the file searched with, when the query came from one

    @property
    def message(self) -> str | None:
        return "; ".join(self.notes) or None


def parse_near(near: str | None) -> tuple[float, float] | None:
    """``LAT,LON`` or a place as people write it ("Seattle, WA", "98101", "Москва"): :func:`engine.places.near`."""
    return places.near(near) if near else None


def read_photo(photo: str) -> Any:
    path = Path(photo)
    if not path.is_file():
        raise HomewardError(f"search: photo {photo!r} does not exist or is not a file")
    return decode_query(path.read_bytes(), photo)


def decode_query(data: bytes, label: str) -> Any:
    """The query photo's bytes as an image of at most 1280 px a side; ``label`` names it in the error."""
    from engine.images import decode_image

    try:
        return decode_image(data, max_side=1280)
    except HomewardError as exc:
        raise HomewardError(f"search: cannot use {label!r} as a photo ({exc})") from exc


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


@dataclass(frozen=True)
class QueryVectors:
    """A query photo as the search compares it: one unit vector per animal crop, and what the detector saw."""

    model: str  # the embedder that made the vectors
    species: str  # asked for, else what the detector saw most, else "unknown"
    vectors: np.ndarray  # (crops, dim) float32, L2-normalised
    detections: list[dict[str, Any]]
    fallback_full_frame: bool


def embed_query(settings: Settings, image: Any, species: str | None = None) -> QueryVectors:
    """Detect, crop and embed ``image`` with the configured profile, as enrichment embeds a listing's photo.

    Saved searches (:mod:`engine.watches`) keep these vectors and search with them after every match run
    (:func:`search_vectors`) without the photo or the models."""
    if species and species not in schema.SPECIES:
        raise HomewardError(f"--species must be one of {', '.join(schema.SPECIES)}, got {species!r}")
    from engine.models import load_detector, load_embedder

    crops, dets, fallback = crops_of(image, load_detector(settings), species)
    embedder = load_embedder(settings)
    vectors = np.asarray(embedder.embed(crops), dtype=np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    seen = [d["species"] for d in dets if d["species"] in ("dog", "cat")]
    q_species = species or (max(set(seen), key=seen.count) if seen else "unknown")
    return QueryVectors(embedder.model_id, q_species, vectors, dets, fallback)


def search_image(
    settings: Settings,
    image: Any,
    *,
    species: str | None = None,
    near: tuple[float, float] | None = None,
    radius_km: float | None = None,
    k: int = 10,
) -> SearchResult:
    """The ``k`` listings whose photos look most like ``image``, a decoded PIL image (:func:`read_photo`,
    :func:`engine.images.decode_image`).

    Args:
        species: dog or cat (default: what the detector sees)
        near: (lat, lon) of where the animal was lost or found (adds the distance prior; :func:`parse_near`)
        radius_km: only listings within this distance of ``near`` (listings without a location are kept)
    """
    if radius_km is not None and near is None:
        raise HomewardError("--radius-km needs --near LAT,LON")
    query = embed_query(settings, image, species)
    return search_vectors(settings, query, species=species, near=near, radius_km=radius_km, k=k)


def search_vectors(
    settings: Settings,
    query: QueryVectors,
    *,
    species: str | None = None,
    near: tuple[float, float] | None = None,
    radius_km: float | None = None,
    k: int = 10,
    kinds: tuple[str, ...] = schema.LOST_KINDS + schema.FOUND_KINDS,
) -> SearchResult:
    """The ``k`` active listings of ``kinds`` whose stored photo vectors score best against ``query``'s, with the
    scoring of ``homeward match``. ``species`` (when given) keeps listings of that species or of unknown species."""
    if radius_km is not None and near is None:
        raise HomewardError("--radius-km needs --near LAT,LON")
    q_species = query.species
    result = SearchResult(
        model=query.model,
        species=q_species,
        detections=query.detections,
        fallback_full_frame=query.fallback_full_frame,
    )
    if query.fallback_full_frame:
        result.notes.append("no animal detected in the photo: searched with the whole image")

    store = LanceStore(settings.lance, settings.storage_options)
    listings = store.read("listings") if store.exists("listings") else pa.table({})
    det = store.read("detections") if store.exists("detections") else pa.table({})
    if listings.num_rows == 0 or det.num_rows == 0:
        result.notes.append("nothing to search yet: no enriched listings (run `homeward crawl` and `homeward enrich`)")
        return result
    cand = active_listings(listings, kinds)
    if species:
        cand = cand.filter(pc.is_in(pc.fill_null(cand["species"], "unknown"), pa.array([species, "unknown"])))
    det = det.filter(pc.is_in(det["listing_id"], cand["listing_id"]))
    det = det.filter(pc.invert(pc.is_in(pc.fill_null(det["status"], "ok"), pa.array(["failed", "error"]))))
    det = det.filter(pc.is_valid(det["embedding"]))
    mine = det.filter(pc.equal(pc.fill_null(det["embed_model"], ""), query.model))
    if mine.num_rows == 0:
        models = sorted({m for m in det["embed_model"].to_pylist() if m})
        if models:
            raise VectorModelMismatch(
                f"search embeds with {query.model!r} but the stored vectors are of {', '.join(map(repr, models))}"
                ": vectors of different models cannot be compared; search with the profile that enriched the data "
                "(--set enrich.profile=...) or re-run `homeward enrich`"
            )
        result.notes.append("no stored photo vectors to compare with")
        return result
    skipped = len(set(det["listing_id"].to_pylist()) - set(mine["listing_id"].to_pylist()))
    if skipped:
        result.notes.append(f"{skipped} listings have no vector of {query.model!r} yet and were not searched")
    mine, _, _ = select_model_vectors(mine, query.model)
    cand = cand.filter(pc.is_in(cand["listing_id"], mine["listing_id"]))
    found = build_side(cand, mine)
    side = query_side(query.vectors, q_species, near)
    params = background_stats(side, found, ScoreParams.from_settings(settings.match))
    dev = resolve_device(settings.match.device)
    scorer = Scorer(side, found, params, dev)
    kk = max(1, int(k))

    def tile(r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        scores = scorer.tile(r0, r1, c0, c1)
        if radius_km is None or near is None:
            return scores
        lat, lon = found.lat[c0:c1].to(dev), found.lon[c0:c1].to(dev)
        dist = haversine_km(torch.tensor(near[0], device=dev), torch.tensor(near[1], device=dev), lat, lon)
        return torch.where(dist[None, :] > radius_km, torch.full_like(scores, float("-inf")), scores)

    bounds = tile_bounds(found.det_counts.numpy(), tile_for(settings.match.tile_size, dev))
    top = blocked_topk(1, found.n, kk, tile, [(0, 1)], bounds, device=dev, want_cols=False)
    _, cols, _, _ = top.row_pairs()
    terms = Scorer(side, found, params, "cpu").pairs(np.zeros(len(cols), dtype=np.int64), cols)
    meta_cols = ["listing_id", "source", "url", "kind", "species", "name", "location_text", "event_date", "posted_at"]
    by_id = {r["listing_id"]: r for r in cand.select(meta_cols).to_pylist()}
    for n, j in enumerate(cols.tolist()):
        dist = terms["distance_km"][n]
        meta = by_id[found.listing_ids[j]]
        result.results.append(
            SearchHit(
                rank=n + 1,
                listing_id=meta["listing_id"],
                source=meta["source"],
                url=meta["url"],
                kind=meta["kind"],
                species=meta["species"],
                name=meta["name"],
                location=meta["location_text"],
                event_date=meta["event_date"],
                posted_at=meta["posted_at"],
                distance_km=None if not np.isfinite(dist) else round(float(dist), 2),
                score=round(float(terms["score"][n]), 4),
                image_sim=round(float(terms["image_sim"][n]), 4),
                photo_id=terms["found_photo_id"][n],
                explanation=terms["explanation"][n],
            )
        )
    result.searched_listings = found.n
    return result


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
    result = search_image(settings, read_photo(photo), species=species, near=where, radius_km=radius_km, k=k)
    result.photo = photo
    for note in result.notes:
        print(f"note: {note}")
    for r in result.results:
        where_ = f", {r.distance_km} km" if r.distance_km is not None else ""
        print(f"{r.rank:>3}. {r.score:.3f}  {r.kind or '?':<9} {r.species or '?':<7} {r.url}{where_}")
    if not result.results:
        print("no matching listings")
    return {**dataclasses.asdict(result), "message": result.message}
