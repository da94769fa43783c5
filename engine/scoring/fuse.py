"""One calibrated score per (lost, found) pair, from every piece of evidence, with an explanation.

Terms, each turned into *evidence* in roughly [-1, 1] (0 = no evidence either way, also used when a term is
missing, so a missing photo, coordinate or date never drops a pair):

* image: the listing-level best detection-pair cosine (``aggregate``), standardised against this run's own
  background — median and MAD-scale of random lost × found detection pairs, almost all of them different animals —
  so ``(sim - median) / scale`` reads "how many spreads above a random pair", whatever the embedder:
  ``e = max(z, -2) / 4`` (+ a bonus per extra agreeing photo pair). Standardising per run makes one set of
  weights work for any embedder (a CLIP cosine of 0.8 and an EfficientNet cosine of 0.8 mean different things).
* text: the same for the listing text vectors (description + captions).
* attributes: ``attributes.attribute_terms`` evidence.
* geo / time: ``2·score - 1`` of ``geo.geo_time_terms``.

Tiles and pair lists are scored by one element-wise kernel (``engine.scoring.kernel``: the same terms, rewritten so
that per-listing work is done once per listing).

``fused = Σ weight·evidence`` (weights from ``settings.match.weights``), and the published ``score`` is
``sigmoid(slope·fused + offset)``, a probability-like value. Hard rules set a pair to -inf (never ranked): species
must agree or one side be unknown; a found date more than the grace period before the lost date, a found date more
than ``max_days`` after it, or a distance implausible for the days elapsed rule a pair out.

Calibration: ``slope`` and ``offset`` come from ``settings.match.calibration`` (defaults, and how they were set:
:data:`engine.config.DEFAULT_CALIBRATION`); :func:`fit_calibration` refits them from labelled pairs (confirmed /
rejected shelter feedback, or planted pairs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from engine.config import DEFAULT_CALIBRATION, MatchSettings
from engine.errors import HomewardError
from engine.schema import GEO_SOURCES
from engine.scoring import aggregate, kernel
from engine.scoring.attributes import AttributeCodes, attribute_terms
from engine.scoring.geo import geo_time_terms, haversine_km, place_slack_km

NEG_INF = float("-inf")
SPECIES_CODES = {"dog": 1, "cat": 2, "other": 3}
"""0 is unknown: it is compatible with every species."""
TERMS = ("image", "text", "attributes", "geo", "time")

AGREE_Z = 2.5
"""A detection pair "agrees" (for the several-photos bonus) at this many spreads above the background."""
MIN_SCALE = 0.02


@dataclass
class Side:
    """One side of the matching (lost or found) as tensors; detections are grouped by listing, in listing order."""

    listing_ids: np.ndarray  # (n,) object
    species: torch.Tensor  # (n,) int64, 0 unknown
    lat: torch.Tensor  # (n,) float32, NaN missing
    lon: torch.Tensor
    day: torch.Tensor  # (n,) float32 days since 1970-01-01, NaN missing
    attrs: AttributeCodes
    det_emb: torch.Tensor  # (D, d) float32, L2-normalised
    det_owner: torch.Tensor  # (D,) int64 listing index
    det_photo: np.ndarray  # (D,) object photo ids
    text: torch.Tensor  # (n, t) float32, zero rows where missing
    has_text: torch.Tensor  # (n,) bool
    geo_source: np.ndarray | None = None  # (n,) object: where lat/lon came from (engine.schema.GEO_SOURCES)
    det_offsets: torch.Tensor = field(init=False)
    det_counts: torch.Tensor = field(init=False)  # (n,) detections per listing

    def __post_init__(self) -> None:
        counts = torch.bincount(self.det_owner, minlength=self.n) if self.det_owner.numel() else torch.zeros(self.n)
        self.det_counts = counts.to(torch.int64)
        self.det_offsets = torch.zeros(self.n + 1, dtype=torch.int64)
        self.det_offsets[1:] = torch.cumsum(self.det_counts, 0)
        if self.det_owner.numel() and bool((self.det_owner[1:] < self.det_owner[:-1]).any()):
            raise ValueError("detections must be grouped by listing in listing order")

    @property
    def n(self) -> int:
        return len(self.listing_ids)

    def take(self, idx: np.ndarray | torch.Tensor) -> Side:
        """The listings ``idx`` (in that order), with their detections."""
        i = torch.as_tensor(np.asarray(idx), dtype=torch.int64)
        counts = self.det_counts[i]
        starts = self.det_offsets[:-1][i]
        det_idx = torch.repeat_interleave(starts, counts) + (
            torch.arange(int(counts.sum())) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        )
        return Side(
            listing_ids=self.listing_ids[i.numpy()],
            species=self.species[i],
            lat=self.lat[i],
            lon=self.lon[i],
            day=self.day[i],
            attrs=self.attrs.take(i),
            det_emb=self.det_emb[det_idx],
            det_owner=torch.repeat_interleave(torch.arange(len(i)), counts),
            det_photo=self.det_photo[det_idx.numpy()],
            text=self.text[i],
            has_text=self.has_text[i],
            geo_source=None if self.geo_source is None else self.geo_source[i.numpy()],
        )

    def geo_source_of(self, i: int) -> str | None:
        return None if self.geo_source is None else self.geo_source[i]

    def padded(self, idx: torch.Tensor, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Detections of listings ``idx`` as (n, P, d) with a mask (n, P) and detection row numbers (n, P); P is
        ``width`` (at least every listing's count) or else the widest listing's count."""
        counts = self.det_counts[idx]
        width = width or max(int(counts.max()) if len(idx) else 0, 1)
        pos = torch.arange(width)[None, :]
        mask = pos < counts[:, None]
        rows = (self.det_offsets[:-1][idx][:, None] + pos).clamp(max=max(self.det_emb.shape[0] - 1, 0))
        if self.det_emb.shape[0] == 0:
            return torch.zeros((len(idx), 1, 1)), torch.zeros((len(idx), 1), dtype=torch.bool), rows
        return self.det_emb[rows], mask, rows


