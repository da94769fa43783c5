"""``homeward eval IMAGES_DIR``: how well the configured embedder re-identifies animals.

``IMAGES_DIR`` holds one folder per identity (``<identity>/<image>.jpg``, like ../shared/data/realpets/images).
Every photo goes through what enrichment does to it: the profile's detector, the shared crop rule
(:mod:`engine.models.crops`), the profile's embedder; a photo in which no animal is detected is embedded whole.
Each photo is represented by its most confident animal (the sets hold one animal per photo; enrichment keeps every
box and matching takes the best pair, which on such photos is the same crop unless the detector also boxed a
bystander). The figures are what users get, detection misses included: ``detected_share`` says how many photos
had an animal detected. ``--no-detect`` embeds every photo whole (the protocol of face-crop sets like DogFaceNet,
and how earlier figures were measured).

Scoring follows the fixed protocol of :mod:`engine.scoring.metrics` (leave-one-out top-1/top-5, mAP, EER and ROC AUC
over all same vs different identity pairs). ``--degrade`` repeats it with every *query* photo degraded
(:mod:`engine.degrade`, seeded) before detection, against the clean gallery, and adds ``degraded_*`` keys. When a
``manifest.csv`` with ``identity`` and ``species`` columns sits beside or inside ``IMAGES_DIR``, ``by_species``
repeats the figures within each species. The last line printed is one JSON object.

The embedder and detector are injectable (:func:`evaluate_with`'s builders), so tests and training loops evaluate any
model without a profile.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from engine.config import Settings
from engine.errors import HomewardError

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
PROTOCOL = (
    "leave-one-out: each image queries all other images; topk = share of queries with a same-identity image in "
    "the k nearest; mAP over queries; EER/AUC over all same vs different identity pairs (cosine)"
)


def list_identity_images(images_dir: str | Path, limit: int | None = None) -> tuple[list[Path], np.ndarray, list[str]]:
    """(paths, integer labels, identity names); whole identities in sorted order until ``limit`` images."""
    root = Path(images_dir)
    if not root.is_dir():
        raise HomewardError(f"eval: {str(root)!r} is not a folder of identity folders")
    paths: list[Path] = []
    labels: list[int] = []
    names: list[str] = []
    for folder in sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: _natural(d.name)):
        files = sorted((f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES), key=lambda f: f.name)
        if not files:
            continue
        if limit is not None and paths and len(paths) + len(files) > limit:
            break
        names.append(folder.name)
        paths.extend(files)
        labels.extend([len(names) - 1] * len(files))
    if not paths:
        raise HomewardError(f"eval: no images under {str(root)!r} (expected <identity>/<image>.jpg)")
    return paths, np.asarray(labels, dtype=np.int64), names


def _natural(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (1 << 62, name)


def load_photo(path: Path) -> Any:
    from engine.images import decode_image

    try:
        return decode_image(path.read_bytes(), max_side=1024)
    except HomewardError as exc:
        raise HomewardError(f"eval: cannot read {path}: {exc}") from exc


def _embed_all(
    embedder: Any,
    detector: Any | None,
    paths: list[Path],
    given: list[str],
    batch_size: int,
    transform: Callable | None,
    desc: str,
) -> tuple[np.ndarray, np.ndarray]:
    """(L2-normalised vectors, whether an animal was detected) of every photo, one vector per photo. ``given``: each
    photo's species as its post states it, what the embedder is told where the detector saw no animal."""
    from engine.models.crops import detect_crops

    out: list[np.ndarray] = []
    detected: list[bool] = []
    with tqdm(total=len(paths), desc=desc, unit="img", leave=False) as bar:
        for s in range(0, len(paths), batch_size):
            batch = [load_photo(p) for p in paths[s : s + batch_size]]
            kinds = given[s : s + batch_size]
            if transform is not None:
                batch = [transform(im, s + i) for i, im in enumerate(batch)]
            if detector is not None:
                best = [crops[0] for crops in detect_crops(detector, batch)]  # most confident first
                detected.extend(not det.full_frame for det, _ in best)
                kinds = [k if det.full_frame else det.species for (det, _), k in zip(best, kinds, strict=True)]
                batch = [crop for _, crop in best]
            else:
                detected.extend([False] * len(batch))
            vecs = np.asarray(embedder.embed(batch, kinds), dtype=np.float32)
            out.append(vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12))
            bar.update(len(batch))
    return np.concatenate(out), np.asarray(detected, dtype=bool)


