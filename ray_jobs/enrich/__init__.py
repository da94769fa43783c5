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

Modules: :mod:`.select` (which photos to do), :mod:`.stages` (row transport, the decode task, the model actors),
:mod:`.pipeline` (the Ray Data pipeline and its CPU shares), :mod:`.writer` (the driver's batched writes),
:mod:`.job` (the driver, :func:`enrich`).
"""

from ray_jobs.enrich.job import enrich
from ray_jobs.enrich.pipeline import DECODE_CPUS, actor_cpu_share
from ray_jobs.enrich.writer import detection_id

__all__ = ["DECODE_CPUS", "actor_cpu_share", "detection_id", "enrich"]
