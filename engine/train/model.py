"""The trainable re-identification network: a timm backbone cut into a frozen trunk and a trainable top, an
optional projection head, and the metric-learning losses.

The cut follows the backbone's stage blocks (EfficientNet/MobileNet ``blocks[i]``, ResNet ``layer{i+1}``), so
``trunk(x)`` can run once per image and be cached while only ``top`` trains. State-dict keys stay timm's own, so
the backbone saves and reloads with ``timm.create_model(arch)`` + strict loading.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def backbone_stages(model: nn.Module) -> tuple[list[nn.Module], nn.Module]:
    """``([stem, block_0, …, block_n], tail)``: the feature path of a timm CNN, split at its stage blocks."""
    if all(hasattr(model, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):  # EfficientNet/MobileNet
        return [nn.Sequential(model.conv_stem, model.bn1), *model.blocks], nn.Sequential(model.conv_head, model.bn2)
    if all(hasattr(model, a) for a in ("conv1", "bn1", "layer1", "layer4")):  # ResNet family
        stem = nn.Sequential(model.conv1, model.bn1, model.act1, model.maxpool)
        return [stem, model.layer1, model.layer2, model.layer3, model.layer4], nn.Identity()
    raise ValueError(f"cannot split {type(model).__name__} into stages (supported: EfficientNet/MobileNet, ResNet)")


class ReIDNet(nn.Module):
    """``embed(x) = l2(head(pool(top(trunk(x)))))``.

    ``trainable_from`` = first trainable stage block; every earlier stage is frozen. ``trunk`` runs the stages
    before ``cache_at`` (at most ``trainable_from``): its output is what the loop caches; any frozen stages between
    the cache point and the first trainable one run inside ``top`` without gradients. One cache point can so serve
    recipes that freeze more or fewer blocks.
    """

    def __init__(
        self, backbone: nn.Module, trainable_from: int, head: nn.Module | None = None, cache_at: int | None = None
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        stages, tail = backbone_stages(backbone)
        n_blocks = len(stages) - 1
        self.frozen = 1 + max(0, min(int(trainable_from), n_blocks))
        self.cut = min(self.frozen, 1 + max(0, int(cache_at))) if cache_at is not None else self.frozen
        # Plain attributes, not submodules: the same layers are registered once, under ``backbone.`` (timm's keys).
        self.__dict__["_stages"] = stages
        self.__dict__["_tail"] = tail
        for stage in stages[: self.frozen]:
            for p in stage.parameters():
                p.requires_grad_(False)

    @property
    def num_features(self) -> int:
        return int(self.backbone.num_features)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            for stage in self._stages[: self.cut]:
                x = stage(x)
        return x

    def pooled(self, h: torch.Tensor) -> torch.Tensor:
        """Trunk activations → pooled backbone features (before any head)."""
        with torch.no_grad():
            for stage in self._stages[self.cut : self.frozen]:
                h = stage(h)
        for stage in self._stages[self.frozen :]:
            h = stage(h)
        h = self._tail(h)
        return self.backbone.forward_head(h, pre_logits=True)

    def top(self, h: torch.Tensor) -> torch.Tensor:
        f = self.pooled(h)
        if self.head is not None:
            f = self.head(f)
        return F.normalize(f, dim=-1)

    def forward(self, x: torch.Tensor, cached: bool = False) -> torch.Tensor:
        """Pixels → embedding; ``cached=True``: ``x`` already is the trunk's output."""
        return self.top(x if cached else self.trunk(x))

    def train(self, mode: bool = True) -> ReIDNet:
        super().train(mode)
        for stage in self._stages[: self.frozen]:  # frozen layers never train (no dropout, no BN updates)
            stage.eval()
        return self

    def freeze_bn_stats(self) -> None:
        """Put every BatchNorm in eval mode: running statistics stay those of the pretrained model."""
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def pca_head(features: torch.Tensor, dim: int) -> nn.Linear:
    """A Linear layer ``x ↦ Vᵀ(x − μ)`` from the top ``dim`` principal directions of ``features`` (n, d): at step 0
    it is the centred pretrained geometry (truncated), not a random projection."""
    x = features.double()
    mean = x.mean(0)
    dim = min(dim, x.shape[1], x.shape[0])
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
    w = vh[:dim]
    layer = nn.Linear(x.shape[1], dim)
    with torch.no_grad():
        layer.weight.copy_(w.float())
        layer.bias.copy_((-(w @ mean)).float())
    return layer


def random_head(in_dim: int, dim: int, seed: int = 0) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(in_dim, dim)
    with torch.no_grad():
        layer.weight.normal_(0.0, 1.0 / math.sqrt(in_dim), generator=g)
        layer.bias.zero_()
    return layer


class SubCenterArcFace(nn.Module):
    """Sub-center ArcFace (Deng et al., 2020): ``k`` centres per class, the nearest counts, an additive angular
    margin on the true class. Centres may start at the classes' mean embeddings, so step 0 is already sensible."""

    def __init__(self, dim: int, n_classes: int, *, k: int = 3, margin: float = 0.2, scale: float = 30.0) -> None:
        super().__init__()
        self.n_classes, self.k, self.margin, self.scale = n_classes, k, margin, scale
        self.weight = nn.Parameter(torch.randn(n_classes * k, dim) / math.sqrt(dim))

    def init_from_means(self, emb: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        means = torch.zeros(self.n_classes, emb.shape[1]).index_add_(0, labels, emb)
        means = F.normalize(means, dim=1)
        noise = torch.randn(self.n_classes, self.k, emb.shape[1], generator=g) * 0.01
        with torch.no_grad():
            self.weight.copy_(F.normalize(means[:, None, :] + noise, dim=-1).reshape(-1, emb.shape[1]))

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = (emb @ F.normalize(self.weight, dim=1).t()).view(-1, self.n_classes, self.k).amax(dim=2)
        target = cos.gather(1, labels[:, None]).clamp(-1 + 1e-6, 1 - 1e-6)
        with_margin = torch.cos(torch.acos(target) + self.margin)
        logits = cos.scatter(1, labels[:, None], with_margin)
        return F.cross_entropy(self.scale * logits, labels)


def batch_hard_triplet(emb: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Batch-hard triplet loss on cosine distance (Hermans et al., 2017)."""
    dist = 1.0 - emb @ emb.t()
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=emb.device)
    hardest_pos = dist.masked_fill(~same | eye, -1.0).amax(1)
    hardest_neg = dist.masked_fill(same, 4.0).amin(1)
    valid = (same & ~eye).any(1)
    loss = F.relu(hardest_pos - hardest_neg + margin)
    return loss[valid].mean() if valid.any() else emb.sum() * 0.0


class Criterion(nn.Module):
    """The recipe's loss as one module (its parameters — ArcFace centres — train with their own learning rate)."""

    def __init__(self, kind: str, dim: int, n_classes: int, recipe: Any) -> None:
        super().__init__()
        self.kind = kind
        self.margin = recipe.margin
        self.triplet_weight = recipe.triplet_weight
        self.arcface = (
            SubCenterArcFace(dim, n_classes, k=recipe.subcenters, margin=recipe.margin, scale=recipe.scale)
            if "arcface" in kind
            else None
        )

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = emb.new_zeros(())
        if self.arcface is not None:
            loss = loss + self.arcface(emb, labels)
        if "triplet" in self.kind:
            weight = self.triplet_weight if self.arcface is not None else 1.0
            loss = loss + weight * batch_hard_triplet(emb, labels, 0.3 if self.arcface is not None else self.margin)
        return loss