@dataclass(frozen=True)
class ScoreParams:
    weights: Mapping[str, float]
    base_radius_km: float = 8.0
    max_speed_km_per_day: float = 1.0
    max_radius_km: float = 9.0
    geo_scale_km: float = 15.0
    geo_scale_km_per_day: float = 25.0
    max_days: float = 365.0
    grace_days: float = 3.0
    slope: float = DEFAULT_CALIBRATION["slope"]
    offset: float = DEFAULT_CALIBRATION["offset"]
    img_center: float = 0.0
    img_scale: float = 1.0
    txt_center: float = 0.0
    txt_scale: float = 1.0
    place_slack_km: Mapping[str, float] = field(default_factory=dict)

    @property
    def agree_threshold(self) -> float:
        return self.img_center + AGREE_Z * self.img_scale

    @classmethod
    def from_settings(cls, match_settings: MatchSettings) -> ScoreParams:
        weights = dict(match_settings.weights)
        unknown = sorted(set(weights) - set(TERMS))
        if unknown:
            raise HomewardError(f"match.weights has unknown terms {unknown}; known: {', '.join(TERMS)}")
        unknown = sorted(set(match_settings.calibration) - set(DEFAULT_CALIBRATION))
        if unknown:
            raise HomewardError(f"match.calibration has unknown keys {unknown}; known: slope, offset")
        calib = {**DEFAULT_CALIBRATION, **match_settings.calibration}
        slack = dict(match_settings.place_slack_km or {})
        unknown = sorted(set(slack) - set(GEO_SOURCES))
        if unknown:
            raise HomewardError(
                f"match.place_slack_km has unknown place sources {unknown}; known: {', '.join(GEO_SOURCES)}"
            )
        bad = {k: v for k, v in slack.items() if isinstance(v, bool) or not isinstance(v, int | float)
               or not math.isfinite(v) or v < 0}  # fmt: skip
        if bad:
            raise HomewardError(f"match.place_slack_km needs finite kilometres >= 0; got {bad}")
        return cls(
            weights={t: float(weights.get(t, 0.0)) for t in TERMS},
            base_radius_km=float(match_settings.base_radius_km),
            max_speed_km_per_day=float(match_settings.max_speed_km_per_day),
            max_radius_km=float(match_settings.max_radius_km),
            geo_scale_km=float(match_settings.geo_scale_km),
            geo_scale_km_per_day=float(match_settings.geo_scale_km_per_day),
            max_days=float(match_settings.max_days),
            grace_days=float(match_settings.found_before_lost_grace_days),
            slope=float(calib["slope"]),
            offset=float(calib["offset"]),
            place_slack_km={k: float(v) for k, v in sorted(slack.items())},
        )


