"""Re-identification checkpoints: a folder with the weights and their provenance.

```
<out>/model.safetensors   timm backbone (``backbone.*``, timm's own keys, classifier kept) + optional projection
                          head (``projection.*``), preprocessing in the header — the format
                          ``embedder: {kind: timm, checkpoint: <out>/model.safetensors}`` loads (engine.models)
<out>/homeward.json       arch, dim, mean, std, image_size, recipe, data (path, fingerprint, identities, split seed,
                          image counts), metrics (baseline and fine-tuned, clean and degraded, per-epoch history),
                          created_at
<out>/profile.yaml        a profile (``base:`` the profile trained from) that switches enrichment/search/eval to this
                          model: ``--set enrich.profile=<out>/profile.yaml``; an attributes captioner that read the
                          embedder's ImageNet head keeps the pretrained one as its breed classifier
<out>/heldout/<identity>  symlinks to the validation identities' folders: ``homeward eval <out>/heldout`` scores
                          any profile on exactly the identities this model never trained on
```
Published atomically: written to a sibling temp folder, then renamed over ``<out>``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from engine.errors import HomewardError

WEIGHTS = "model.safetensors"
METADATA = "homeward.json"
PROFILE = "profile.yaml"
HELDOUT = "heldout"


def save_reid_checkpoint(
    out: str | Path,
    net: Any,
    *,
    arch: str,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    img_size: int,
    resize: str,
    metadata: dict[str, Any],
    base_profile: str = "cpu",
    profile_extra: dict[str, Any] | None = None,
    heldout: dict[str, list[Path]] | None = None,
) -> Path:
    from engine.models.checkpoints import save_timm_checkpoint
    from engine.train.data import link_identities

    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        dim = int(net.head.out_features) if net.head is not None else int(net.num_features)
        save_timm_checkpoint(
            tmp / WEIGHTS,
            net.backbone,
            arch=arch,
            head=net.head,
            mean=tuple(mean),
            std=tuple(std),
            img_size=img_size,
            resize=resize,
            head_act="none",
            extra={"recipe": metadata.get("recipe", {}).get("name"), "dim": dim},
        )
        meta = {
            "format": "homeward-reid-v1",
            "arch": arch,
            "dim": dim,
            "mean": list(mean),
            "std": list(std),
            "image_size": int(img_size),
            "resize": resize,
            "head": None if net.head is None else {"in_dim": int(net.head.in_features), "dim": dim},
            "weights": WEIGHTS,
            **metadata,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / METADATA).write_text(json.dumps(meta, indent=1, default=str))
        profile = {
            "base": base_profile,
            "embedder": {"kind": "timm", "arch": arch, "checkpoint": str(out / WEIGHTS)},
            **(profile_extra or {}),
        }
        (tmp / PROFILE).write_text(yaml.safe_dump(profile, sort_keys=False))
        if heldout:
            link_identities(heldout, tmp / HELDOUT)
        if out.exists():
            old = out.with_name(f".{out.name}-old-{time.time_ns()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_reid_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A checkpoint folder (or its ``model.safetensors``) → ``(model, metadata)``: the timm model is built from the
    metadata and loaded strictly; ``model(x)`` gives L2-normalised embeddings of preprocessed pixels."""
    import timm

    from engine.models.checkpoints import load_checkpoint
    from engine.models.timm_embedder import build_head
    from engine.train.model import ReIDNet

    p = Path(path)
    folder = p if p.is_dir() else p.parent
    weights = folder / WEIGHTS if p.is_dir() else p
    if not weights.is_file():
        raise HomewardError(f"no {WEIGHTS} in {folder}")
    meta_path = folder / METADATA
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    backbone_sd, head_sd, header = load_checkpoint(str(weights))
    arch = meta.get("arch") or header.get("arch")
    if not arch:
        raise HomewardError(f"{weights} records no architecture")
    model = timm.create_model(arch, pretrained=False, **(header.get("model_kwargs") or {}))
    model.load_state_dict(backbone_sd, strict=True)
    head = build_head(head_sd, header) if head_sd else None
    net = ReIDNet(model, trainable_from=0, head=head).eval()
    return net, {**header, **meta}
