"""The fine-tuning loop: cache the frozen trunk, train the top on P×K batches, validate on held-out identities each
epoch (clean and degraded queries, the ``homeward eval`` protocol), stop early on validation EER, keep the best.

The same :func:`run` is the body of a Ray Train worker (``distributed=True``): Ray gives it a rank, a device and a
process group, :func:`ray.train.torch.prepare_model` wraps the trainable module for DDP, and only rank 0 writes the
checkpoint. On one CPU it runs as a plain function.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn
from tqdm import tqdm

from engine.degrade import degrade
from engine.errors import HomewardError
from engine.scoring.metrics import reid_metrics
from engine.train.data import PKSampler, Split, data_fingerprint, dataset_dirs, split_datasets
from engine.train.model import Criterion, ReIDNet, pca_head, random_head
from engine.train.recipes import Recipe

log = logging.getLogger(__name__)


@dataclass
class World:
    rank: int = 0
    size: int = 1
    device: str = "cpu"
    report: Callable[[dict[str, Any]], None] | None = None
    prepare: Callable[[nn.Module], nn.Module] | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0


# ------------------------------------------------------------------------------------------------ views & metrics


def view_image(path: Path, view: str, seed: int) -> Image.Image:
    """One training/validation view of an image: ``clean``, ``flip``, ``degrade`` (:func:`engine.degrade.degrade`,
    the lost/found degradations of ``homeward eval --degrade``) or ``degrade_flip``."""
    with Image.open(path) as im:
        img = im.convert("RGB")
    if view in ("degrade", "degrade_flip"):
        img = degrade(img, seed)
    if view in ("flip", "degrade_flip"):
        img = ImageOps.mirror(img)
    return img


PROTOCOL_KEYS = ("top1", "top5", "map", "eer", "auc")


def protocol_metrics(query: np.ndarray, gallery: np.ndarray, labels: Sequence[int]) -> dict[str, float]:
    """``homeward eval``'s leave-one-out protocol (:func:`engine.scoring.metrics.reid_metrics`), its five figures."""
    m = reid_metrics(query, gallery, np.asarray(labels))
    return {k: float(m[k]) for k in PROTOCOL_KEYS}


# ------------------------------------------------------------------------------------------------ encoding


class Encoder:
    """Pixels of image views → what the trainable top consumes (trunk activations, cached in fp16)."""

    def __init__(
        self,
        net: ReIDNet,
        prep: Callable[[list[Image.Image]], torch.Tensor],
        device: str,
        seed: int,
        cache_dir: Path | None = None,
        model_key: str = "",
    ):
        self.net, self.prep, self.device, self.seed = net, prep, device, seed
        self.cache_dir, self.model_key = cache_dir, model_key

    def pixels(self, paths: Sequence[Path], views: Sequence[str], idx: Sequence[int]) -> torch.Tensor:
        imgs = [view_image(paths[i], v, self.seed * 100_003 + i) for i, v in zip(idx, views, strict=True)]
        return self.prep(imgs)

    def trunk(self, paths: Sequence[Path], views: Sequence[str], idx: Sequence[int]) -> torch.Tensor:
        x = self.pixels(paths, views, idx).to(self.device)
        return self.net.trunk(x)

    def file(self, paths: Sequence[Path], view: str, cut: int) -> Path | None:
        """Where the activations of ``paths``' ``view`` at stage ``cut`` are kept (None: no cache folder)."""
        if self.cache_dir is None:
            return None
        h = hashlib.sha256(f"{self.model_key}|cut={cut}|{view}|seed={self.seed}".encode())
        for p in paths:
            h.update(str(p).encode())
        return self.cache_dir / f"{h.hexdigest()[:24]}.pt"

    @staticmethod
    def save(file: Path | None, acts: torch.Tensor) -> None:
        if file is None:
            return
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".{os.getpid()}.tmp")
        torch.save(acts, tmp)
        tmp.replace(file)

    def cache(self, paths: Sequence[Path], view: str, desc: str, batch: int = 32) -> torch.Tensor:
        """Trunk activations of every image's ``view`` (fp16), kept on disk under ``cache_dir`` keyed by model,
        cut, view, seed and the exact image list, so later runs of any recipe with the same cut reuse them."""
        file = self.file(paths, view, self.net.cut)
        if file is not None and file.is_file():
            return torch.load(file, weights_only=True)
        out = []
        was_training = self.net.training
        self.net.eval()
        for start in tqdm(range(0, len(paths), batch), desc=desc, unit="batch", leave=False):
            idx = list(range(start, min(start + batch, len(paths))))
            out.append(self.trunk(paths, [view] * len(idx), idx).to("cpu", torch.float16))
        self.net.train(was_training)
        acts = torch.cat(out)
        self.save(file, acts)
        return acts