def robust_center_scale(sims: torch.Tensor) -> tuple[float, float]:
    """Median and MAD·1.4826 (floored): the background of mostly-unrelated pairs, unmoved by the few true ones."""
    flat = sims.flatten().float()
    flat = flat[torch.isfinite(flat)]
    if flat.numel() == 0:
        return 0.0, 1.0
    med = float(flat.median())
    mad = float((flat - med).abs().median()) * 1.4826
    return med, max(mad, MIN_SCALE)


def background_stats(lost: Side, found: Side, params: ScoreParams, sample: int = 2048, seed: int = 0) -> ScoreParams:
    """Estimate the image and text backgrounds from up to ``sample`` × ``sample`` random cross pairs."""
    gen = torch.Generator().manual_seed(seed)

    def pick(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] <= sample:
            return x
        return x[torch.randperm(x.shape[0], generator=gen)[:sample]]

    changes: dict[str, float] = {}
    if lost.det_emb.shape[0] and found.det_emb.shape[0]:
        c, s = robust_center_scale(pick(lost.det_emb) @ pick(found.det_emb).T)
        changes.update(img_center=c, img_scale=s)
    lt, ft = lost.text[lost.has_text], found.text[found.has_text]
    if lt.shape[0] and ft.shape[0]:
        c, s = robust_center_scale(pick(lt) @ pick(ft).T)
        changes.update(txt_center=c, txt_scale=s)
    return replace(params, **changes)


def calibrate(fused: torch.Tensor | np.ndarray, params: ScoreParams):
    if isinstance(fused, np.ndarray):
        return 1.0 / (1.0 + np.exp(-(params.slope * fused + params.offset)))
    return torch.sigmoid(params.slope * fused + params.offset)


def fit_calibration(fused: np.ndarray, labels: np.ndarray, l2: float = 1e-3, iters: int = 50) -> dict[str, float]:
    """Logistic regression of ``labels`` (1 same animal, 0 not) on ``fused`` by Newton's method → slope, offset."""
    x = np.stack([np.asarray(fused, dtype=np.float64), np.ones(len(fused))], axis=1)
    y = np.asarray(labels, dtype=np.float64)
    w = np.zeros(2)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (p - y) + l2 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    return {"slope": float(w[0]), "offset": float(w[1])}


COMPILE_MIN_RUN_PAIRS = 200_000_000
"""``homeward match`` compiles the fused kernel (``kernel.kernel_for``) for runs of at least this many candidate
pairs: compiling costs 20-90 s per process on this 2-core CPU (less once inductor's disk cache holds it), the compiled
kernel saves ~0.5 s per 4096² tile against eager."""


