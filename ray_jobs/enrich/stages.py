"""The enrich pipeline's stages: how rows travel, the decode task and the model actors.

Every stage passes rows it cannot handle through with a reason (:func:`fail_row`) rather than raising: one bad photo
never stops the job. A model batch that raises is retried row by row so only the rows that fail are marked failed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
from typing import Any

import numpy as np

from engine.config import Settings
from engine.models.crops import CROP_MAX_SIDE

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ row transport
# Rows travel between stages as one pickled dict each (column ``row``): images, boxes and vectors of varying shape
# in one column Ray Data never has to infer a schema for.


def unpack(batch: dict[str, Any]) -> list[dict[str, Any]]:
    return [pickle.loads(b) for b in batch["row"]]


def pack(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"row": np.array([pickle.dumps(r, protocol=5) for r in rows], dtype=object)}


def fail_row(row: dict[str, Any], reason: str, detail: str) -> None:
    row["status"] = "failed"
    row["error"] = f"{reason}: {detail}"[:300] if detail else reason
    row.pop("image", None)
    row["dets"] = []


def _set_threads(actor_cpus: float) -> None:
    import torch

    torch.set_num_threads(max(1, int(actor_cpus)))
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


# ------------------------------------------------------------------------------------------------ decode (tasks)


def decode_batch(
    batch: dict[str, Any], max_side: int, max_pixels: int, storage_options: dict[str, str] | None = None
) -> dict[str, Any]:
    """CPU task: fetch bytes from the photo store, decode safely (:func:`engine.images.decode_image`)."""
    from engine.images import ImageError, decode_image, to_array
    from engine.storage import read_uri

    out = []
    for pid, uri, targets in zip(batch["photo_id"], batch["uri"], batch["targets"], strict=True):
        row: dict[str, Any] = {"photo_id": str(pid), "targets": json.loads(targets), "status": "ok", "error": None}
        try:
            data = read_uri(str(uri), storage_options)
        except Exception as exc:
            fail_row(row, "fetch_failed", f"{type(exc).__name__}: {exc}")
            out.append(row)
            continue
        try:
            im = decode_image(data, max_side=max_side, max_pixels=max_pixels)
        except ImageError as exc:
            fail_row(row, exc.reason, exc.detail)
            out.append(row)
            continue
        except Exception as exc:
            fail_row(row, "corrupt_image", f"{type(exc).__name__}: {exc}")
            out.append(row)
            continue
        ow, oh = im.info.get("original_size", im.size)
        row["image"] = to_array(im)
        row["scale"] = (ow / im.width, oh / im.height)
        row["size"] = (int(ow), int(oh))
        out.append(row)
    return pack(out)


# ------------------------------------------------------------------------------------------------ model actors


class _Stage:
    stage = "?"

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        rows = unpack(batch)
        live = [r for r in rows if r["status"] != "failed"]
        if live:
            try:
                self.process(live)
            except Exception as exc:
                log.warning("%s batch failed (%s); retrying row by row", self.stage, exc)
                for r in live:
                    try:
                        self.process([r])
                    except Exception as exc1:
                        fail_row(r, "model_error", f"{self.stage}: {type(exc1).__name__}: {exc1}")
        return pack(rows)

    def process(self, rows: list[dict[str, Any]]) -> None:
        raise NotImplementedError


class DetectStage(_Stage):
    stage = "detect"

    def __init__(self, settings: Settings, actor_cpus: float, crop_max_side: int = CROP_MAX_SIDE) -> None:
        _set_threads(actor_cpus)
        from engine.models import load_detector

        self.detector = load_detector(settings)
        self.crop_max_side = crop_max_side

    def process(self, rows: list[dict[str, Any]]) -> None:
        from PIL import Image

        from engine.models.crops import animal_crops

        images = [Image.fromarray(r["image"]) for r in rows]
        found = self.detector.detect(images)
        for r, im, dets in zip(rows, images, found, strict=True):
            sx, sy = r["scale"]
            if not dets:
                r["status"] = "no_animal"
            r["dets"] = [
                {
                    "species": d.species,
                    "confidence": float(d.confidence),
                    "bbox": (d.bbox[0] * sx, d.bbox[1] * sy, d.bbox[2] * sx, d.bbox[3] * sy),
                    "full_frame": d.full_frame,
                    "crop": np.asarray(crop.convert("RGB")),
                }
                for d, crop in animal_crops(im, dets, self.crop_max_side)
            ]
            r["detector_model"] = self.detector.model_id
            r.pop("image", None)


def crop_species(row: dict[str, Any], det: dict[str, Any]) -> str:
    """What a crop shows: the detector's species, else the one species every listing of the photo gives."""
    if not det["full_frame"]:
        return str(det["species"])
    given = {t.get("species") or "unknown" for t in row.get("targets") or []}
    return given.pop() if len(given) == 1 else "unknown"


