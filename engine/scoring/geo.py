"""Distance and time priors: where and when a found animal can plausibly be the lost one.

A lost animal found ``days`` after it went missing can have travelled at most
``min(base_radius_km + max_speed_km_per_day × days, max_radius_km)`` (the base radius covers imprecise addresses and
the first hours; the cap is the region a search covers: most lost pets are found within a few kilometres, and an
uncapped radius grows to thousands of kilometres within months, which makes a whole region one block). A pair beyond
that distance, or found well before it was lost, is ruled out; a pair missing coordinates or dates gets no prior
(neither bonus nor penalty) and is kept.

All functions take torch tensors that broadcast, so the same code scores a whole tile (``a[:, None]`` vs
``b[None, :]``) and a list of pairs (``a[i]`` vs ``b[j]``). Missing values are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

EARTH_RADIUS_KM = 6371.0088
TYPICAL_DAYS = 7.0
"""Elapsed days assumed for the distance prior's scale when a pair has no dates (the hard rule then uses max_days)."""


def haversine_km(lat1: torch.Tensor, lon1: torch.Tensor, lat2: torch.Tensor, lon2: torch.Tensor) -> torch.Tensor:
    """Great-circle distance in km (NaN where a coordinate is missing)."""
    p1, p2 = torch.deg2rad(lat1), torch.deg2rad(lat2)
    dp = p2 - p1
    dl = torch.deg2rad(lon2 - lon1)
    h = torch.sin(dp / 2) ** 2 + torch.cos(p1) * torch.cos(p2) * torch.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * torch.asin(torch.sqrt(h.clamp(0.0, 1.0)))


def place_slack_km(geo_source: np.ndarray | None, n: int, slack_km: Mapping[str, float]) -> np.ndarray:
    """(n,) float64: how far each listing's point may lie from where the animal was, by where the point came from
    (``listings.geo_source``; ``slack_km`` maps a source to km, a source it does not name to 0).

    A place named by a town, or a found animal placed at its shelter, is a centroid, not the spot: two such points
    ``d`` km apart may be the same street, so a pair is judged by ``max(0, d - slack_lost - slack_found)`` — in the
    hard radius and in the distance prior alike — and blocking reaches as far."""
    out = np.zeros(n, dtype=np.float64)
    if geo_source is not None and slack_km:
        for source, km in slack_km.items():
            out[geo_source == source] = km
    return out


def plausible_radius_km(
    days: torch.Tensor | float, base_radius_km: Any, max_speed_km_per_day: Any, max_radius_km: Any = math.inf
):
    """How far an animal can be ``days`` after it went missing (negative days count as zero), at most
    ``max_radius_km``."""
    if isinstance(days, torch.Tensor):
        return (base_radius_km + max_speed_km_per_day * days.clamp(min=0.0)).clamp(max=max_radius_km)
    return min(base_radius_km + max_speed_km_per_day * max(float(days), 0.0), float(max_radius_km))


def geo_time_terms(
    dist_km: torch.Tensor,
    days_apart: torch.Tensor,
    *,
    base_radius_km: float | torch.Tensor,
    max_speed_km_per_day: float | torch.Tensor,
    max_days: float | torch.Tensor,
    grace_days: float | torch.Tensor,
    max_radius_km: float | torch.Tensor = math.inf,
    scale_km: float | torch.Tensor | None = None,
    scale_km_per_day: float | torch.Tensor = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(geo_score, time_score, allowed) for found-minus-lost ``days_apart`` and ``dist_km`` (NaN = unknown).

    * geo_score ∈ (0, 1]: ``exp(-d / R)``, R the plausible radius for the days elapsed (``TYPICAL_DAYS`` when
      unknown), capped at ``max_radius_km``, or ``scale_km + scale_km_per_day · days`` when ``scale_km`` is given.
      NaN when the distance is unknown.
    * time_score ∈ (0, 1]: 1 for a found date up to the grace period before the lost date, decaying with
      ``exp(-days / (max_days / 6))`` after it. NaN when a date is missing.
    * allowed: False when found more than ``grace_days`` before lost, more than ``max_days`` after, or farther
      than the plausible radius (for ``max_days`` when dates are missing).
    """
    known_d = ~torch.isnan(dist_km)
    known_t = ~torch.isnan(days_apart)
    days0 = torch.where(known_t, days_apart, torch.full_like(days_apart, TYPICAL_DAYS))
    if scale_km is None:
        scale = plausible_radius_km(days0, base_radius_km, max_speed_km_per_day, max_radius_km)
    else:
        scale = plausible_radius_km(days0, scale_km, scale_km_per_day)
    geo = torch.exp(-torch.nan_to_num(dist_km, nan=0.0) / scale)
    geo = torch.where(known_d, geo, torch.full_like(geo, float("nan")))
    tau = max_days / 6.0
    tau = tau.clamp(min=1.0) if isinstance(tau, torch.Tensor) else max(tau, 1.0)
    tim = torch.exp(-torch.nan_to_num(days_apart, nan=0.0).clamp(min=0.0) / tau)
    tim = torch.where(known_t, tim, torch.full_like(tim, float("nan")))
    too_early = known_t & (days_apart < -grace_days)
    too_late = known_t & (days_apart > max_days)
    limit_days = torch.where(known_t, days_apart, torch.zeros_like(days_apart) + max_days)
    limit_km = plausible_radius_km(limit_days, base_radius_km, max_speed_km_per_day, max_radius_km)
    too_far = known_d & (dist_km > limit_km)
    return geo, tim, ~(too_early | too_late | too_far)


# ----------------------------------------------------------------------------------------------------------- blocking
def unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Points on the unit sphere (rows of NaN for missing coordinates)."""
    p, lam = np.deg2rad(lat), np.deg2rad(lon)
    return np.stack([np.cos(p) * np.cos(lam), np.cos(p) * np.sin(lam), np.sin(p)], axis=1)


def chord_for_radius(radius_km: Any) -> Any:
    """The straight-line distance through the unit sphere (chord) of the great-circle distance ``radius_km`` (a number
    or an array): great-circle distance ≤ r exactly when chord ≤ this, so grids on the unit sphere need no pole or
    date-line cases."""
    return 2.0 * np.sin(np.minimum(np.asarray(radius_km, dtype=np.float64) / EARTH_RADIUS_KM, np.pi) / 2.0)
