"""``homeward train``: fine-tune the re-identification embedder on identity folders (see :mod:`engine.train.loop`)."""

from __future__ import annotations

from typing import Any

from engine.train.checkpoint import load_reid_checkpoint
from engine.train.recipes import RECIPES, Recipe, get_recipe

__all__ = ["RECIPES", "Recipe", "get_recipe", "load_reid_checkpoint", "train"]


def train(
    settings: Any,
    images_dir: str,
    *,
    recipe: str = "blocks3-pca-degrade",
    out: str | None = None,
    epochs: int = 30,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_minutes: float = 30.0,
    batch_identities: int = 16,
    images_per_identity: int = 4,
    distributed: bool = False,
) -> dict[str, Any]:
    """Fine-tune the profile's pretrained image embedder (its `train_from` profile's, when the profile's own embedder is
    already fine-tuned, as `cpu`'s is) on identity folders; validate on held-out identities each epoch.

    Args:
        images_dir: one sub-folder of photos per animal identity (e.g. ../shared/data/dogfacenet/images); several
            folders separated by ":" train together, split and validated per folder and species
        recipe: a named recipe of engine/train/recipes.py (blocks3-pca-degrade, top-only, ...) or a recipe file
        out: checkpoint folder to write (default <data_dir>/models/reid-<recipe>-<time>)
        epochs: length of the cosine schedule; early stopping and max_minutes may stop sooner
        val_fraction: share of identities held out for validation (identity-disjoint)
        seed: seed of the split, the sampler and the degradations
        max_minutes: wall-clock budget; no epoch starts that would end past it
        batch_identities: P, identities per batch
        images_per_identity: K, images per identity per batch
        distributed: run the same loop under Ray Train (TorchTrainer; GPUs when the cluster has them)
    """
    kwargs = dict(
        out=out,
        epochs=epochs,
        val_fraction=val_fraction,
        seed=seed,
        max_minutes=max_minutes,
        batch_identities=batch_identities,
        images_per_identity=images_per_identity,
    )
    chosen = get_recipe(recipe)
    if distributed:
        from engine.train.distributed import train_distributed

        return train_distributed(settings, images_dir, chosen, **kwargs)
    from engine.train.loop import run

    return run(settings, images_dir, chosen, **kwargs)
