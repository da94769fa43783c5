"""Named fine-tuning recipes: plain config records, never code branches.

A recipe says *how* to fine-tune the profile's image embedder (which model is the profile's business): what is
frozen, what head sits on top and how it starts, which loss, how fast, which augmentations. ``homeward train
--recipe NAME`` picks one; the loop reads only these fields.

Why these defaults (issue 6): a freshly initialised projection head trained with batch-hard triplets made the
validation EER *worse* (4.8% → 7.7%): the random head throws the pretrained geometry away and the small identity
set cannot rebuild it. What helped: keep the pretrained geometry at step 0 (no head, or a head initialised from a PCA
of the pretrained features), keep BatchNorm running statistics frozen (batches of 16 identities are not the
statistics the network was trained with), low learning rates, and freeze the early blocks (generic texture
filters) — which also lets the loop cache their activations once and train only the top.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    train: bool = True
    """False: no training at all; the checkpoint is the pretrained model (a reference point)."""
    # --- what trains
    trainable_from: int = 3
    """Index of the first trainable stage block (``model.blocks[i]`` / ``layer{i+1}``); earlier stages are frozen.
    0 trains everything after the stem; a value past the last block trains only the tail (conv head) and head."""
    freeze_bn: bool = True
    """BatchNorm layers stay in eval mode: running statistics never change (affine weights still train)."""
    cache_at: int = 3
    """Stage block whose *input* is cached (≤ ``trainable_from``): recipes sharing it share the on-disk cache."""
    cache_frozen: bool = True
    """Run the frozen stages once per image view and cache their activations (fp16); epochs then cost only the
    trainable top. Image-level augmentation is then limited to the cached views."""
    # --- head
    head: Literal["none", "pca", "random"] = "none"
    head_dim: int = 512
    """Output dim of a ``pca``/``random`` head (``pca`` caps it at the feature dim)."""
    # --- loss
    loss: Literal["subcenter_arcface", "triplet", "arcface_triplet"] = "subcenter_arcface"
    margin: float = 0.2
    """ArcFace additive angular margin (radians) or triplet margin (cosine distance)."""
    scale: float = 30.0
    subcenters: int = 3
    proxy_init: Literal["class_mean", "random"] = "class_mean"
    """ArcFace class centres start at each training identity's mean pretrained embedding (no random head)."""
    triplet_weight: float = 1.0
    # --- optimisation
    lr: float = 1e-4
    """Backbone learning rate (AdamW)."""
    head_lr: float = 1e-3
    proxy_lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    patience: int = 3
    """Early stopping: epochs without a better validation score before stopping."""
    keep_best: bool = True
    """Save the best validation epoch's weights (False: the last epoch's)."""
    select_on: Literal["eer", "eer_mean"] = "eer_mean"
    """Validation score to minimise: clean EER, or the mean of clean and degraded EER (when degradation exists)."""
    # --- augmentation (image-level views, cached when ``cache_frozen``)
    views: tuple[str, ...] = ("clean", "flip", "degrade")
    """Views of each training image: ``clean``, ``flip`` (horizontal), ``degrade`` (lost/found-style, seeded,
    :mod:`engine.degrade`). Each step draws one view per sampled image."""
    feature_flip: bool = False
    """Also flip cached activations horizontally at random (a cheap, approximate extra flip augmentation)."""
    # --- inference
    tta_flip: bool = False
    """Report metrics with test-time flip averaging as well (the deployed embedder does not flip)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            name="baseline-frozen",
            description="No training: the pretrained embedder as is (the reference every recipe is compared with).",
            train=False,
            views=("clean",),
        ),
        Recipe(
            name="blocks3-pca-degrade",
            description="Recommended, the measured best (engine/train/README.md, run7): blocks 3-6 and the conv head "
            "train on cached block-2 output, a full-rank PCA-initialised head, BatchNorm statistics frozen, sub-center "
            "ArcFace with class-mean centres, clean/flip/degraded views, low LR, selection on clean EER.",
            head="pca",
            head_dim=1280,
            trainable_from=3,
            head_lr=3e-4,
            select_on="eer",
            patience=6,
        ),
        Recipe(
            name="pca-head-frozen-bn",
            description="As blocks3-pca-degrade without a head (the backbone's pooled features are the embedding), "
            "selecting on the mean of clean and degraded EER.",
            head="none",
            trainable_from=3,
            loss="subcenter_arcface",
        ),
        Recipe(
            name="pca-head-512",
            description="As pca-head-frozen-bn, with a 512-d projection head initialised from a PCA of the pretrained "
            "training features (starts exactly as the centred, truncated pretrained geometry).",
            head="pca",
            head_dim=512,
            trainable_from=3,
        ),
        Recipe(
            name="top-only",
            description="Cheapest: only the last stage, conv head and BN affines train (blocks 0-4 frozen, cached).",
            head="none",
            trainable_from=5,
            lr=2e-4,
        ),
        Recipe(
            name="triplet-random-head",
            description="The known-bad quick recipe, for comparison: random 512-d head, batch-hard triplets, BN in "
            "train mode, everything after the stem trains, no cache, clean+flip views.",
            head="random",
            head_dim=512,
            trainable_from=0,
            freeze_bn=False,
            cache_frozen=False,
            loss="triplet",
            margin=0.3,
            lr=3e-4,
            head_lr=3e-4,
            views=("clean", "flip"),
            select_on="eer",
        ),
    )
}


def get_recipe(ref: str, /, **overrides: Any) -> Recipe:
    """A named recipe, or a YAML/JSON file of field overrides on one (``base: NAME`` or another recipe file,
    relative to this one; default ``pca-head-frozen-bn``), with ``overrides`` on top. Unknown fields are refused."""
    from pathlib import Path

    import yaml

    from engine.errors import HomewardError

    if ref not in RECIPES and ref.endswith((".yaml", ".yml", ".json")) and Path(ref).is_file():
        spec = yaml.safe_load(Path(ref).read_text()) or {}
        if not isinstance(spec, dict):
            raise HomewardError(f"recipe file {ref} must hold a mapping of recipe fields")
        base = str(spec.pop("base", "pca-head-frozen-bn"))
        if base not in RECIPES and (Path(ref).parent / base).is_file():  # a base file named relative to this one
            base = str(Path(ref).parent / base)
        spec.setdefault("name", Path(ref).stem)
        return get_recipe(base, **{**spec, **overrides})
    if ref not in RECIPES:
        raise HomewardError(f"unknown recipe {ref!r}; known: {', '.join(RECIPES)} (or a recipe YAML file)")
    fields = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise HomewardError(f"unknown recipe field(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    if "views" in overrides:
        overrides["views"] = tuple(overrides["views"])
    return dataclasses.replace(RECIPES[ref], **overrides) if overrides else RECIPES[ref]