@torch.no_grad()
def embed_cached(
    net: nn.Module, cache: torch.Tensor, device: str, pooled: bool = False, batch: int = 128
) -> np.ndarray:
    was_training = net.training
    net.eval()
    out = []
    for start in range(0, len(cache), batch):
        h = cache[start : start + batch].to(device, torch.float32)
        f = net.pooled(h) if pooled else net.top(h)
        out.append(torch.nn.functional.normalize(f.float(), dim=-1).cpu())
    net.train(was_training)
    return torch.cat(out).numpy()


def validate(
    net: ReIDNet,
    val: dict[str, torch.Tensor],
    labels: Sequence[int],
    device: str,
    *,
    pooled: bool = False,
    tta: bool = False,
    groups: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Clean and (when cached) degraded-query metrics on the validation identities; ``tta_*`` with flip averaging;
    with ``groups`` (one per image), ``by_group`` repeats clean and degraded figures within each group."""

    def emb(view: str) -> np.ndarray:
        return embed_cached(net, val[view], device, pooled=pooled)

    clean = emb("clean")
    degraded = emb("degrade") if "degrade" in val else None
    out: dict[str, Any] = _query_metrics(clean, degraded, labels)
    if tta and "flip" in val:

        def avg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            s = a + b
            return s / np.linalg.norm(s, axis=1, keepdims=True)

        clean_t = avg(clean, emb("flip"))
        out.update({f"tta_{k}": v for k, v in protocol_metrics(clean_t, clean_t, labels).items()})
        if "degrade_flip" in val:
            deg_t = avg(emb("degrade"), emb("degrade_flip"))
            out.update({f"tta_degraded_{k}": v for k, v in protocol_metrics(deg_t, clean_t, labels).items()})
    if groups is not None and len(set(groups)) > 1:
        g, lab = np.asarray(groups), np.asarray(labels)
        # a group of one animal has no different-animal pair to score
        scored = sorted(name for name in set(groups) if len(set(lab[g == name])) > 1)
        out["by_group"] = {
            name: _query_metrics(clean[g == name], None if degraded is None else degraded[g == name], lab[g == name])
            for name in scored
        }
    return out


def _query_metrics(clean: np.ndarray, degraded: np.ndarray | None, labels: Sequence[int]) -> dict[str, float]:
    out = protocol_metrics(clean, clean, labels)
    if degraded is not None:
        out.update({f"degraded_{k}": v for k, v in protocol_metrics(degraded, clean, labels).items()})
    return out


def _score(metrics: dict[str, Any], recipe: Recipe) -> float:
    """The validation score to minimise; with several groups, their mean (each data set and species counts alike,
    however many photos it has)."""
    if "by_group" in metrics:
        return float(np.mean([_score(m, recipe) for m in metrics["by_group"].values()]))
    if recipe.select_on == "eer_mean" and "degraded_eer" in metrics:
        return (metrics["eer"] + metrics["degraded_eer"]) / 2
    return metrics["eer"]


# ------------------------------------------------------------------------------------------------ the loop


def _agree(flag: bool) -> bool:
    """Rank 0's decision, on every worker (so workers never disagree about stopping and deadlock)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor([1.0 if flag else 0.0])
        torch.distributed.broadcast(t, src=0)
        return bool(t.item())
    return flag


class TrainStep(nn.Module):
    """Network + loss as one module, so DDP synchronises the ArcFace centres with the network."""

    def __init__(self, net: ReIDNet, criterion: Criterion) -> None:
        super().__init__()
        self.net, self.criterion = net, criterion

    def forward(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.criterion(self.net(h, cached=True), labels)


@dataclass
class _Run:
    """What the phases of one training run share: the network, its encoders, the split and the cached views."""

    recipe: Recipe
    world: World
    seed: int
    base: Any  # the pretrained TimmEmbedder: preprocessing, arch and ids for the checkpoint
    spec: dict[str, Any]
    net: ReIDNet
    enc: Encoder
    split: Split
    train: tuple[list[Path], list[int], list[str]]  # paths, labels, identity names
    val: tuple[list[Path], list[int], list[str]]
    val_groups: list[str] | None
    train_cache: dict[str, torch.Tensor]
    val_cache: dict[str, torch.Tensor]
    started: float  # time.monotonic() and time.process_time() when the run began
    cpu_started: float

    @property
    def device(self) -> str:
        return self.world.device

    def validate(self, *, pooled: bool = False) -> dict[str, Any]:
        return validate(
            self.net,
            self.val_cache,
            self.val[1],
            self.device,
            pooled=pooled,
            tta=self.recipe.tta_flip,
            groups=self.val_groups,
        )


def _pretrained(settings: Any, device: str) -> tuple[dict[str, Any], Any]:
    """The timm embedder training starts from: a profile whose embedder is itself fine-tuned (cpu) names the
    pretrained profile in ``train_from``."""
    from engine.models.registry import load_profile, stage_spec
    from engine.models.timm_embedder import TimmEmbedder

    spec = stage_spec(settings, "embedder", load_profile(settings).get("train_from"))
    if spec.get("kind") != "timm":
        raise HomewardError(
            f"homeward train fine-tunes one timm embedder; the profile's embedder is {spec.get('kind')!r}: give the "
            "profile a `train_from:` profile whose embedder is the timm model to start from, or pick such a profile "
            "with --set enrich.profile=NAME"
        )
    spec["device"] = device
    return spec, TimmEmbedder(spec, settings)


def _prepare(settings: Any, images_dir: str, recipe: Recipe, val_fraction: float, seed: int, world: World) -> _Run:
    """Network, split and cached trunk activations of every view the run trains and validates on."""
    from engine.models.embedder import prepare

    started, cpu_started = time.monotonic(), time.process_time()
    device = world.device
    spec, base = _pretrained(settings, device)
    backbone = base.model.float().to(memory_format=torch.contiguous_format)
    net = ReIDNet(
        backbone,
        recipe.trainable_from if recipe.train else 10**6,
        cache_at=recipe.cache_at if recipe.cache_frozen else None,
    ).to(device)

    def prep(imgs: list[Image.Image]) -> torch.Tensor:
        return torch.from_numpy(prepare(imgs, base.img_size, base.mean, base.std, base.resize))

    split = split_datasets(images_dir, val_fraction, seed)
    train, val = split.items("train"), split.items("val")
    val_groups = [split.groups.get(val[2][lab], "") for lab in val[1]] if split.groups else None
    log.info(
        "train: %d identities / %d images; val: %d identities / %d images",
        len(train[2]),
        len(train[0]),
        len(val[2]),
        len(val[0]),
    )
    cache_dir = Path(settings.data_dir) / "cache" / "reid-trunk"
    enc = Encoder(net, prep, device, seed, cache_dir, base.model_id)
    val_views = ["clean", "degrade"] + (["flip", "degrade_flip"] if recipe.tta_flip else [])
    # Degraded validation queries are seeded differently from any training view.
    val_enc = Encoder(net, prep, device, seed + 7_919, cache_dir, base.model_id)
    val_cache = {v: val_enc.cache(val[0], v, f"cache val/{v}") for v in val_views}
    train_cache: dict[str, torch.Tensor] = {}
    if recipe.train and recipe.cache_frozen:
        train_cache = {v: enc.cache(train[0], v, f"cache train/{v}") for v in recipe.views}
        _advance_cache(net, [(enc, train[0], train_cache), (val_enc, val[0], val_cache)], device)
    return _Run(
        recipe,
        world,
        seed,
        base,
        spec,
        net,
        enc,
        split,
        train,
        val,
        val_groups,
        train_cache,
        val_cache,
        started,
        cpu_started,
    )


def _init_top(r: _Run) -> Criterion:
    """The head (PCA of the pooled training features, random, or none) and the loss, proxies set from class means
    when the recipe asks."""
    recipe, net, device = r.recipe, r.net, r.device
    pooled_train = _pooled_features(net, r.enc, r.train[0], r.train_cache.get("clean"), device)
    if recipe.head != "none" and r.base.head is not None:
        # Starting from a fine-tuned checkpoint continues its training: a fresh head would throw away what the
        # backbone's features were trained against.
        net.head = copy.deepcopy(r.base.head).float().to(device).requires_grad_(True)
        log.info("continuing the starting checkpoint's projection head (%s)", r.base.model_id)
    elif recipe.head == "pca":
        net.head = pca_head(pooled_train, recipe.head_dim).to(device)
    elif recipe.head == "random":
        net.head = random_head(net.num_features, recipe.head_dim, r.seed).to(device)
    with torch.no_grad():
        projected = net.head(pooled_train.to(device)) if net.head is not None else pooled_train
        emb_train = torch.nn.functional.normalize(projected, dim=-1).cpu()
    dim = int(net.head.out_features) if net.head is not None else net.num_features
    criterion = Criterion(recipe.loss, dim, len(r.train[2]), recipe).to(device)
    if criterion.arcface is not None and recipe.proxy_init == "class_mean":
        criterion.arcface.init_from_means(emb_train, torch.tensor(r.train[1]), r.seed)
    return criterion


def _optimizer(net: ReIDNet, criterion: Criterion, recipe: Recipe) -> torch.optim.Optimizer:
    groups = [
        {"params": [p for p in net.backbone.parameters() if p.requires_grad], "lr": recipe.lr},
        {"params": list(net.head.parameters()) if net.head is not None else [], "lr": recipe.head_lr},
        {"params": list(criterion.parameters()), "lr": recipe.proxy_lr, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=recipe.weight_decay)


class _Steps:
    """One optimisation step at a time over P×K batches, the learning rate on a warm-up + cosine schedule."""

    def __init__(self, r: _Run, criterion: Criterion, sampler: PKSampler, epochs: int) -> None:
        self.r, self.sampler = r, sampler
        module: nn.Module = TrainStep(r.net, criterion)
        self.module = r.world.prepare(module) if r.world.prepare is not None else module
        self.opt = _optimizer(r.net, criterion, r.recipe)
        self.base_lrs = [g["lr"] for g in self.opt.param_groups]
        self.total = max(1, epochs * len(sampler))
        self.warmup = max(1, int(r.recipe.warmup_epochs * len(sampler)))
        self.labels = torch.tensor(r.train[1])
        self.rng = random.Random(r.seed * 31 + r.world.rank)
        self.step = 0

    def features(self, batch: list[int]) -> torch.Tensor:
        r, recipe = self.r, self.r.recipe
        views = [self.rng.choice(recipe.views) for _ in batch]
        if not recipe.cache_frozen:
            return r.enc.trunk(r.train[0], views, batch)
        h = torch.stack([r.train_cache[v][i] for v, i in zip(views, batch, strict=True)]).to(r.device, torch.float32)
        if recipe.feature_flip:
            flip = torch.rand(len(batch)) < 0.5
            h[flip] = h[flip].flip(-1)
        return h

    def epoch(self, epoch: int, epochs: int) -> float:
        """Trains one epoch; returns its mean loss."""
        r = self.r
        r.net.train()
        if r.recipe.freeze_bn:
            r.net.freeze_bn_stats()
        self.sampler.set_epoch(epoch)
        bar = tqdm(self.sampler, desc=f"epoch {epoch}/{epochs}", unit="step", leave=False, disable=not r.world.main)
        losses = []
        for batch in bar:
            h = self.features(batch)
            progress = min(1.0, self.step / self.total)
            lr_scale = min(1.0, (self.step + 1) / self.warmup) * 0.5 * (1 + math.cos(math.pi * progress))
            for g, lr in zip(self.opt.param_groups, self.base_lrs, strict=True):
                g["lr"] = lr * lr_scale
            loss = self.module(h, self.labels[batch].to(r.device))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.step += 1
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        return float(np.mean(losses))


@dataclass
class _Fit:
    history: list[dict[str, Any]]
    best_metrics: dict[str, Any]
    best_epoch: int


def _fit(r: _Run, epochs: int, max_minutes: float, batch_identities: int, images_per_identity: int) -> _Fit:
    """Trains the top, validating every epoch; stops early or at ``max_minutes`` and loads the best epoch's
    weights when the recipe keeps the best."""
    recipe = r.recipe
    criterion = _init_top(r)
    epoch0 = r.validate()
    history: list[dict[str, Any]] = [{"epoch": 0, "minutes": _minutes(r.started), **epoch0}]
    best = _Fit(history, epoch0, 0)
    best_state = copy.deepcopy(_trainable_state(r.net))
    log.info("epoch 0 (initialised, not trained): %s", _fmt(epoch0))
    sampler = PKSampler(
        r.train[1],
        batch_identities,
        images_per_identity,
        seed=r.seed,
        rank=r.world.rank,
        batches=max(1, len(r.train[0]) // (batch_identities * images_per_identity * r.world.size)),
    )
    steps = _Steps(r, criterion, sampler, epochs)
    bad, epoch_s = 0, 0.0
    best_score = _score(epoch0, recipe)
    for epoch in range(1, epochs + 1):
        t_epoch = time.monotonic()
        if _agree(time.monotonic() - r.started + epoch_s > max_minutes * 60):
            log.info("stopping before epoch %d: the next epoch would pass max_minutes=%s", epoch, max_minutes)
            break
        loss = steps.epoch(epoch, epochs)
        metrics = r.validate()
        epoch_s = time.monotonic() - t_epoch
        row = {
            "epoch": epoch,
            "minutes": _minutes(r.started),
            "cpu_minutes": (time.process_time() - r.cpu_started) / 60,
            "loss": loss,
            **metrics,
        }
        history.append(row)
        score = _score(metrics, recipe)
        improved = score < best_score - 1e-6
        if improved:
            best_score, best.best_metrics, best.best_epoch, bad = score, metrics, epoch, 0
            best_state = copy.deepcopy(_trainable_state(r.net))
        else:
            bad += 1
        log.info(
            "epoch %d (%.1f min, loss %.3f)%s: %s", epoch, row["minutes"], loss, " *" if improved else "", _fmt(metrics)
        )
        if r.world.report is not None:
            r.world.report({k: v for k, v in row.items() if isinstance(v, (int, float))})
        if _agree(bad >= recipe.patience):
            log.info("early stop: no better validation score in %d epochs (best epoch %d)", bad, best.best_epoch)
            break
    if not recipe.keep_best:
        last = history[-1]
        best.best_epoch = last["epoch"]
        best.best_metrics = {k: v for k, v in last.items() if k not in ("epoch", "minutes", "loss")}
    else:
        r.net.load_state_dict(best_state, strict=False)
    return best


def _metadata(
    r: _Run,
    images_dir: str,
    val_fraction: float,
    fit: _Fit,
    baseline: dict[str, Any],
    *,
    epochs: int,
    batch_identities: int,
    images_per_identity: int,
) -> dict[str, Any]:
    identities = {**r.split.train, **r.split.val}
    return {
        "recipe": r.recipe.to_dict(),
        "data": {
            "path": os.pathsep.join(str(d.resolve()) for d in dataset_dirs(images_dir)),
            "fingerprint": data_fingerprint(images_dir, identities),
            "identities": len(identities),
            "images": sum(len(v) for v in identities.values()),
            "split_seed": r.seed,
            "val_fraction": val_fraction,
            "train_identities": r.train[2],
            "val_identities": r.val[2],
            "train_images": len(r.train[0]),
            "val_images": len(r.val[0]),
        },
        "metrics": {
            "baseline": baseline,
            "finetuned": fit.best_metrics,
            "best_epoch": fit.best_epoch,
            "history": fit.history,
        },
        "training": {
            "epochs_requested": epochs,
            "epochs_run": max(0, len(fit.history) - 1),
            "minutes": round(_minutes(r.started), 2),
            "cpu_minutes": round((time.process_time() - r.cpu_started) / 60, 2),
            "batch_identities": batch_identities,
            "images_per_identity": images_per_identity,
            "world_size": r.world.size,
            "device": r.device,
            "base_model_id": r.base.model_id,
        },
    }


def run(
    settings: Any,
    images_dir: str,
    recipe: Recipe,
    *,
    out: str | None,
    epochs: int,
    val_fraction: float,
    seed: int,
    max_minutes: float,
    batch_identities: int,
    images_per_identity: int,
    world: World | None = None,
) -> dict[str, Any]:
    from engine.train.checkpoint import save_reid_checkpoint

    world = world or World()
    random.seed(seed)
    torch.manual_seed(seed)
    r = _prepare(settings, images_dir, recipe, val_fraction, seed, world)
    # After the cache advance: the frozen middle stages then run once over the validation views, not twice.
    baseline = r.validate(pooled=True)
    log.info("baseline (pretrained, no head): %s", _fmt(baseline))
    fit = _fit(r, epochs, max_minutes, batch_identities, images_per_identity) if recipe.train else _Fit([], baseline, 0)
    metadata = _metadata(
        r,
        images_dir,
        val_fraction,
        fit,
        baseline,
        epochs=epochs,
        batch_identities=batch_identities,
        images_per_identity=images_per_identity,
    )
    result = summarize(metadata)
    if world.main:
        path = out or str(Path(settings.data_dir) / "models" / f"reid-{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        saved = save_reid_checkpoint(
            path,
            r.net,
            arch=r.base.arch,
            mean=r.base.mean,
            std=r.base.std,
            img_size=r.base.img_size,
            resize=r.base.resize,
            metadata=metadata,
            base_profile=_base_profile(str(settings.enrich.profile)),
            profile_extra=_keep_breed_classifier(settings, r.spec, r.base),
            heldout=r.split.val,
        )
        result["checkpoint"] = str(saved)
    return result


def summarize(metadata: dict[str, Any]) -> dict[str, Any]:
    """The verb's result from a checkpoint's metadata: counts, timings, baseline and fine-tuned metrics (nested,
    and flat: ``eer``, ``top1`` … of the kept model, ``baseline_eer`` … of the pretrained one)."""
    data, metrics, training = metadata["data"], metadata["metrics"], metadata["training"]
    result: dict[str, Any] = {
        "recipe": metadata["recipe"]["name"],
        "train_identities": len(data["train_identities"]),
        "train_images": data["train_images"],
        "val_identities": len(data["val_identities"]),
        "val_images": data["val_images"],
        "best_epoch": metrics["best_epoch"],
        "epochs_run": training["epochs_run"],
        "minutes": training["minutes"],
        "cpu_minutes": training.get("cpu_minutes"),
        "baseline": metrics["baseline"],
        "finetuned": metrics["finetuned"],
    }
    result.update({f"baseline_{k}": v for k, v in metrics["baseline"].items()})
    result.update(metrics["finetuned"])
    return result


@torch.no_grad()
def _pooled_features(
    net: ReIDNet, enc: Encoder, paths: Sequence[Path], cache: torch.Tensor | None, device: str, batch: int = 64
) -> torch.Tensor:
    """Pretrained pooled features of the clean training images (for the PCA head and the ArcFace centres)."""
    net.eval()
    out = []
    for start in range(0, len(paths), batch):
        idx = list(range(start, min(start + batch, len(paths))))
        h = (
            cache[start : start + len(idx)].to(device, torch.float32)
            if cache is not None
            else enc.trunk(paths, ["clean"] * len(idx), idx)
        )
        out.append(net.pooled(h).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def _advance_cache(
    net: ReIDNet,
    parts: Sequence[tuple[Encoder, Sequence[Path], dict[str, torch.Tensor]]],
    device: str,
    batch: int = 128,
) -> None:
    """Run the frozen stages between the cache point and the first trainable stage once over the cached
    activations of each ``(encoder, paths, {view: activations})`` part, so epochs compute only what trains. The
    advanced activations are cached too (under the later cut), so a rerun of a recipe that freezes as much skips
    this. The net's trunk then ends there."""
    if net.frozen <= net.cut:
        return
    was_training = net.training
    net.eval()
    middle = net._stages[net.cut : net.frozen]
    for enc, paths, cache in parts:
        for name, acts in cache.items():
            file = enc.file(paths, name, net.frozen)
            if file is not None and file.is_file():
                cache[name] = torch.load(file, weights_only=True)
                continue
            out = []
            for start in tqdm(range(0, len(acts), batch), desc=f"advance {name}", unit="batch", leave=False):
                h = acts[start : start + batch].to(device, torch.float32)
                for stage in middle:
                    h = stage(h)
                out.append(h.to("cpu", torch.float16))
            cache[name] = torch.cat(out)
            enc.save(file, cache[name])
    net.cut = net.frozen
    net.train(was_training)


def _base_profile(profile: str) -> str:
    """The named profile a checkpoint's ``profile.yaml`` builds on: the one trained from, or that file's base."""
    path = Path(profile)
    if profile.endswith((".yaml", ".yml")) and path.is_file():
        import yaml

        return str((yaml.safe_load(path.read_text()) or {}).get("base", "cpu"))
    return profile


def _keep_breed_classifier(settings: Any, spec: dict[str, Any], base: Any) -> dict[str, Any]:
    """Profile overrides that keep breed labels: an ``attributes`` captioner reading the embedder's own ImageNet
    head would find none on the fine-tuned model, so it is pointed at the pretrained embedder instead (one more
    forward pass per photo, breed labels unchanged)."""
    from engine.models.registry import stage_spec

    captioner = stage_spec(settings, "captioner")
    if captioner.get("kind") != "attributes" or captioner.get("classifier", "embedder") != "embedder":
        return {}
    if not base.has_imagenet_head:
        return {}
    keys = ("arch", "checkpoint", "mean", "std", "img_size", "resize", "model_kwargs")
    return {"captioner": {"classifier": {k: spec[k] for k in keys if k in spec}}}


def _trainable_state(net: ReIDNet) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _minutes(started: float) -> float:
    return (time.monotonic() - started) / 60


def _fmt(m: dict[str, Any]) -> str:
    keys = [k for k in ("top1", "eer", "degraded_top1", "degraded_eer", "tta_eer", "tta_degraded_eer") if k in m]
    text = " ".join(f"{k}={m[k]:.4f}" for k in keys)
    for name, g in m.get("by_group", {}).items():
        text += f" | {name}: top1={g['top1']:.3f} eer={g['eer']:.4f}"
    return text