def identity_species(images_dir: str | Path) -> dict[str, str]:
    """``{identity: species}`` from a ``manifest.csv`` beside or inside the images folder (empty when none)."""
    import csv

    root = Path(images_dir)
    for manifest in (root / "manifest.csv", root.parent / "manifest.csv"):
        if manifest.is_file():
            with manifest.open(newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            if rows and {"identity", "species"} <= set(rows[0]):
                return {r["identity"]: (r["species"] or "unknown") for r in rows}
    return {}


def _scores(query: np.ndarray, gallery: np.ndarray, labels: np.ndarray, prefix: str = "") -> dict[str, Any]:
    from engine.scoring.metrics import reid_metrics

    m = reid_metrics(query, gallery, labels)
    return {f"{prefix}{k}": m[k] for k in ("top1", "top5", "map", "eer", "auc")}


def _round(d: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


def evaluate_with(
    settings: Settings,
    images_dir: str,
    *,
    embedder_builder: Callable[[Settings], Any],
    detector_builder: Callable[[Settings], Any] | None = None,
    degrade: bool = False,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> dict[str, Any]:
    """:func:`evaluate` with the embedder built by ``embedder_builder(settings)`` (anything with ``embed(images)``
    and ``model_id``) and, when ``detector_builder`` is given, photos detected and cropped by its detector (anything
    with ``detect(images)``); without one, photos are embedded whole."""
    from engine.degrade import degrade as degrade_image
    from engine.scoring.metrics import reid_metrics

    t0 = time.perf_counter()
    paths, labels, names = list_identity_images(images_dir, limit)
    embedder = embedder_builder(settings)
    detector = detector_builder(settings) if detector_builder is not None else None
    species_of = identity_species(images_dir)
    given = [species_of.get(names[lab], "unknown") for lab in labels]
    t_embed = time.perf_counter()
    clean, detected = _embed_all(embedder, detector, paths, given, batch_size, None, "embedding")
    embed_s = time.perf_counter() - t_embed
    result: dict[str, Any] = {
        "model": getattr(embedder, "model_id", type(embedder).__name__),
        "detector": getattr(detector, "model_id", type(detector).__name__) if detector is not None else None,
        "dim": int(clean.shape[1]),
        "n_images": len(paths),
        "n_identities": len(names),
        "images_dir": str(images_dir),
        "protocol": PROTOCOL + ("; photos detected and cropped as enrichment does" if detector else "; whole images"),
        "images_per_s": round(len(paths) / embed_s, 2) if embed_s > 0 else None,
    }
    if detector is not None:
        result["detected_share"] = float(detected.mean())
    metrics = reid_metrics(clean, clean, labels)
    result.update({k: metrics[k] for k in ("top1", "top5", "map", "eer", "auc")})
    result["queries"] = metrics["queries"]
    result["pairs_same"], result["pairs_different"] = metrics["pairs_same"], metrics["pairs_different"]
    queries = None
    if degrade:
        # each image's degradation depends only on (seed, its position), not on batching
        def transform(im: Any, i: int) -> Any:
            return degrade_image(im, zlib.crc32(f"{seed}:{i}".encode()))

        queries, q_detected = _embed_all(
            embedder, detector, paths, given, batch_size, transform, "embedding degraded queries"
        )
        result.update(_scores(queries, clean, labels, "degraded_"))
        if detector is not None:
            result["degraded_detected_share"] = float(q_detected.mean())
        result["degrade_seed"] = seed
    species = np.asarray(given)
    if species_of and len(set(species)) > 1:
        result["by_species"] = {}
        for sp in sorted(set(species)):
            m = species == sp
            if len(set(labels[m])) < 2:
                continue
            part: dict[str, Any] = {"n_images": int(m.sum()), "n_identities": len(set(labels[m]))}
            if detector is not None:
                part["detected_share"] = float(detected[m].mean())
            part.update(_scores(clean[m], clean[m], labels[m]))
            if queries is not None:
                part.update(_scores(queries[m], clean[m], labels[m], "degraded_"))
            result["by_species"][sp] = _round(part)
    result["duration_s"] = round(time.perf_counter() - t0, 2)
    log.info("eval of %s on %d images / %d identities done", result["model"], len(paths), len(names))
    return _round(result)


def evaluate(
    settings: Settings,
    images_dir: str,
    *,
    detect: bool = True,
    degrade: bool = False,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> dict:
    """Re-identification quality of the configured embedder on identity folders (JSON on the last line).

    Args:
        images_dir: folder of identity folders, e.g. ../shared/data/realpets/images
        detect: detect and crop each photo as enrichment does (--no-detect: embed whole photos, for face-crop sets)
        degrade: also score degraded queries (off-centre crop, tilt, blur, low light, JPEG) against the clean gallery
        limit: use whole identities, in order, up to this many images
        seed: seed of the degradations
        batch_size: images per embedding batch
    """
    from engine.models import load_detector, load_embedder

    return evaluate_with(
        settings,
        images_dir,
        embedder_builder=load_embedder,
        detector_builder=load_detector if detect else None,
        degrade=degrade,
        limit=limit,
        seed=seed,
        batch_size=batch_size,
    )
