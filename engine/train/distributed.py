"""``homeward train --distributed``: the same loop (:func:`engine.train.loop.run`) as a Ray Train worker.

Ray Train's ``TorchTrainer`` starts ``num_workers`` processes (one per GPU when the cluster has GPUs, else CPU
workers), sets up the process group, and each worker runs :func:`_worker`: the rank and device come from Ray, the
trainable module is wrapped for DDP by ``prepare_model``, per-epoch metrics go to ``ray.train.report``, and rank 0
writes the checkpoint folder (``out`` must be storage every worker's node can reach: a shared or mounted path).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from engine.errors import HomewardError
from engine.train.recipes import Recipe


def _worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch
    import torch

    from engine.train.loop import World, run

    ctx = ray.train.get_context()
    threads = int(config.get("threads") or 0)
    if threads:
        torch.set_num_threads(threads)
    device = ray.train.torch.get_device()
    world = World(
        rank=ctx.get_world_rank(),
        size=ctx.get_world_size(),
        device=str(device),
        report=ray.train.report,
        prepare=ray.train.torch.prepare_model,
    )
    result = run(config["settings"], config["images_dir"], config["recipe"], world=world, **config["kwargs"])
    flat = {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
    ray.train.report({**flat, "final": 1})


def train_distributed(
    settings: Any, images_dir: str, recipe: Recipe, *, out: str | None, num_workers: int | None = None, **kwargs: Any
) -> dict[str, Any]:
    """Run the training loop under Ray Train; GPUs are used when the Ray cluster has them."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from engine.runtime import cluster_gpus, ray_session
    from engine.train.loop import summarize

    out = str(Path(out or Path(settings.data_dir) / "models" / f"reid-{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"))
    with ray_session(settings):
        gpus = int(cluster_gpus())
        workers = num_workers or max(1, gpus)
        scaling = ScalingConfig(
            num_workers=workers,
            use_gpu=gpus > 0,
            resources_per_worker=None if gpus > 0 else {"CPU": 1},
        )
        storage = Path(settings.data_dir).resolve() / "ray_train"
        storage.mkdir(parents=True, exist_ok=True)
        trainer = TorchTrainer(
            _worker,
            train_loop_config={
                "settings": settings,
                "images_dir": os.pathsep.join(str(Path(d).resolve()) for d in str(images_dir).split(os.pathsep) if d),
                "recipe": recipe,
                "kwargs": {**kwargs, "out": out},
                "threads": 0 if gpus > 0 else 1,
            },
            scaling_config=scaling,
            run_config=RunConfig(name=f"homeward-train-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=str(storage)),
        )
        result = trainer.fit()
    meta_file = Path(out) / "homeward.json"
    if result.error is not None or not meta_file.is_file():
        raise HomewardError(f"distributed training wrote no checkpoint at {out}: {result.error}")
    summary = summarize(json.loads(meta_file.read_text()))
    return {**summary, "checkpoint": out, "distributed": True, "workers": workers, "use_gpu": gpus > 0}
