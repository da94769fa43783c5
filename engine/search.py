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

from engine import places, schema, vector_index
from engine.config import Settings
from engine.errors import HomewardError
from engine.scoring import attributes
from engine.scoring.allpairs import blocked_topk, resolve_device, tile_bounds, tile_for
from engine.scoring.fuse import SPECIES_CODES, ScoreParams, Scorer, Side, background_stats
from engine.scoring.geo import haversine_km
from engine.scoring.sides import active_listings, build_side, select_model_vectors, unit_vectors
from engine.storage import LanceStore

META_COLUMNS = ["listing_id", "source", "url", "kind", "species", "name", "location_text", "event_date", "posted_at"]
LISTING_COLUMNS = [*META_COLUMNS, "status", "lat", "lon", "sex", "size", "colors", "breed"]
"""What a search reads of listings: the scorer's inputs and what a hit shows, never descriptions or photo lists."""
DETECTION_COLUMNS = ["listing_id", "photo_id", "species", "confidence", "embedding", "embed_model", "status"]
"""What a search reads of detections: no text vectors (a photo query has no text to compare them with)."""


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
    index: str | None = None  # the vector index that gave the candidates (re-ranked exactly); None: brute force

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
    asked = species or "unknown"
    kinds = [asked if d["full_frame"] else d["species"] for d in dets]
    vectors = np.asarray(embedder.embed(crops, kinds), dtype=np.float32)
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
    kk = max(1, int(k))
    empty = "nothing to search yet: no enriched listings (run `homeward crawl` and `homeward enrich`)"
    if store.count("listings") == 0 or store.count("detections") == 0:
        result.notes.append(empty)
        return result
    table = store.open("detections")
    result.index = (vector_index.index_stats(table) or {}).get("index_type")
    if result.index is None:
        picked = _every_listing(store, query.model, species, kinds, result)
    else:
        picked = _indexed_listings(store, table, query.vectors, query.model, species, kinds, near, radius_km, kk,
                                   settings)  # fmt: skip
    if picked is None:
        return result
    cand, mine = picked
    if mine.num_rows == 0:
        _refuse_other_models(store.read("detections", columns=["embed_model"]), query.model)
        result.notes.append("no stored photo vectors to compare with")
        return result
    mine, _, _ = select_model_vectors(mine, query.model)
    cand = cand.filter(pc.is_in(cand["listing_id"], mine["listing_id"]))
    found = build_side(cand, mine)
    side = query_side(query.vectors, q_species, near)
    # candidates from the index are the query's look-alikes, not a background: sample the whole table instead
    background = found
    if result.index is not None:
        background = query_side(_background(store.uri, table, query.model), "unknown", None)
    params = background_stats(side, background, ScoreParams.from_settings(settings.match))
    dev = resolve_device(settings.match.device)
    scorer = Scorer(side, found, params, dev)

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
    by_id = {r["listing_id"]: r for r in cand.select(META_COLUMNS).to_pylist()}
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


def _searchable(listings: pa.Table, species: str | None, kinds: tuple[str, ...]) -> pa.Table:
    """The active listings of ``kinds``, of ``species`` or unknown species when one is asked for."""
    cand = active_listings(listings, kinds)
    if species:
        cand = cand.filter(pc.is_in(pc.fill_null(cand["species"], "unknown"), pa.array([species, "unknown"])))
    return cand


def _refuse_other_models(det: pa.Table, model: str) -> None:
    models = sorted({m for m in det["embed_model"].to_pylist() if m}) if det.num_rows else []
    if models and model not in models:
        raise VectorModelMismatch(
            f"search embeds with {model!r} but the stored vectors are of {', '.join(map(repr, models))}"
            ": vectors of different models cannot be compared; search with the profile that enriched the data "
            "(--set enrich.profile=...) or re-run `homeward enrich`"
        )


