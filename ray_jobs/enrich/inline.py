"""Small enrich runs in the calling process: the pipeline's own stages, called in order on each batch, without Ray.

Why: a Ray Data run pays for Ray itself and for one actor pool per model stage before its first photo (53 s before
the demo's first result; ``bench enrich``: 1.9 photos/s end to end against 7.9 steady). A scheduler round that
brings a handful of photos would pay that every round. Runs of at most ``enrich.inline_max_photos`` distinct images
therefore call the same stage objects (:mod:`.stages`: decode, detect, embed, [caption], text) one after the other
here. The stage objects are built once per process and kept, and the models they load are cached per process by
:mod:`engine.models`, so a long-lived ``homeward schedule`` loads its models in the first round and reuses them in
every later one.

Trade-off: the stages run one after the other on this process's threads, with no overlap between decoding and the
models and no spreading over a cluster; above the threshold the actor pool's steady rate wins.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from engine.config import Settings
from ray_jobs.enrich.stages import batch_rows, decode_batch, decode_options, model_stages, unpack

#: built stage chains, by profile and models folder: they hold loaded models and stay for the process's life
_CHAINS: dict[str, list[Callable[[dict[str, Any]], dict[str, Any]]]] = {}


def _threads(settings: Settings) -> float:
    return float(settings.ray.num_cpus or os.cpu_count() or 1)


def stage_chain(settings: Settings, prof: dict[str, Any]) -> list[Callable[[dict[str, Any]], dict[str, Any]]]:
    """The profile's model stages, built on first use in this process and reused after."""
    key = json.dumps([prof, settings.models_dir], sort_keys=True, default=str)
    if key not in _CHAINS:
        threads = _threads(settings)
        _CHAINS[key] = [cls(settings=settings, actor_cpus=threads, **extra) for cls, extra in model_stages(prof)]
    return _CHAINS[key]


def run_inline(settings: Settings, prof: dict[str, Any], items: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Enrich ``items`` (the pipeline's work items) here, batch by batch; yields each batch's finished rows."""
    chain = stage_chain(settings, prof)
    size = batch_rows(settings, prof)
    options = decode_options(settings)
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        batch = {key: np.array([item[key] for item in chunk], dtype=object) for key in ("photo_id", "uri", "targets")}
        batch = decode_batch(batch, **options)
        for stage in chain:
            batch = stage(batch)
        yield unpack(batch)
