"""The Ray Data pipeline of an enrich run: decode tasks, then one actor pool per model stage, streamed to the driver.

Model actors reserve ``enrich.actor_cpus`` CPUs unless together they would leave no room for a decode task
(:func:`actor_cpu_share`): actors holding every core starve the decode tasks and the pipeline waits forever.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

from engine.config import Settings
from ray_jobs.enrich.stages import batch_rows, decode_batch, decode_options, model_stages, unpack

log = logging.getLogger(__name__)

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


def run_pipeline(
    settings: Settings, prof: dict[str, Any], items: list[dict[str, Any]], gpus: float, ray: Any
) -> Iterator[list[dict[str, Any]]]:
    """Build and stream the Ray Data pipeline; yields lists of finished rows (dicts) as batches complete."""
    from ray.data import ActorPoolStrategy, DataContext

    cfg = settings.enrich
    ctx = DataContext.get_current()
    saved_bars = ctx.enable_progress_bars
    ctx.enable_progress_bars = False  # the driver's own bar counts photos; Ray's per-operator bars flood logs
    actor_gpus = (cfg.actor_gpus or 0.25) if gpus > 0 else 0.0
    cpus = float(cfg.actor_cpus)
    pool = ActorPoolStrategy(min_size=1, max_size=max(1, int(cfg.actors)))

    # One row batch (photos) for every stage: a later stage with a bigger batch would wait for rows to pile up and
    # the pipeline would stop streaming. Each model still batches its own inputs (crops, texts) internally.
    rows = batch_rows(settings, prof)
    n_blocks = max(1, min(len(items), math.ceil(len(items) / rows)))
    ds = ray.data.from_items(items, override_num_blocks=n_blocks)
    ds = ds.map_batches(
        decode_batch,
        fn_kwargs=decode_options(settings),
        batch_size=rows,
        batch_format="numpy",
        num_cpus=DECODE_CPUS,
    )
    stages = model_stages(prof)
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
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
            yield unpack(batch)
    finally:
        ctx.enable_progress_bars = saved_bars