def _every_listing(
    store: LanceStore, model: str, species: str | None, kinds: tuple[str, ...], result: SearchResult
) -> tuple[pa.Table, pa.Table] | None:
    """Brute force (no index yet): every searchable listing and its detection rows, the needed columns only."""
    cand = _searchable(store.read("listings", columns=LISTING_COLUMNS), species, kinds)
    det = store.read("detections", columns=DETECTION_COLUMNS)
    det = det.filter(pc.is_in(det["listing_id"], cand["listing_id"]))
    det = det.filter(pc.invert(pc.is_in(pc.fill_null(det["status"], "ok"), pa.array(["failed", "error"]))))
    det = det.filter(pc.is_valid(det["embedding"]))
    mine = det.filter(pc.equal(pc.fill_null(det["embed_model"], ""), model))
    if mine.num_rows == 0:
        _refuse_other_models(det, model)
        result.notes.append("no stored photo vectors to compare with")
        return None
    skipped = len(set(det["listing_id"].to_pylist()) - set(mine["listing_id"].to_pylist()))
    if skipped:
        result.notes.append(f"{skipped} listings have no vector of {model!r} yet and were not searched")
    return cand, mine


def _in_list(column: str, values: list[str]) -> str:
    return f"{column} IN ({', '.join(map(vector_index.sql_string, values))})" if values else "false"


def _indexed_listings(
    store: LanceStore,
    table: Any,
    vectors: np.ndarray,
    model: str,
    species: str | None,
    kinds: tuple[str, ...],
    near: tuple[float, float] | None,
    radius_km: float | None,
    k: int,
    settings: Settings,
) -> tuple[pa.Table, pa.Table]:
    """Candidates through the vector index: the ``k × search.oversample`` nearest detections of each query vector
    (model and status filters pushed into the index query), then their listings read by id and filtered by kind,
    status, species and radius, which live on listings, not on detections. While fewer than ``k`` listings survive
    the filters the fetch widens (×4) until the table is exhausted. The survivors come back with every usable
    detection of theirs, so the exact re-rank sees each listing's best photo even when the index returned another."""
    cfg = settings.search
    usable = (
        f"embed_model = {vector_index.sql_string(model)} AND embedding IS NOT NULL "
        "AND (status IS NULL OR status NOT IN ('failed', 'error'))"
    )
    total = table.count_rows()
    limit = k * max(1, cfg.oversample)
    while True:
        hits = [vector_index.nearest(table, v, limit, cfg, where=usable, columns=["listing_id"]) for v in vectors]
        ids = sorted({lid for h in hits for lid in h["listing_id"].to_pylist()})
        listings = store.read("listings", where=_in_list("listing_id", ids), columns=LISTING_COLUMNS)
        cand = _searchable(listings, species, kinds) if listings.num_rows else listings
        if cand.num_rows and near is not None and radius_km is not None:
            lat = pc.fill_null(cand["lat"].cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False)
            lon = pc.fill_null(cand["lon"].cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False)
            dist = haversine_km(torch.tensor(near[0]), torch.tensor(near[1]), torch.from_numpy(lat),
                                torch.from_numpy(lon)).numpy()  # fmt: skip
            cand = cand.filter(pa.array(~(dist > radius_km)))  # no place (NaN): kept, as in the exact path
        if cand.num_rows >= k or limit >= total:
            break
        limit *= 4
    if cand.num_rows == 0:
        return cand, pa.table({})
    det = store.read(
        "detections", where=f"{_in_list('listing_id', cand['listing_id'].to_pylist())} AND {usable}",
        columns=DETECTION_COLUMNS,
    )  # fmt: skip
    return cand, det


_BACKGROUND: dict[tuple[str, int, str], np.ndarray] = {}
BACKGROUND_SAMPLE = 2048


def _background(uri: str, table: Any, model: str) -> np.ndarray:
    """Up to ``BACKGROUND_SAMPLE`` random stored vectors of ``model`` (the image background of the calibrated score),
    cached per table version: random reads of 2,048 rows cost more than a query."""
    key = (str(uri), int(table.version), model)
    if key not in _BACKGROUND:
        n = table.count_rows()
        rng = np.random.default_rng(0)
        offsets = np.sort(rng.choice(n, size=min(n, BACKGROUND_SAMPLE), replace=False)).tolist()
        rows = table.take_offsets(offsets).select(["embedding", "embed_model"]).to_arrow()
        rows = rows.filter(pc.and_(pc.equal(rows["embed_model"], model), pc.is_valid(rows["embedding"])))
        _BACKGROUND.clear()  # one table version at a time: a new version makes the old sample useless
        _BACKGROUND[key] = unit_vectors(rows["embedding"])
    return _BACKGROUND[key]


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
