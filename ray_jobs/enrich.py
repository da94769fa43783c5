"""``homeward enrich``: photos → animal detections with image vectors, captions and text vectors (Ray Data).

Pipeline (one Ray Data dataset, streaming; every stage passes rows it cannot handle through with a reason)::

    photos to do   → decode tasks     → detector actors  → embedder actors      → [captioner actors] → text actors
    (driver query)   fetch, EXIF,       every cat/dog      crop → vector, and     only for a VLM       listing text +
                     convert, resize    box ≥ threshold,   attribute captions     captioner            caption → vector
                                        else full frame    from the same pass
    → driver: upserts detections and photo statuses in batches of ~1000

* **What is done.** Photos with ``status = 'ok'`` (fetched) whose ``enrich_status`` is null or ``pending``, those
  ``failed`` when ``retry_failed``, and finished photos that have no detection of the current embedder yet (a new
  profile enriches everything again without a flag). The same image in two listings is decoded and run once.
* **Statuses.** ``ok`` (≥ 1 animal), ``no_animal`` (the detector found none: one ``full_frame=True`` detection of the
  whole photo, species ``unknown``, is still written so a close-up the detector missed can match), ``failed`` with
  ``enrich_error`` = ``reason: detail`` (reasons: ``fetch_failed``, the image reasons of :mod:`engine.images`,
  ``model_error``). One bad photo never stops the job; a rerun retries failures and skips finished photos.
* **Ids.** ``detection_id`` = hash(photo_key, box index, embed model): stable across reruns, distinct per listing
  (``photo_key`` = listing + URL) and per model, so vectors of two models never overwrite or mix.
* **Resources.** Model actors ask ``enrich.actor_cpus`` CPUs (fractional by default: actors that hold every core
  starve Ray Data's decode tasks and the job hangs) and ``enrich.actor_gpus`` GPUs when the cluster has any. torch
  gets one thread per whole CPU an actor holds.
* **Writes.** Only the driver writes: detection rows and photo statuses are buffered and upserted ~1000 at a time
  (few large LanceDB versions, no writer contention). An ``enrich_runs`` row records counts, errors by reason, the
  models (ids and dimensions) and the duration.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import pickle
import sys
import time
import uuid
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa

from engine import ids, schema
from engine.config import Settings
from engine.models.crops import CROP_MAX_SIDE

log = logging.getLogger(__name__)

WRITE_BATCH = 1000


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def detection_id(photo_key: str, index: int, embed_model: str) -> str:
    return ids.content_hash("detection", photo_key, index, embed_model)


# ------------------------------------------------------------------------------------------------ row transport
# Rows travel between stages as one pickled dict each (column ``row``): images, boxes and vectors of varying shape
# in one column Ray Data never has to infer a schema for.


def _unpack(batch: dict[str, Any]) -> list[dict[str, Any]]:
    return [pickle.loads(b) for b in batch["row"]]


def _pack(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"row": np.array([pickle.dumps(r, protocol=5) for r in rows], dtype=object)}


def _fail(row: dict[str, Any], reason: str, detail: str) -> None:
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
            _fail(row, "fetch_failed", f"{type(exc).__name__}: {exc}")
            out.append(row)
            continue
        try:
            im = decode_image(data, max_side=max_side, max_pixels=max_pixels)
        except ImageError as exc:
            _fail(row, exc.reason, exc.detail)
            out.append(row)
            continue
        except Exception as exc:
            _fail(row, "corrupt_image", f"{type(exc).__name__}: {exc}")
            out.append(row)
            continue
        ow, oh = im.info.get("original_size", im.size)
        row["image"] = to_array(im)
        row["scale"] = (ow / im.width, oh / im.height)
        row["size"] = (int(ow), int(oh))
        out.append(row)
    return _pack(out)


# ------------------------------------------------------------------------------------------------ model actors


class _Stage:
    stage = "?"

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        rows = _unpack(batch)
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
                        _fail(r, "model_error", f"{self.stage}: {type(exc1).__name__}: {exc1}")
        return _pack(rows)

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
        vectors, logits = self.embedder.embed_and_classify(crops)
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


# ------------------------------------------------------------------------------------------------ driver


def _select(lance: Any, settings: Settings, retry_failed: bool, limit: int | None, embed_model: str | None) -> pa.Table:
    if not lance.exists("photos"):
        return pa.table({})
    cols = ["photo_key", "photo_id", "listing_id", "uri", "status", "enrich_status"]
    rows = lance.read("photos", where="status = 'ok' AND uri IS NOT NULL AND photo_id IS NOT NULL", columns=cols)
    if rows.num_rows == 0:
        return rows
    st = rows.column("enrich_status").to_pylist()
    want = [s in (None, "", "pending") or (retry_failed and s == "failed") for s in st]
    if embed_model and lance.exists("detections"):
        done = {
            k
            for k in lance.read(
                "detections",
                where=f"embed_model = '{embed_model.replace(chr(39), chr(39) * 2)}'",
                columns=["photo_key"],
            )
            .column("photo_key")
            .to_pylist()
        }
        keys = rows.column("photo_key").to_pylist()
        want = [w or (s in ("ok", "no_animal") and k not in done) for w, s, k in zip(want, st, keys, strict=True)]
    elif embed_model:
        want = [w or s in ("ok", "no_animal") for w, s in zip(want, st, strict=True)]
    rows = rows.filter(pa.array(want))
    rows = rows.sort_by([("photo_id", "ascending"), ("photo_key", "ascending")])
    if limit is not None:
        rows = rows.slice(0, max(0, int(limit)))
    return rows


def _descriptions(lance: Any, listing_ids: set[str]) -> dict[str, str]:
    if not listing_ids or not lance.exists("listings"):
        return {}
    data = lance.read("listings", columns=["listing_id", "description"])
    return {
        lid: desc or ""
        for lid, desc in zip(data.column("listing_id").to_pylist(), data.column("description").to_pylist(), strict=True)
        if lid in listing_ids
    }


class _Writer:
    """Buffers detection rows and photo statuses; upserts them ~``WRITE_BATCH`` at a time (driver only)."""

    def __init__(self, lance: Any, run_started: dt.datetime) -> None:
        self.lance = lance
        self.detections: list[dict[str, Any]] = []
        self.photos: list[dict[str, Any]] = []
        self.dims: tuple[int, int] | None = None
        self.written = 0
        self.started = run_started

    def add(self, row: dict[str, Any]) -> tuple[str, int]:
        now = _now()
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


def _record_run(runs: Any, row: dict[str, Any], insert: bool) -> None:
    with runs.write() as con:
        if insert:
            con.execute(
                "INSERT INTO enrich_runs (run_id, started, status, parameters) VALUES (?, ?, ?, ?)",
                [row["run_id"], row["started"], row["status"], json.dumps(row["parameters"])],
            )
        else:
            con.execute(
                """UPDATE enrich_runs SET finished = ?, status = ?, models = ?, photos = ?, ok = ?, no_animal = ?,
                   failed = ?, detections = ?, errors_by_reason = ?, duration_s = ?, message = ? WHERE run_id = ?""",
                [
                    row["finished"],
                    row["status"],
                    json.dumps(row["models"]),
                    row["photos"],
                    row["ok"],
                    row["no_animal"],
                    row["failed"],
                    row["detections"],
                    json.dumps(row["errors_by_reason"]),
                    row["duration_s"],
                    row.get("message"),
                    row["run_id"],
                ],
            )


def _progress(total: int) -> Any:
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc="enrich", unit="photo", file=sys.stderr, disable=total == 0, mininterval=2.0)
    except ImportError:  # pragma: no cover
        return None


def enrich(
    settings: Settings, *, limit: int | None = None, retry_failed: bool = True, profile: str | None = None
) -> dict:
    """Detect, embed and caption every photo not yet enriched, as a Ray Data job; returns the run's counts.

    Args:
        limit: enrich at most this many photos (rows of the photos table) this run
        retry_failed: also retry photos whose enrichment failed before
        profile: model profile for this run (default: enrich.profile)
    """
    import ray

    from engine import analyst
    from engine.models import load_profile
    from engine.models.factory import embedder_id
    from engine.runtime import cluster_gpus, ray_session
    from engine.storage import open_stores

    if profile:
        settings = settings.with_overrides({"enrich": {"profile": profile}}, origin="enrich(profile=...)")
    prof = load_profile(settings)  # bad profile or missing weights: fail before Ray starts
    embed_model = embedder_id(prof["embedder"], settings)
    lance, runs, _ = open_stores(settings)
    started = _now()
    t0 = time.perf_counter()
    run: dict[str, Any] = {
        "run_id": f"enrich-{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}",
        "started": started,
        "status": "running",
        "parameters": {"limit": limit, "retry_failed": retry_failed, "profile": prof["name"]},
    }
    _record_run(runs, run, insert=True)
    todo = _select(lance, settings, retry_failed, limit, embed_model)
    counts: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    models: dict[str, Any] = {"profile": prof["name"], "embed_model": embed_model}
    writer = _Writer(lance, started)
    n_dets = 0
    first_row_s: float | None = None
    t_first = t_last = 0.0
    rows_after_first = 0
    message = None
    status = "ok"
    try:
        if todo.num_rows:
            descriptions = _descriptions(lance, set(todo.column("listing_id").to_pylist()))
            groups: dict[str, dict[str, Any]] = {}
            for r in todo.to_pylist():
                g = groups.setdefault(r["photo_id"], {"photo_id": r["photo_id"], "uri": r["uri"], "targets": []})
                g["targets"].append(
                    {
                        "photo_key": r["photo_key"],
                        "listing_id": r["listing_id"],
                        "description": descriptions.get(r["listing_id"], ""),
                    }
                )
            items = [
                {"photo_id": g["photo_id"], "uri": g["uri"], "targets": json.dumps(g["targets"])}
                for g in groups.values()
            ]
            log.info(
                "enrich %s: %d photo rows (%d distinct images), profile %s",
                run["run_id"],
                todo.num_rows,
                len(items),
                prof["name"],
            )
            with ray_session(settings):
                for rows in _run_pipeline(settings, prof, items, cluster_gpus(), ray):
                    now = time.perf_counter()
                    if first_row_s is None:  # steady-state rate: batches after the first one
                        first_row_s, t_first = now - t0, now
                    else:
                        rows_after_first, t_last = rows_after_first + len(rows), now
                    for row in rows:
                        st, n = writer.add(row)
                        counts[st] += len(row["targets"])
                        n_dets += n
                        if st == "failed":
                            errors[str(row.get("error") or "unknown").split(":", 1)[0]] += len(row["targets"])
                        for key in ("detector_model", "embed_model", "caption_model", "text_model"):
                            if row.get(key):
                                models[key] = row[key]
                        if row.get("embed_dim"):
                            models["embed_dim"], models["text_dim"] = int(row["embed_dim"]), int(row["text_dim"])
                        _tick()
            writer.flush()
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        message = f"{type(exc).__name__}: {exc}"[:1000]
        with contextlib.suppress(Exception):
            writer.flush()
        raise
    finally:
        run.update(
            finished=_now(),
            status=status,
            models=models,
            photos=int(sum(counts.values())),
            ok=counts["ok"],
            no_animal=counts["no_animal"],
            failed=counts["failed"],
            detections=n_dets,
            errors_by_reason=dict(errors),
            duration_s=round(time.perf_counter() - t0, 3),
            message=message,
        )
        with contextlib.suppress(Exception) if status != "ok" else contextlib.nullcontext():
            _record_run(runs, run, insert=False)
        published = analyst.publish(settings)
    return {
        **published,
        "run_id": run["run_id"],
        "status": status,
        "photos": run["photos"],
        "ok": run["ok"],
        "no_animal": run["no_animal"],
        "failed": run["failed"],
        "detections": n_dets,
        "errors_by_reason": dict(errors),
        "models": models,
        "duration_s": run["duration_s"],
        "images_per_s": round(run["photos"] / run["duration_s"], 3) if run["duration_s"] else None,
        # steady state: images after the first result over the time they took (excludes actor start-up)
        "first_result_s": round(first_row_s, 3) if first_row_s is not None else None,
        "steady_images_per_s": round(rows_after_first / (t_last - t_first), 3) if t_last > t_first else None,
    }


_BAR: list[Any] = []


def _tick() -> None:
    if _BAR and _BAR[0] is not None:
        _BAR[0].update(1)


DECODE_CPUS = 0.25


def actor_cpu_share(requested: float, actors: int, cluster_cpus: float) -> float:
    """CPUs each of ``actors`` model actors reserves: ``requested``, unless together they would leave no room for the
    decode tasks (the pipeline then waits forever), in which case they split what is left after one decode task.
    Only the reservation shrinks; each actor still runs ``requested`` torch threads."""
    room = cluster_cpus - DECODE_CPUS
    if cluster_cpus <= 0 or requested * actors <= room:
        return requested
    share = max(room / actors, 0.05)
    log.info("enrich: %d model actors of %.2f CPUs would fill %.1f CPUs; each reserves %.2f", actors, requested,
             cluster_cpus, share)  # fmt: skip
    return share


def _run_pipeline(settings: Settings, prof: dict[str, Any], items: list[dict[str, Any]], gpus: float, ray: Any) -> Any:
    """Build and stream the Ray Data pipeline; yields lists of finished rows (dicts) as batches complete."""
    from ray.data import ActorPoolStrategy, DataContext

    cfg = settings.enrich
    ctx = DataContext.get_current()
    saved_bars = ctx.enable_progress_bars
    ctx.enable_progress_bars = False  # our own bar counts photos; Ray's per-operator bars flood logs
    actor_gpus = (cfg.actor_gpus or 0.25) if gpus > 0 else 0.0
    cpus = float(cfg.actor_cpus)
    pool = ActorPoolStrategy(min_size=1, max_size=max(1, int(cfg.actors)))

    # One row batch (photos) for every stage: a later stage with a bigger batch would wait for rows to pile up and
    # the pipeline would stop streaming. Each model still batches its own inputs (crops, texts) internally.
    rows = max(1, int(prof["detector"].get("batch_size") or cfg.batch_size))
    n_blocks = max(1, min(len(items), math.ceil(len(items) / rows)))
    ds = ray.data.from_items(items, override_num_blocks=n_blocks)
    ds = ds.map_batches(
        decode_batch,
        fn_kwargs={
            "max_side": cfg.max_side,
            "max_pixels": settings.crawl.max_image_pixels,
            "storage_options": settings.storage_options,
        },
        batch_size=rows,
        batch_format="numpy",
        num_cpus=DECODE_CPUS,
    )
    vlm = prof["captioner"].get("kind") != "attributes"
    stages: list[tuple[type, dict[str, Any]]] = [
        (DetectStage, {}),
        (EmbedStage, {"with_captions": not vlm}),
        *([(CaptionStage, {})] if vlm else []),
        (TextStage, {}),
    ]
    share = actor_cpu_share(cpus, len(stages) * max(1, int(cfg.actors)), float(ray.cluster_resources().get("CPU", 0.0)))
    for stage, extra in stages:
        ds = ds.map_batches(
            stage,
            fn_constructor_kwargs={"settings": settings, "actor_cpus": cpus, **extra},
            batch_size=rows,
            batch_format="numpy",
            num_cpus=share,
            num_gpus=actor_gpus,
            compute=pool,
        )
    bar = _progress(len(items))
    _BAR[:] = [bar]
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
            yield _unpack(batch)
    finally:
        ctx.enable_progress_bars = saved_bars
        if bar is not None:
            bar.close()
        _BAR[:] = []


__all__ = ["detection_id", "enrich"]
