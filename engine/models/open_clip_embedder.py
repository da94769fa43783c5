"""The ``open_clip`` embedder kind: an open_clip model by name and pretrained tag, a local file, or an inline config."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine.models.embedder import Embedder, l2, prepare, with_flip
from engine.models.registry import (
    ModelError,
    WeightsNotFound,
    models_dirs,
    online,
    pick_device,
    resolve,
    seeded,
    torch_dtype,
    weights_hash,
)


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
                dirs = [str(d) for d in models_dirs(settings)]
                if dirs:
                    kwargs["cache_dir"] = dirs[0]
            else:
                raise WeightsNotFound(
                    f"open_clip weights {arch}/{pretrained} not found locally; searched "
                    f"{', '.join(str(d) for d in models_dirs(settings)) or '(no models folder)'} for {pretrained!r}, "
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
        self.model_id = open_clip_id(spec, settings)

    def _probe_dim(self) -> int:
        import torch

        with torch.inference_mode():
            x = torch.zeros(1, 3, self.img_size, self.img_size, device=self.device, dtype=self.dtype)
            return int(self.model.encode_image(x).shape[-1])

    def preprocess(self, images: list[Image.Image]) -> Any:
        import torch

        return torch.from_numpy(prepare(images, self.img_size, self.mean, self.std, self.resize))

    def embed_and_classify(
        self, images: list[Image.Image], species: Sequence[str] | None = None
    ) -> tuple[np.ndarray, None]:
        import torch

        if not images:
            return np.zeros((0, self.dim), np.float32), None
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                x = self.preprocess(images[start : start + self.batch_size]).to(self.device, self.dtype)
                vec = l2(self.model.encode_image(x))
                if self.flip:
                    vec = l2(vec + l2(self.model.encode_image(x.flip(-1))))
                out.append(vec.cpu())
        return torch.cat(out).numpy().astype(np.float32, copy=False), None


def _local_open_clip(arch: str, pretrained: str, settings: Any) -> str | None:
    p = Path(pretrained).expanduser()
    if p.suffix in (".safetensors", ".bin", ".pt", ".pth") or p.is_absolute():
        try:
            return resolve(pretrained, settings, what="open_clip checkpoint", hub_ok=False)
        except WeightsNotFound:
            if p.is_absolute():
                raise
            return None
    for folder in models_dirs(settings):
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


def open_clip_id(spec: dict[str, Any], settings: Any) -> str:
    """The ``model_id`` of an open_clip embedder built from ``spec``, without building it (hashes the weight file)."""
    return with_flip(_weights_id(spec, settings), spec)


def _weights_id(spec: dict[str, Any], settings: Any) -> str:
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
