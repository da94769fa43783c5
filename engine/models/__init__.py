"""The models every stage uses, chosen by a named profile (``settings.enrich.profile``), never by code.

Public surface::

    load_detector(settings)      -> Detector       .detect(images) -> [[Detection(species, confidence, bbox)]]
    load_embedder(settings)      -> Embedder       .embed(images) -> (n, dim) float32, L2-normalised; .model_id, .dim
    load_captioner(settings)     -> Captioner      .caption(crops, detections) -> [(caption, attributes)]
    load_text_embedder(settings) -> TextEmbedder   .embed(texts) -> (n, dim) float32, L2-normalised; .model_id, .dim
    profile(settings)            -> dict           the resolved profile: every stage's spec

Profiles live in ``engine/models/profiles.yaml`` (``cpu`` default, ``gpu``, ``tiny`` for tests); a ``profiles.yaml``
in the models folder or a YAML file path given as the profile adds or overrides them (see that file's header).
Weights resolve from ``settings.models_dir`` / ``HOMEWARD_MODELS_DIR`` first, then the hub only when
``HOMEWARD_ONLINE=1``; a missing file raises :class:`WeightsNotFound` naming it and the folders searched.
Loaded models are cached per process by their resolved spec, so repeated calls (``homeward search`` in a loop) are
cheap; pass ``cache=False`` for a private instance.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import engine  # noqa: F401  (offline switches before any model library is imported)
from engine.models.captioner import COLORS, Captioner, coat_colors, parse_vlm_answer
from engine.models.checkpoints import save_timm_checkpoint
from engine.models.detector import Detection, Detector, full_frame
from engine.models.embedder import Embedder, prepare
from engine.models.registry import (
    ModelError,
    WeightsNotFound,
    available_profiles,
    load_profile,
    models_dirs,
    resolve,
)
from engine.models.text import TextEmbedder

_CACHE: dict[str, Any] = {}
_LOCK = threading.Lock()


def _cached(stage: str, spec: dict[str, Any], settings: Any, build: Any, cache: bool) -> Any:
    key = json.dumps([stage, spec, [str(d) for d in models_dirs(settings)]], sort_keys=True, default=str)
    if not cache:
        return build()
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = build()
        return _CACHE[key]


def profile(settings: Any, profile_name: str | None = None) -> dict[str, Any]:
    """The resolved profile (``settings.enrich.profile`` unless named): ``{"name", "detector", "embedder", ...}``."""
    return load_profile(settings, profile_name)


def load_detector(settings: Any, *, profile_name: str | None = None, cache: bool = True) -> Detector:
    from engine.models.detector import build_detector

    spec = load_profile(settings, profile_name)["detector"]
    return _cached("detector", spec, settings, lambda: build_detector(spec, settings), cache)


def load_embedder(settings: Any, *, profile_name: str | None = None, cache: bool = True) -> Embedder:
    from engine.models.factory import build_embedder

    spec = load_profile(settings, profile_name)["embedder"]
    return _cached("embedder", spec, settings, lambda: build_embedder(spec, settings), cache)


def load_captioner(
    settings: Any, *, profile_name: str | None = None, embedder: Embedder | None = None, cache: bool = True
) -> Captioner:
    """The profile's captioner. An ``attributes`` captioner with ``classifier: embedder`` reuses ``embedder``'s
    ImageNet head (loading the profile's embedder when none is given)."""
    from engine.models.captioner import build_captioner

    prof = load_profile(settings, profile_name)
    spec = dict(prof["captioner"], _profile=prof["name"])
    if spec.get("kind") == "attributes" and spec.get("classifier") == "embedder" and embedder is None:
        embedder = load_embedder(settings, profile_name=profile_name, cache=cache)
    return _cached(
        "captioner",
        {**spec, "_embedder": getattr(embedder, "model_id", None)},
        settings,
        lambda: build_captioner(spec, settings, embedder=embedder),
        cache,
    )


def load_text_embedder(settings: Any, *, profile_name: str | None = None, cache: bool = True) -> TextEmbedder:
    from engine.models.text import build_text_embedder

    spec = load_profile(settings, profile_name)["text"]
    return _cached("text", spec, settings, lambda: build_text_embedder(spec, settings), cache)


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()


__all__ = [
    "COLORS",
    "Captioner",
    "Detection",
    "Detector",
    "Embedder",
    "ModelError",
    "TextEmbedder",
    "WeightsNotFound",
    "available_profiles",
    "clear_cache",
    "coat_colors",
    "full_frame",
    "load_captioner",
    "load_detector",
    "load_embedder",
    "load_text_embedder",
    "parse_vlm_answer",
    "prepare",
    "profile",
    "resolve",
    "save_timm_checkpoint",
]
