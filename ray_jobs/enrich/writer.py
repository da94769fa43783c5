"""The enrich driver's writes: detection rows and photo statuses, buffered and upserted ~``WRITE_BATCH`` at a time.

Only the driver writes (no writer contention between actors), and in large batches: each upsert is one LanceDB
version, so a thousand rows a version keeps the table's history short without holding much in memory.

A detection row is always written whole, ``created_at`` stamped with the time of the write (a re-embedded photo's rows
keep their ``detection_id`` and get a new stamp): ``homeward match`` finds changed vectors by ``detection_id`` and
``created_at`` without reading them (``engine.scoring.incremental.side_fingerprints``), so no writer may change a
row's vectors and keep its stamp. Each vector is written with the model that made it (``embed_model``,
``text_model``): match tells which vectors a row has from those (``ray_jobs.match_vectors.read_rows``).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import numpy as np
import pyarrow as pa

from engine import ids, schema

WRITE_BATCH = 1000


def detection_id(photo_key: str, index: int, embed_model: str) -> str:
    """Stable across reruns, distinct per listing photo and per embedder (vectors of two models never mix)."""
    return ids.content_hash("detection", photo_key, index, embed_model)


class DetectionWriter:
    """Buffers detection rows and photo statuses; upserts them ~``WRITE_BATCH`` at a time (driver only)."""

    def __init__(self, lance: Any) -> None:
        self.lance = lance
        self.detections: list[dict[str, Any]] = []
        self.photos: list[dict[str, Any]] = []
        self.dims: tuple[int, int] | None = None
        self.written = 0

    def add(self, row: dict[str, Any]) -> tuple[str, int]:
        now = dt.datetime.now(dt.UTC)
        status = row["status"]
        n = 0
        if status != "failed":
            embed_model, text_model = row.get("embed_model"), row.get("text_model")
            if self.dims is None:
                self.dims = (int(row["embed_dim"]), int(row["text_dim"]))
                # an existing table of other dimensions: refuse now, not after a thousand photos of work
                self.lance.ensure("detections", schema.detections_schema(*self.dims))
            for t in row["targets"]:
                for i, d in enumerate(row["dets"]):
                    attrs = dict(d.get("attributes") or {})
                    if row.get("caption_model"):
                        attrs["captioner"] = row["caption_model"]
                    self.detections.append(
                        {
                            "detection_id": detection_id(t["photo_key"], i, embed_model),
                            "photo_id": row["photo_id"],
                            "photo_key": t["photo_key"],
                            "listing_id": t["listing_id"],
                            "species": d["species"],
                            "confidence": float(d["confidence"]),
                            "bbox": [float(v) for v in d["bbox"]],
                            "full_frame": bool(d["full_frame"]),
                            "embedding": np.asarray(d["embedding"], np.float32),
                            "embed_model": embed_model,
                            "caption": d.get("caption"),
                            "attributes": json.dumps(attrs, sort_keys=True, default=str),
                            "text_embedding": np.asarray(d["text_embeddings"][t["photo_key"]], np.float32),
                            "text_model": text_model,
                            "detector_model": row.get("detector_model"),
                            "created_at": now,
                            "status": "ok",
                            "error": None,
                        }
                    )
                    n += 1
        for t in row["targets"]:
            self.photos.append(
                {
                    "photo_key": t["photo_key"],
                    "enrich_status": status,
                    "enrich_error": row.get("error"),
                    "enriched_at": now,
                }
            )
        if len(self.detections) >= WRITE_BATCH or len(self.photos) >= WRITE_BATCH:
            self.flush()
        return status, n

    def flush(self) -> None:
        if self.detections:
            image_dim, text_dim = self.dims  # type: ignore[misc]
            det_schema = schema.detections_schema(image_dim, text_dim)
            table = pa.Table.from_pylist(self.detections, schema=det_schema)
            self.lance.upsert("detections", table, key="detection_id", table_schema=det_schema)
            self.written += table.num_rows
            self.detections = []
        if self.photos:  # partial-column upsert: only the enrich columns change, crawl columns stay as they are
            part = pa.Table.from_pylist(
                self.photos,
                schema=pa.schema(
                    [schema.PHOTOS.field(n) for n in ("photo_key", "enrich_status", "enrich_error", "enriched_at")]
                ),
            )
            table = self.lance.open("photos")
            table.merge_insert("photo_key").when_matched_update_all().execute(part)
            self.photos = []
