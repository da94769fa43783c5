"""Embedders built from a profile's ``embedder`` spec: the one module that knows every kind.

Each kind (:mod:`~engine.models.timm_embedder`, :mod:`~engine.models.open_clip_embedder`, :mod:`~engine.models.coat`,
:mod:`~engine.models.ensemble`) imports only the base :mod:`engine.models.embedder`; this module imports the kinds and
builds an ensemble's members recursively, so no kind imports another and there is no import cycle.
"""

from __future__ import annotations

from typing import Any

from engine.models.coat import CoatEmbedder, coat_id
from engine.models.embedder import Embedder
from engine.models.ensemble import EnsembleEmbedder, ensemble_id, member_specs
from engine.models.open_clip_embedder import OpenClipEmbedder, open_clip_id
from engine.models.registry import ModelError
from engine.models.timm_embedder import TimmEmbedder, timm_id

KINDS = "timm, open_clip, ensemble, coat"


def embedder_id(spec: dict[str, Any], settings: Any) -> str:
    """The ``model_id`` an embedder built from ``spec`` will have, computed without building it (hashes the weight
    file): the enrich driver uses it to find photos that have no vector of the current model yet."""
    kind = spec.get("kind")
    if kind == "timm":
        return timm_id(spec, settings)
    if kind == "open_clip":
        return open_clip_id(spec, settings)
    if kind == "ensemble":
        members, weights = member_specs(spec)
        return ensemble_id([embedder_id(m, settings) for m in members], weights)
    if kind == "coat":
        return coat_id(spec)
    raise ModelError(f"unknown embedder kind {kind!r} (known: {KINDS})")


def build_embedder(spec: dict[str, Any], settings: Any) -> Embedder:
    kind = spec.get("kind")
    if kind == "timm":
        return TimmEmbedder(spec, settings)
    if kind == "open_clip":
        return OpenClipEmbedder(spec, settings)
    if kind == "ensemble":
        members, weights = member_specs(spec)
        return EnsembleEmbedder([build_embedder(m, settings) for m in members], weights)
    if kind == "coat":
        return CoatEmbedder(spec, settings)
    raise ModelError(f"unknown embedder kind {kind!r} (known: {KINDS})")
