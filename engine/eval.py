"""``homeward eval IMAGES_DIR``: how well the configured embedder re-identifies animals.

``IMAGES_DIR`` holds one folder per identity (``<identity>/<image>.jpg``, like ../shared/data/dogfacenet/images).
Every image is embedded with the configured profile's embedder (``load_embedder``) and scored under the fixed
protocol of :mod:`engine.scoring.metrics` (leave-one-out top-1/top-5, mAP, EER and ROC AUC over all same vs
different identity pairs). ``--degrade`` repeats it with every *query* degraded (:mod:`engine.degrade`, seeded)
against the clean gallery and adds ``degraded_*`` keys. The last line printed is one JSON object.

The embedder is injectable (:func:`evaluate_with`'s ``embedder_builder``), so tests and training loops evaluate any
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


def _load(path: Path) -> Any:
    from engine.images import decode_image

    try:
        return decode_image(path.read_bytes(), max_side=1024)
    except HomewardError as exc:
        raise HomewardError(f"eval: cannot read {path}: {exc}") from exc


def _embed_all(embedder: Any, paths: list[Path], batch_size: int, transform: Callable | None, desc: str) -> np.ndarray:
    out: list[np.ndarray] = []
    with tqdm(total=len(paths), desc=desc, unit="img", leave=False) as bar:
        for s in range(0, len(paths), batch_size):
            batch = [_load(p) for p in paths[s : s + batch_size]]
            if transform is not None:
                batch = [transform(im, s + i) for i, im in enumerate(batch)]
            vecs = np.asarray(embedder.embed(batch), dtype=np.float32)
            out.append(vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12))
            bar.update(len(batch))
    return np.concatenate(out)


def _round(d: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


def evaluate_with(
    settings: Settings,
    images_dir: str,
    *,
    embedder_builder: Callable[[Settings], Any],
    degrade: bool = False,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> dict[str, Any]:
    """:func:`evaluate` with the embedder built by ``embedder_builder(settings)`` (anything with ``embed(images)``
    and ``model_id``)."""
    from engine.degrade import degrade as degrade_image
    from engine.scoring.metrics import reid_metrics

    t0 = time.perf_counter()
    paths, labels, names = list_identity_images(images_dir, limit)
    embedder = embedder_builder(settings)
    t_embed = time.perf_counter()
    clean = _embed_all(embedder, paths, batch_size, None, "embedding")
    embed_s = time.perf_counter() - t_embed
    result: dict[str, Any] = {
        "model": getattr(embedder, "model_id", type(embedder).__name__),
        "dim": int(clean.shape[1]),
        "n_images": len(paths),
        "n_identities": len(names),
        "images_dir": str(images_dir),
        "protocol": PROTOCOL,
        "images_per_s": round(len(paths) / embed_s, 2) if embed_s > 0 else None,
    }
    metrics = reid_metrics(clean, clean, labels)
    result.update({k: metrics[k] for k in ("top1", "top5", "map", "eer", "auc")})
    result["queries"] = metrics["queries"]
    result["pairs_same"], result["pairs_different"] = metrics["pairs_same"], metrics["pairs_different"]
    if degrade:
        # each image's degradation depends only on (seed, its position), not on batching
        def transform(im: Any, i: int) -> Any:
            return degrade_image(im, zlib.crc32(f"{seed}:{i}".encode()))

        queries = _embed_all(embedder, paths, batch_size, transform, "embedding degraded queries")
        dm = reid_metrics(queries, clean, labels)
        result.update({f"degraded_{k}": dm[k] for k in ("top1", "top5", "map", "eer", "auc")})
        result["degrade_seed"] = seed
    result["duration_s"] = round(time.perf_counter() - t0, 2)
    log.info("eval of %s on %d images / %d identities done", result["model"], len(paths), len(names))
    return _round(result)


def evaluate(
    settings: Settings,
    images_dir: str,
    *,
    degrade: bool = False,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> dict:
    """Re-identification quality of the configured embedder on identity folders (JSON on the last line).

    Args:
        images_dir: folder of identity folders, e.g. ../shared/data/dogfacenet/images
        degrade: also score degraded queries (off-centre crop, tilt, blur, low light, JPEG) against the clean gallery
        limit: use whole identities, in order, up to this many images
        seed: seed of the degradations
        batch_size: images per embedding batch
    """
    from engine.models import load_embedder

    return evaluate_with(
        settings,
        images_dir,
        embedder_builder=load_embedder,
        degrade=degrade,
        limit=limit,
        seed=seed,
        batch_size=batch_size,
    )
