"""The enrich driver: selects the photos, streams them through the pipeline, writes the results and the run row."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
import uuid
from collections import Counter
from typing import Any

from tqdm import tqdm

from engine import progress, run_rows
from engine.config import Settings
from ray_jobs.enrich.inline import run_inline
from ray_jobs.enrich.pipeline import run_pipeline
from ray_jobs.enrich.select import select_photos, work_items
from ray_jobs.enrich.writer import DetectionWriter

log = logging.getLogger(__name__)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _progress(total: int) -> tqdm:
    """The driver's bar, one tick per photo the pipeline hands back (Ray's per-operator bars are off)."""
    return progress.bar(total, "enrich", "photo", log, disable=total == 0)


def _refresh_index(lance: Any, settings: Settings) -> dict[str, Any]:
    """The search index brought up to date with what this run wrote (:func:`engine.vector_index.refresh_index`). The
    detections are committed by now, and search scans rows the index lacks, so a failure here is reported, not
    raised: the next enrich retries it."""
    from engine.vector_index import refresh_index

    try:
        return refresh_index(lance, settings.search)
    except Exception as exc:  # any index failure leaves the run's data intact: reported, not raised
        log.warning("enrich: vector index not refreshed: %s", exc)
        return {"action": "failed", "error": f"{type(exc).__name__}: {exc}"[:500]}


class _Tally:
    """What a run's result rows add up to: statuses, failure reasons, the models that ran, detections written, and
    when the first and last rows came (the steady-state rate leaves out the first batch: actor start-up)."""

    def __init__(self, models: dict[str, Any], t0: float) -> None:
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.models = models
        self.detections = 0
        self.t0 = t0
        self.first_row_s: float | None = None
        self.t_first = self.t_last = 0.0
        self.rows_after_first = 0

    def batch(self, rows: list[dict[str, Any]], writer: DetectionWriter, bar: Any) -> None:
        now = time.perf_counter()
        if self.first_row_s is None:
            self.first_row_s, self.t_first = now - self.t0, now
        else:
            self.rows_after_first, self.t_last = self.rows_after_first + len(rows), now
        for row in rows:
            st, n = writer.add(row)
            self.counts[st] += len(row["targets"])
            self.detections += n
            if st == "failed":
                self.errors[str(row.get("error") or "unknown").split(":", 1)[0]] += len(row["targets"])
            for key in ("detector_model", "embed_model", "caption_model", "text_model"):
                if row.get(key):
                    self.models[key] = row[key]
            if row.get("embed_dim"):
                self.models["embed_dim"], self.models["text_dim"] = int(row["embed_dim"]), int(row["text_dim"])
            bar.update(1)

    def rates(self) -> dict[str, float | None]:
        steady = self.t_last > self.t_first
        return {
            "first_result_s": round(self.first_row_s, 3) if self.first_row_s is not None else None,
            "steady_images_per_s": round(self.rows_after_first / (self.t_last - self.t_first), 3) if steady else None,
        }


def _run_batches(settings: Settings, prof: dict[str, Any], lance: Any, todo: Any, run_id: str,
                 writer: DetectionWriter, tally: _Tally) -> bool:  # fmt: skip
    """Enrich ``todo`` in this process (small runs) or on Ray; returns whether it ran in this process."""
    import ray

    from engine.runtime import cluster_gpus, ray_session

    items = work_items(lance, todo)
    inline = len(items) <= settings.enrich.inline_max_photos
    log.info(
        "enrich %s: %d photo rows (%d distinct images), profile %s, %s",
        run_id,
        todo.num_rows,
        len(items),
        prof["name"],
        "in this process" if inline else "on Ray",
    )
    session = contextlib.nullcontext() if inline else ray_session(settings)
    with session, _progress(len(items)) as bar:
        batches = (
            run_inline(settings, prof, items) if inline else run_pipeline(settings, prof, items, cluster_gpus(), ray)
        )
        for rows in batches:
            tally.batch(rows, writer, bar)
    return inline


def enrich(
    settings: Settings, *, limit: int | None = None, retry_failed: bool = True, profile: str | None = None
) -> dict:
    """Detect, embed and caption every photo not yet enriched, as a Ray Data job; returns the run's counts.

    Runs of at most ``enrich.inline_max_photos`` distinct images skip Ray and run the same stages in this process
    (:mod:`ray_jobs.enrich.inline`; the result's ``mode`` says which ran).

    Args:
        limit: enrich at most this many photos (rows of the photos table) this run
        retry_failed: also retry photos whose enrichment failed before
        profile: model profile for this run (default: enrich.profile)
    """
    from engine import analyst
    from engine.models import load_profile
    from engine.models.factory import embedder_id
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
        "parameters": {"limit": limit, "retry_failed": retry_failed, "profile": prof["name"]},
    }
    with runs.write() as con:
        run_rows.start_enrich(con, run["run_id"], started, run["parameters"])
    todo = select_photos(lance, retry_failed, limit, embed_model)
    tally = _Tally({"profile": prof["name"], "embed_model": embed_model}, t0)
    writer = DetectionWriter(lance)
    inline = False
    message = None
    status = "ok"
    try:
        if todo.num_rows:
            inline = _run_batches(settings, prof, lance, todo, run["run_id"], writer, tally)
            writer.flush()
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        message = f"{type(exc).__name__}: {exc}"[:1000]
        with contextlib.suppress(Exception):
            writer.flush()
        raise
    finally:
        counts = tally.counts
        run.update(
            finished=_now(),
            status=status,
            models=tally.models,
            photos=int(sum(counts.values())),
            ok=counts["ok"],
            no_animal=counts["no_animal"],
            failed=counts["failed"],
            detections=tally.detections,
            errors_by_reason=dict(tally.errors),
            duration_s=round(time.perf_counter() - t0, 3),
            message=message,
        )
        with contextlib.suppress(Exception) if status != "ok" else contextlib.nullcontext(), runs.write() as con:
            run_rows.finish_enrich(con, run)
        published = analyst.publish(settings)
    return {
        **published,
        "vector_index": _refresh_index(lance, settings),
        "run_id": run["run_id"],
        "status": status,
        "photos": run["photos"],
        "ok": run["ok"],
        "no_animal": run["no_animal"],
        "failed": run["failed"],
        "detections": tally.detections,
        "errors_by_reason": dict(tally.errors),
        "models": tally.models,
        "duration_s": run["duration_s"],
        "mode": "inline" if inline else "ray",
        "images_per_s": round(run["photos"] / run["duration_s"], 3) if run["duration_s"] else None,
        **tally.rates(),
    }
