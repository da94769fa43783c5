"""The ``timm`` embedder kind: a timm backbone (+ an optional projection head) from a checkpoint, the hub or a seed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine.models.checkpoints import checkpoint_arch, load_checkpoint, timm_keys
from engine.models.embedder import Embedder, l2, prepare, with_flip
from engine.models.registry import (
    ModelError,
    WeightsNotFound,
    online,
    pick_device,
    resolve,
    seeded,
    torch_dtype,
    weights_hash,
)


class TimmEmbedder(Embedder):
    def __init__(self, spec: dict[str, Any], settings: Any) -> None:
        import timm
        import torch

        self.device = pick_device(spec)
        self.dtype = torch_dtype(spec, self.device)
        self.batch_size = int(spec.get("batch_size", 32))
        arch = spec.get("arch")
        meta: dict[str, Any] = {}
        head_sd: dict[str, Any] = {}
        state: dict[str, Any] | None = None
        if spec.get("checkpoint"):
            path = resolve(str(spec["checkpoint"]), settings, what="timm checkpoint", hub_ok=False)
            state, head_sd, meta = load_checkpoint(path)
            arch = meta.get("arch") or arch
        if not arch:
            raise ModelError("timm embedder spec needs `arch` (or a checkpoint that records it)")
        kwargs = dict(meta.get("model_kwargs") or {}, **(spec.get("model_kwargs") or {}))
        if state is not None:
            state = timm_keys(state, arch, kwargs)
            classifier_keys = [k for k in state if k.startswith(("classifier.", "head.fc.", "fc.", "head.weight"))]
            if "num_classes" not in kwargs:
                weight = next((state[k] for k in classifier_keys if k.endswith("weight")), None)
                kwargs["num_classes"] = int(weight.shape[0]) if weight is not None and weight.ndim == 2 else 0
            self.model = timm.create_model(arch, pretrained=False, **kwargs)
            self.model.load_state_dict(state, strict=bool(spec.get("strict", True)))
        elif spec.get("pretrained"):
            if not online():
                raise WeightsNotFound(
                    f"timm pretrained weights for {arch!r} need the hub; this machine is offline. Put a checkpoint "
                    "in the models folder and set `checkpoint:` (HOMEWARD_ONLINE=1 allows hub downloads)."
                )
            pretrained = spec["pretrained"]
            name = f"{arch}.{pretrained}" if isinstance(pretrained, str) else arch
            self.model = timm.create_model(name, pretrained=True, **kwargs)
        else:
            seed = int(spec.get("seed", 0))
            with seeded(seed):
                self.model = timm.create_model(arch, pretrained=False, **kwargs)
        cfg = getattr(self.model, "pretrained_cfg", {}) or {}
        self.mean = tuple(meta.get("mean") or spec.get("mean") or cfg.get("mean") or (0.485, 0.456, 0.406))
        self.std = tuple(meta.get("std") or spec.get("std") or cfg.get("std") or (0.229, 0.224, 0.225))
        self.img_size = int(meta.get("img_size") or spec.get("img_size") or (cfg.get("input_size") or (3, 224))[-1])
        self.resize = str(meta.get("resize") or spec.get("resize") or "pad")
        self.flip = bool(spec.get("flip", False))
        self.head = build_head(head_sd, meta) if head_sd else None
        num_classes = getattr(self.model, "num_classes", 0)
        self.has_imagenet_head = self.head is None and num_classes == 1000 and state is not None
        self.model.eval().to(self.device, self.dtype)
        if self.head is not None:
            self.head.eval().to(self.device, self.dtype)
        self.dim = int(self.head_out_dim() if self.head is not None else self.model.num_features)
        self.arch = arch
        self.model_id = timm_id(spec, settings)
        if self.device == "cpu" and bool(spec.get("channels_last", True)):
            self.model = self.model.to(memory_format=torch.channels_last)

    def head_out_dim(self) -> int:
        import torch

        with torch.no_grad():
            x = torch.zeros(1, self.model.num_features, device=self.device, dtype=self.dtype)
            return int(self.head(x).shape[-1])

    def preprocess(self, images: list[Image.Image]) -> Any:
        import torch

        return torch.from_numpy(prepare(images, self.img_size, self.mean, self.std, self.resize))

    def embed_and_classify(
        self, images: list[Image.Image], species: Sequence[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        import torch

        if not images:
            return np.zeros((0, self.dim), np.float32), (
                np.zeros((0, 1000), np.float32) if self.has_imagenet_head else None
            )
        vecs, logits = [], []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                x = self.preprocess(images[start : start + self.batch_size]).to(self.device, self.dtype)
                if self.device == "cpu":
                    x = x.contiguous(memory_format=torch.channels_last)
                vec, logit = self._forward(x)
                if self.flip:
                    mirror_vec, mirror_logit = self._forward(x.flip(-1))
                    vec = l2(vec + mirror_vec)
                    logit = None if logit is None else (logit + mirror_logit) / 2
                vecs.append(vec.cpu())
                if logit is not None:
                    logits.append(logit.float().cpu())
        emb = torch.cat(vecs).numpy().astype(np.float32, copy=False)
        return emb, (torch.cat(logits).numpy() if logits else None)

    def _forward(self, x: Any) -> tuple[Any, Any]:
        feats = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        vec = l2(self.head(feats) if self.head is not None else feats)
        return vec, (self.model.get_classifier()(feats) if self.has_imagenet_head else None)


def build_head(head_sd: dict[str, Any], meta: dict[str, Any]) -> Any:
    """Rebuild a projection head from its state_dict: ``weight``/``bias`` (one Linear) or ``N.weight`` … (a
    Sequential of Linear and BatchNorm1d layers, with ``head_act`` — relu | gelu | none — after every Linear but the
    last)."""
    from torch import nn

    if "weight" in head_sd:
        w = head_sd["weight"]
        layer = nn.Linear(w.shape[1], w.shape[0], bias="bias" in head_sd)
        layer.load_state_dict(head_sd)
        return layer
    indexes = sorted({int(k.split(".", 1)[0]) for k in head_sd})
    layers: list[nn.Module] = []
    act = {"relu": nn.ReLU, "gelu": nn.GELU}.get(str(meta.get("head_act", "relu")))
    linear_idx = [i for i in indexes if head_sd[f"{i}.weight"].ndim == 2]
    modules: dict[str, nn.Module] = {}
    for i in indexes:
        w = head_sd[f"{i}.weight"]
        if w.ndim == 2:
            mod: nn.Module = nn.Linear(w.shape[1], w.shape[0], bias=f"{i}.bias" in head_sd)
        elif f"{i}.running_mean" in head_sd:
            mod = nn.BatchNorm1d(w.shape[0])
        else:
            mod = nn.LayerNorm(w.shape[0])
        mod.load_state_dict({k.split(".", 1)[1]: v for k, v in head_sd.items() if k.split(".", 1)[0] == str(i)})
        modules[str(i)] = mod
    for i in indexes:
        layers.append(modules[str(i)])
        if act is not None and i in linear_idx and i != linear_idx[-1]:
            layers.append(act())
    return nn.Sequential(*layers)


def timm_id(spec: dict[str, Any], settings: Any) -> str:
    """The ``model_id`` of a timm embedder built from ``spec``, without building it (hashes the weight file)."""
    return with_flip(_weights_id(spec, settings), spec)


def _weights_id(spec: dict[str, Any], settings: Any) -> str:
    arch = spec.get("arch")
    if spec.get("checkpoint"):
        path = resolve(str(spec["checkpoint"]), settings, what="timm checkpoint", hub_ok=False)
        return f"timm:{checkpoint_arch(path) or arch}:{Path(path).stem}:{weights_hash(path)}"
    if spec.get("pretrained"):
        tag = spec["pretrained"] if isinstance(spec["pretrained"], str) else "default"
        return f"timm:{arch}:pretrained-{tag}"
    return f"timm:{arch}:random-seed{int(spec.get('seed', 0))}"