class EmbedStage(_Stage):
    """Crop vectors; with an ``attributes`` captioner, also the captions (it reuses this forward pass's logits)."""

    stage = "embed"

    def __init__(self, settings: Settings, actor_cpus: float, with_captions: bool) -> None:
        _set_threads(actor_cpus)
        from engine.models import load_captioner, load_embedder

        self.embedder = load_embedder(settings)
        self.captioner = load_captioner(settings, embedder=self.embedder) if with_captions else None

    def process(self, rows: list[dict[str, Any]]) -> None:
        from PIL import Image

        from engine.models import Detection

        flat = [(r, d) for r in rows for d in r["dets"]]
        crops = [Image.fromarray(d["crop"]) for _, d in flat]
        vectors, logits = self.embedder.embed_and_classify(crops, [crop_species(r, d) for r, d in flat])
        for (r, d), v in zip(flat, vectors, strict=True):
            d["embedding"] = v
            r["embed_model"] = self.embedder.model_id
            r["embed_dim"] = self.embedder.dim
        if self.captioner is not None:
            dets = [Detection(d["species"], d["confidence"], tuple(d["bbox"]), d["full_frame"]) for _, d in flat]
            use = logits if self.captioner.uses_embedder_logits else None
            for (r, d), (text, attrs) in zip(flat, self.captioner.caption(crops, dets, logits=use), strict=True):
                d["caption"], d["attributes"] = text, attrs
                r["caption_model"] = self.captioner.model_id
            for _, d in flat:
                d.pop("crop", None)


class CaptionStage(_Stage):
    stage = "caption"

    def __init__(self, settings: Settings, actor_cpus: float) -> None:
        _set_threads(actor_cpus)
        from engine.models import load_captioner

        self.captioner = load_captioner(settings)

    def process(self, rows: list[dict[str, Any]]) -> None:
        from PIL import Image

        from engine.models import Detection

        flat = [(r, d) for r in rows for d in r["dets"]]
        crops = [Image.fromarray(d["crop"]) for _, d in flat]
        dets = [Detection(d["species"], d["confidence"], tuple(d["bbox"]), d["full_frame"]) for _, d in flat]
        for (r, d), (text, attrs) in zip(flat, self.captioner.caption(crops, dets), strict=True):
            d["caption"], d["attributes"] = text, attrs
            r["caption_model"] = self.captioner.model_id
        for _, d in flat:
            d.pop("crop", None)


class TextStage(_Stage):
    """One text vector per (listing, detection): the caption first (it is short), then the listing description."""

    stage = "text"

    def __init__(self, settings: Settings, actor_cpus: float) -> None:
        _set_threads(actor_cpus)
        from engine.models import load_text_embedder

        self.text = load_text_embedder(settings)

    def process(self, rows: list[dict[str, Any]]) -> None:
        jobs = []
        for r in rows:
            for d in r["dets"]:
                d.pop("crop", None)
                d["text_embeddings"] = {}
                for t in r["targets"]:
                    caption = d.get("caption") or ""
                    text = f"{caption}. {t.get('description') or ''}".strip(" .") or caption
                    jobs.append((d, t["photo_key"], text))
        vectors = self.text.embed([j[2] for j in jobs])
        for (d, key, _), v in zip(jobs, vectors, strict=True):
            d["text_embeddings"][key] = v
        for r in rows:
            r["text_model"] = self.text.model_id
            r["text_dim"] = self.text.dim


def model_stages(prof: dict[str, Any]) -> list[tuple[type[_Stage], dict[str, Any]]]:
    """The model stages of a profile, in order, with their extra constructor arguments: a VLM captioner runs as its
    own stage; an ``attributes`` captioner reuses the embedder's forward pass inside the embed stage."""
    vlm = prof["captioner"].get("kind") != "attributes"
    return [
        (DetectStage, {}),
        (EmbedStage, {"with_captions": not vlm}),
        *([(CaptionStage, {})] if vlm else []),
        (TextStage, {}),
    ]


def batch_rows(settings: Settings, prof: dict[str, Any]) -> int:
    """Photos per batch, the same for every stage (the detector's batch size, else ``enrich.batch_size``)."""
    return max(1, int(prof["detector"].get("batch_size") or settings.enrich.batch_size))


def decode_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments of :func:`decode_batch` from the settings."""
    return {
        "max_side": settings.enrich.max_side,
        "max_pixels": settings.crawl.max_image_pixels,
        "storage_options": settings.storage_options,
    }