class Scorer:
    """Scores tiles (for ranking) and explicit pairs (for publishing) of ``lost`` × ``found`` with one code path
    per term, so both give the same fused value."""

    def __init__(
        self, lost: Side, found: Side, params: ScoreParams, device: torch.device | str = "cpu", compile: bool = False
    ) -> None:
        self.lost, self.found, self.params = lost, found, params
        self.compile = compile
        self.device = torch.device(device)
        w = params.weights
        self.w = {t: float(w.get(t, 0.0)) for t in TERMS}
        self._lost_dev = _to(lost, self.device)
        self._found_dev = _to(found, self.device)
        # no text term when a side has no text vectors (e.g. a photo query) or the dimensions differ
        self.use_text = (
            lost.text.shape[1] == found.text.shape[1] and bool(lost.has_text.any()) and bool(found.has_text.any())
        )
        self._slack = [
            torch.from_numpy(place_slack_km(s.geo_source, s.n, params.place_slack_km)).float() for s in (lost, found)
        ]
        self._codes = [
            kernel.side_codes(s.lat, s.lon, s.day, s.species, s.has_text & self.use_text, s.attrs, slack, self.device)
            for s, slack in zip((lost, found), self._slack, strict=True)
        ]
        self._consts = kernel.constants(params, self.w, self.device)
        self._zero = torch.zeros((), device=self.device)
        self._no_image = torch.full((), NEG_INF, device=self.device)

    # ---------------------------------------------------------------------------------------------------- shared
    def _geo_time(self, dist, days):
        p = self.params
        return geo_time_terms(dist, days, base_radius_km=p.base_radius_km, max_speed_km_per_day=p.max_speed_km_per_day,
                              max_days=p.max_days, grace_days=p.grace_days, max_radius_km=p.max_radius_km,
                              scale_km=p.geo_scale_km, scale_km_per_day=p.geo_scale_km_per_day)  # fmt: skip

    # ------------------------------------------------------------------------------------------------------ tile
    def tile(self, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        """Fused scores of lost[r0:r1] × found[c0:c1] (-inf: ruled out)."""
        a, b = self._lost_dev, self._found_dev
        a0, a1 = int(self.lost.det_offsets[r0]), int(self.lost.det_offsets[r1])
        b0, b1 = int(self.found.det_offsets[c0]), int(self.found.det_offsets[c1])
        r, c = slice(r0, r1), slice(c0, c1)
        hits = None
        if a1 > a0 and b1 > b0:
            best, hits = aggregate.tile_image_terms(
                a.det_emb[a0:a1],
                a.det_owner[a0:a1] - r0,
                r1 - r0,
                b.det_emb[b0:b1],
                b.det_owner[b0:b1] - c0,
                c1 - c0,
                self.params.agree_threshold,
            )
        else:
            best = self._no_image
        txt = a.text[r] @ b.text[c].T if self.use_text else self._zero
        codes = self._codes[0].pick((r, None)), self._codes[1].pick((None, c))
        out = kernel.kernel_for((r1 - r0) * (c1 - c0), self.compile)(best, txt, *codes, self._consts)
        if hits is not None:
            kernel.add_bonus(out, *hits, self.w["image"])
        return out

    def listed(self, li: np.ndarray, fi: np.ndarray) -> torch.Tensor:
        """Fused scores of the distinct pairs (lost[li[n]], found[fi[n]]) the way a tile computes them, to rank.

        One matrix product over the detections (and text vectors) of the listings of each side (:func:`_listed_side`:
        the distinct ones, or the whole side when they hold most of its detections), as a tile of them would, but
        the kernel runs on the listed pairs only: a few listings scored against each one's own candidates pay the
        product of their union, not the element-wise work of every pair in it, and gather no block of their own.
        Values differ from :meth:`pairs` (and from another tile) by float rounding, like any tile's; keep one side of
        a call to a few listings (the product is distinct lost × distinct found)."""
        (ea, oa, na, ta, pick_l), (eb, ob, nb, tb, pick_f) = (
            _listed_side(side, dev, idx, self.device)
            for side, dev, idx in ((self.lost, self._lost_dev, li), (self.found, self._found_dev, fi))
        )
        hits = None
        if len(oa) and len(ob):
            best, hits = aggregate.tile_image_terms(ea, oa, na, eb, ob, nb, self.params.agree_threshold)
            best = best[pick_l, pick_f]
        else:
            best = self._no_image.expand(len(li))
        txt = (ta @ tb.T)[pick_l, pick_f] if self.use_text else self._zero
        li_t = torch.as_tensor(np.asarray(li), dtype=torch.int64, device=self.device)
        fi_t = torch.as_tensor(np.asarray(fi), dtype=torch.int64, device=self.device)
        codes = self._codes[0].pick(li_t), self._codes[1].pick(fi_t)
        out = kernel.kernel_for(len(li), self.compile)(best, txt, *codes, self._consts)
        if hits is not None:
            rows, cols, agree = hits
            keep = agree > 1
            if bool(keep.any()):
                key = pick_l * nb + pick_f
                order = torch.argsort(key)
                at = order[torch.searchsorted(key[order], rows[keep] * nb + cols[keep]).clamp(max=len(key) - 1)]
                listed = key[at] == rows[keep] * nb + cols[keep]
                at, bonus = at[listed], aggregate.evidence_bonus(agree[keep][listed])
                out[at] = out[at] + self.w["image"] * bonus
        return out

    # ----------------------------------------------------------------------------------------------------- pairs
    def pairs(
        self,
        li: np.ndarray,
        fi: np.ndarray,
        chunk: int = 2048,
        widths: tuple[int, int] | None = None,
        explained: bool = True,
    ) -> dict[str, np.ndarray]:
        """Every term of the pairs (lost[li[n]], found[fi[n]]), plus fused, score and (``explained``) explanation.
        ``widths``: the (lost, found) detection counts each pair's detections are padded to (default: the chunk's
        widest). Ranking needs only ``fused``: the explanation strings are the costly part, so it can leave them out."""
        parts: list[dict[str, np.ndarray]] = []
        for s in range(0, len(li), chunk):
            part = self._pairs_chunk(np.asarray(li[s : s + chunk]), np.asarray(fi[s : s + chunk]), widths, explained)
            parts.append(part)
        if not parts:
            empty = np.zeros(0, dtype=np.int64)
            parts.append(self._pairs_chunk(empty, empty, widths, explained))
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _pairs_chunk(
        self, li: np.ndarray, fi: np.ndarray, widths: tuple[int, int] | None, explained: bool
    ) -> dict[str, np.ndarray]:
        L, F = self.lost, self.found
        i = torch.as_tensor(li, dtype=torch.int64)
        j = torch.as_tensor(fi, dtype=torch.int64)
        n = len(li)
        ap, am, arow = L.padded(i, widths and widths[0])
        bp, bm, brow = F.padded(j, widths and widths[1])
        if L.det_emb.shape[0] and F.det_emb.shape[0] and n:
            best, agree, pa, pb = aggregate.pair_image_terms(ap, am, bp, bm, self.params.agree_threshold)
        else:
            best = torch.full((n,), NEG_INF)
            agree = torch.zeros(n, dtype=torch.int32)
            pa = pb = torch.zeros(n, dtype=torch.int64)
        if self.use_text:
            txt = (L.text[i] * F.text[j]).sum(-1)
            has_txt = L.has_text[i] & F.has_text[j]
        else:
            txt = torch.zeros(n)
            has_txt = torch.zeros(n, dtype=torch.bool)
        la, fa = L.attrs.take(i), F.attrs.take(j)
        attr = attribute_terms(la, fa, outer=False)
        dist = haversine_km(L.lat[i], L.lon[i], F.lat[j], F.lon[j])
        days = F.day[j] - L.day[i]
        codes = self._codes[0].pick(i.to(self.device)), self._codes[1].pick(j.to(self.device))
        has_img = torch.isfinite(best)
        fused = kernel.fused_kernel(best.to(self.device), txt.to(self.device), *codes, self._consts).cpu()
        fused = fused + torch.where(has_img, self.w["image"] * aggregate.evidence_bonus(agree), 0.0)
        geo, tim, _ = self._geo_time((dist - self._slack[0][i] - self._slack[1][j]).clamp(min=0.0), days)
        z_img = (torch.where(has_img, best, torch.zeros_like(best)) - self.params.img_center) / self.params.img_scale
        extra = {"geo": geo, "time": tim, "z_img": z_img}
        rows_a = torch.gather(arow, 1, pa[:, None])[:, 0] if n else pa
        rows_b = torch.gather(brow, 1, pb[:, None])[:, 0] if n else pb
        lost_photo = np.where(has_img.numpy(), L.det_photo[rows_a.numpy()] if len(L.det_photo) else None, None)
        found_photo = np.where(has_img.numpy(), F.det_photo[rows_b.numpy()] if len(F.det_photo) else None, None)
        known_attr = attr["known"] > 0
        out = {
            "fused": fused.numpy().astype(np.float64),
            "score": calibrate(fused, self.params).numpy().astype(np.float64),
            "image_sim": torch.where(has_img, best, torch.full_like(best, float("nan"))).numpy().astype(np.float64),
            "image_z": torch.where(has_img, extra["z_img"], torch.full_like(best, float("nan"))).numpy(),
            "photos_agreeing": torch.where(has_img, agree, torch.zeros_like(agree)).numpy().astype(np.int32),
            "text_sim": torch.where(has_txt, txt, torch.full_like(txt, float("nan"))).numpy().astype(np.float64),
            "attribute_score": torch.where(known_attr, (attr["evidence"] + 1) / 2, float("nan")).numpy(),
            "geo_score": extra["geo"].numpy().astype(np.float64),
            "time_score": extra["time"].numpy().astype(np.float64),
            "distance_km": dist.numpy().astype(np.float64),
            "days_apart": days.numpy().astype(np.float64),
            "no_photo": (~has_img).numpy(),
            "lost_photo_id": lost_photo.astype(object),
            "found_photo_id": found_photo.astype(object),
        }
        for k in ("colour", "sex", "size", "breed"):
            out[f"attr_{k}"] = attr[k].numpy()
        if not explained:
            return out
        lost_dets, found_dets = L.det_counts[i].tolist(), F.det_counts[j].tolist()
        out["explanation"] = np.array(
            [explain({k: v[n_] for k, v in out.items()}, self.params, lost_dets[n_], found_dets[n_],
                     (L.geo_source_of(li[n_]), F.geo_source_of(fi[n_])))
             for n_ in range(n)],
            dtype=object,
        )  # fmt: skip
        return out


def _fmt(x: float, spec: str) -> str | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


#: How the explanation names a place that is not the page's own coordinates (``listings.geo_source``).
PLACED_BY = {
    "postcode": "its postcode",
    "address": "its address's town",
    "city": "its town name",
    "region": "its region (coarse)",
    "shelter": "the shelter",
}


def explain(
    row: Mapping[str, Any],
    params: ScoreParams,
    n_lost_det: Any = 1,
    n_found_det: Any = 1,
    geo_sources: tuple[str | None, str | None] = (None, None),
) -> str:
    """One line a shelter worker can read: what agreed, what did not, what was missing; for a distance, where each
    side's place came from when not the page's own coordinates (``geo_sources``: lost, found), with its slack."""
    parts: list[str] = []
    if not math.isfinite(row["fused"]):
        return "ruled out (species, date or distance)"
    if row["no_photo"]:
        missing = "lost" if int(n_lost_det) == 0 else "found" if int(n_found_det) == 0 else "either"
        parts.append(f"no photo on the {missing} side: text, attributes, place and time only")
    else:
        agree = int(row["photos_agreeing"])
        more = f"; {agree} photo pairs agree" if agree > 1 else ""
        parts.append(f"image {row['image_sim']:.2f} ({row['image_z']:+.1f} spreads over background{more})")
    if _fmt(row["text_sim"], ".2f"):
        parts.append(f"text {row['text_sim']:.2f}")
    said = []
    for k in ("colour", "sex", "size", "breed"):
        v = row[f"attr_{k}"]
        if not math.isnan(v):
            said.append(f"{k} {'agrees' if v > 0 else 'close' if v == 0 else 'differs'}")
    if said:
        parts.append(", ".join(said))
    if _fmt(row["distance_km"], ".1f"):
        slack = params.place_slack_km
        placed = [
            f"{side} placed by {PLACED_BY[s]}" + (f" ±{slack[s]:g} km" if slack.get(s) else "")
            for side, s in zip(("lost", "found"), geo_sources, strict=True)
            if s in PLACED_BY
        ]
        parts.append(f"{row['distance_km']:.1f} km apart" + (f" ({', '.join(placed)})" if placed else ""))
    else:
        parts.append("no location")
    days = row["days_apart"]
    if math.isnan(days):
        parts.append("no dates")
    elif days >= 0:
        parts.append(f"found {days:.0f} days after lost")
    else:
        parts.append(f"found {-days:.0f} days before the lost date (within grace)")
    return "; ".join(parts) + f"; score {row['score']:.2f}"


def _detection_rows(side: Side, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The detection rows of listings ``idx`` (in that order) and, for each, its position in ``idx``."""
    counts = side.det_counts.numpy()[idx]
    starts = side.det_offsets.numpy()[idx]
    before = np.cumsum(counts) - counts
    return np.repeat(starts - before, counts) + np.arange(int(counts.sum())), np.repeat(np.arange(len(idx)), counts)


WHOLE_SIDE_SHARE = 0.5
""":meth:`Scorer.listed` multiplies by a whole side's vectors, in place, once a call's listings of that side hold this
share of its detections: gathering them copied most of the side on every call (at 50k listings, a call's 32 rescored
lost listings reached 19k of the 32k found listings: 52k of 80k detection vectors, 107 MB copied), which cost more
than the product over the rest."""


def _listed_side(
    side: Side, dev: Any, idx: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor, torch.Tensor]:
    """One side of :meth:`Scorer.listed`: (detection vectors, each one's listing position, listings, their text
    vectors, each pair's listing position): the distinct listings of ``idx``, or the whole side (no copy) when they
    hold :data:`WHOLE_SIDE_SHARE` of its detections."""
    distinct, at = np.unique(idx, return_inverse=True)
    rows, owner = _detection_rows(side, distinct)
    if len(rows) >= WHOLE_SIDE_SHARE * side.det_emb.shape[0]:
        at_whole = torch.as_tensor(np.asarray(idx), dtype=torch.int64, device=device)
        return dev.det_emb, dev.det_owner, side.n, dev.text, at_whole
    chosen = torch.from_numpy(distinct).to(device)
    return (
        dev.det_emb.index_select(0, torch.from_numpy(rows).to(device)),
        torch.from_numpy(owner).to(device),
        len(distinct),
        dev.text.index_select(0, chosen),
        torch.from_numpy(at.reshape(-1)).to(device),
    )


def _to(side: Side, device: torch.device) -> Any:
    """A light namespace of the side's tensors on ``device`` (the Side itself stays on the CPU)."""

    class _Dev:
        pass

    d = _Dev()
    for name in ("species", "lat", "lon", "day", "det_emb", "det_owner", "text", "has_text"):
        setattr(d, name, getattr(side, name).to(device))
    d.attrs = side.attrs.to(device)
    return d
