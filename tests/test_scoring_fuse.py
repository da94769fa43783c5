"""Fusion: hard rules, missing data, photo→listing aggregation, attributes, geo/time priors and calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.config import load_settings
from engine.errors import HomewardError
from engine.scoring import aggregate, attributes, fuse
from engine.scoring.allpairs import blocked_topk, tile_bounds
from engine.scoring.fuse import (
    ScoreParams,
    Scorer,
    Side,
    background_stats,
    calibrate,
    fit_calibration,
    robust_center_scale,
)
from engine.scoring.geo import geo_time_terms, haversine_km

NAN = float("nan")


def make_side(
    n: int,
    dets_per_listing: list[int],
    rng: np.random.Generator,
    *,
    dim: int = 16,
    species: list[int] | None = None,
    lat: list[float] | None = None,
    lon: list[float] | None = None,
    day: list[float] | None = None,
    emb: np.ndarray | None = None,
    text: np.ndarray | None = None,
    colours: list | None = None,
    sexes: list | None = None,
) -> Side:
    owner = np.repeat(np.arange(n), dets_per_listing)
    if emb is None:
        emb = rng.standard_normal((len(owner), dim)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    if text is None:
        text = rng.standard_normal((n, 8)).astype(np.float32)
        text /= np.linalg.norm(text, axis=1, keepdims=True)
    return Side(
        listing_ids=np.array([f"id{i}" for i in range(n)], dtype=object),
        species=torch.tensor(species or [1] * n),
        lat=torch.tensor(lat if lat is not None else [47.6] * n, dtype=torch.float32),
        lon=torch.tensor(lon if lon is not None else [-122.3] * n, dtype=torch.float32),
        day=torch.tensor(day if day is not None else [100.0] * n, dtype=torch.float32),
        attrs=attributes.encode(sexes or [None] * n, [None] * n, colours or [None] * n, [None] * n),
        det_emb=torch.from_numpy(np.asarray(emb, dtype=np.float32)),
        det_owner=torch.from_numpy(owner),
        det_photo=np.array([f"p{i}" for i in range(len(owner))], dtype=object),
        text=torch.from_numpy(text),
        has_text=torch.ones(n, dtype=torch.bool),
    )


def params(**kw) -> ScoreParams:
    return ScoreParams.from_settings(load_settings(overrides={"match": kw}, environ={}).match)


# --------------------------------------------------------------------------------------------------------- geo, time
def test_haversine_known_distance() -> None:
    d = haversine_km(torch.tensor(48.8566), torch.tensor(2.3522), torch.tensor(51.5074), torch.tensor(-0.1278))
    assert abs(float(d) - 343.5) < 1.0  # Paris–London
    assert math.isnan(float(haversine_km(torch.tensor(NAN), torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.0))))


def test_geo_time_hard_rules_and_missing_values() -> None:
    dist = torch.tensor([1.0, 1.0, 1.0, 100.0, 100.0, NAN, 1.0, 9999.0, 1.0])
    days = torch.tensor([2.0, -2.0, -10.0, 1.0, 4.0, 5.0, NAN, NAN, 400.0])
    geo, tim, ok = geo_time_terms(dist, days, base_radius_km=15, max_speed_km_per_day=25, max_days=365, grace_days=3)
    # found 2 days after, nearby: fine; 2 days before: within grace; 10 days before: ruled out
    assert ok[:3].tolist() == [True, True, False]
    # 100 km after one day is beyond 15 + 25·1 km; after four days (115 km) it is plausible
    assert ok[3:5].tolist() == [False, True]
    # unknown distance or date: kept, no prior on the missing term
    assert ok[5] and math.isnan(float(geo[5])) and not math.isnan(float(tim[5]))
    assert ok[6] and math.isnan(float(tim[6])) and not math.isnan(float(geo[6]))
    # unknown dates use max_days for the distance rule: 9999 km is beyond 15 + 25·365
    assert not ok[7]
    assert not ok[8]  # more than max_days later
    assert float(geo[0]) > float(geo[4]) and float(tim[0]) > float(tim[4])


def test_plausible_radius_grows_with_days_up_to_the_cap() -> None:
    rules = dict(base_radius_km=8, max_speed_km_per_day=1, max_days=365, grace_days=3, max_radius_km=10)
    dist = torch.tensor([7.0, 9.0, 9.0, 11.0, 11.0, 11.0, 9.5])
    days = torch.tensor([0.0, 0.0, 1.0, 1.0, 30.0, 300.0, NAN])
    _, _, ok = geo_time_terms(dist, days, **rules)
    # 8 km on the day, 9 km a day later: the radius grows with the days ...
    assert ok.tolist()[:3] == [True, False, True]
    # ... up to the cap, however long ago the animal went missing (uncapped, 300 days would allow 308 km)
    assert not ok[3:6].any() and ok[6]
    _, _, uncapped = geo_time_terms(dist, days, **{**rules, "max_radius_km": math.inf})
    assert uncapped[4:6].all()
    # the distance prior uses the capped radius too: a day later and a month later score the same at 9 km
    far = geo_time_terms(torch.tensor([9.0, 9.0]), torch.tensor([2.0, 30.0]), **rules)[0]
    assert float(far[0]) == pytest.approx(float(far[1]))


def _reference_fused(lost: Side, found: Side, p: ScoreParams) -> np.ndarray:
    """The fused score by its definition (``engine.scoring.fuse`` docstring), pair by pair, in float64."""
    from engine.scoring.attributes import attribute_terms

    w = p.weights
    attr = attribute_terms(lost.attrs, found.attrs, outer=True)["evidence"].double().numpy()
    t = lambda x: x.double()  # noqa: E731
    dist = haversine_km(t(lost.lat)[:, None], t(lost.lon)[:, None], t(found.lat)[None, :], t(found.lon)[None, :])
    slack = {"city": 10.0, "shelter": 15.0}  # the documented default of match.place_slack_km
    assert dict(p.place_slack_km) == slack
    s_l, s_f = (torch.tensor([slack.get(g, 0.0) for g in (s.geo_source if s.geo_source is not None else [None] * s.n)],
                             dtype=torch.float64) for s in (lost, found))  # fmt: skip
    dist = (dist - s_l[:, None] - s_f[None, :]).clamp(min=0)
    days = t(found.day)[None, :] - t(lost.day)[:, None]
    geo, tim, ok = geo_time_terms(dist, days, base_radius_km=p.base_radius_km, max_days=p.max_days,
                                  max_speed_km_per_day=p.max_speed_km_per_day, grace_days=p.grace_days,
                                  max_radius_km=p.max_radius_km, scale_km=p.geo_scale_km,
                                  scale_km_per_day=p.geo_scale_km_per_day)  # fmt: skip
    e_geo = np.nan_to_num(2 * geo.numpy() - 1, nan=0.0)
    e_time = np.nan_to_num(2 * tim.numpy() - 1, nan=0.0)
    a_emb, b_emb = lost.det_emb.double().numpy(), found.det_emb.double().numpy()
    out = np.zeros((lost.n, found.n))
    for i in range(lost.n):
        for j in range(found.n):
            sims = a_emb[lost.det_owner.numpy() == i] @ b_emb[found.det_owner.numpy() == j].T
            e_img = 0.0
            if sims.size:
                agree = int((sims >= p.agree_threshold).sum())
                e_img = max((sims.max() - p.img_center) / p.img_scale, -2) / 4 + 0.05 * min(max(agree - 1, 0), 3)
            e_txt = 0.0
            if lost.has_text[i] and found.has_text[j]:
                cos = float(lost.text[i].double() @ found.text[j].double())
                e_txt = max((cos - p.txt_center) / p.txt_scale, -2) / 4
            sp_a, sp_b = int(lost.species[i]), int(found.species[j])
            fused = (w["image"] * e_img + w["text"] * e_txt + w["attributes"] * attr[i, j] + w["geo"] * e_geo[i, j]
                     + w["time"] * e_time[i, j])  # fmt: skip
            out[i, j] = fused if ok[i, j] and (sp_a == sp_b or 0 in (sp_a, sp_b)) else -np.inf
    return out


def test_fused_kernel_equals_the_definition_on_random_data() -> None:
    """Tiles and pair lists of the rewritten kernel against the definition in float64: several photos or none per
    listing, missing coordinates, dates and texts, all attribute states, agreeing photo pairs (the bonus), places
    that are exact, a town's centre or a shelter's (the place slack)."""
    rng = np.random.default_rng(21)
    n_l, n_f = 23, 31

    def side(n: int) -> Side:
        s = make_side(
            n, rng.integers(0, 4, n).tolist(), rng, species=rng.integers(0, 3, n).tolist(),
            lat=list(np.where(rng.random(n) < 0.15, NAN, 47.6 + rng.normal(0, 0.12, n))),
            lon=list(-122.3 + rng.normal(0, 0.12, n)),
            day=list(np.where(rng.random(n) < 0.15, NAN, rng.integers(0, 40, n).astype(float))),
        )  # fmt: skip
        s.geo_source = rng.choice(["page", "city", "shelter", "postcode"], n).astype(object)
        s.attrs = attributes.encode(
            rng.choice([None, "male", "female"], n).tolist(),
            rng.choice([None, "small", "medium", "large", "xl"], n).tolist(),
            rng.choice([None, "black", "black and white", "red", "tricolor"], n).tolist(),
            rng.choice([None, "labrador", "labrador mix", "poodle", "golden retriever", "mixed"], n).tolist(),
        )
        s.has_text = torch.from_numpy(rng.random(n) < 0.7)
        return s

    lost, found = side(n_l), side(n_f)
    found.det_emb[: min(len(found.det_emb), len(lost.det_emb))] = lost.det_emb[: len(found.det_emb)]  # true pairs
    p = background_stats(lost, found, params())
    ref = _reference_fused(lost, found, p)
    scorer = Scorer(lost, found, p)
    finite = np.isfinite(ref)
    assert 0.2 < finite.mean() < 0.95, "the random data should exercise both ruled-out and scored pairs"
    li, fi = np.meshgrid(np.arange(n_l), np.arange(n_f), indexing="ij")
    for got in (scorer.tile(0, n_l, 0, n_f).numpy(), scorer.pairs(li.ravel(), fi.ravel())["fused"].reshape(n_l, n_f)):
        assert np.array_equal(np.isfinite(got), finite)
        assert np.abs(got[finite] - ref[finite]).max() < 1e-4


def test_a_town_or_shelter_place_counts_its_slack() -> None:
    """A lost dog named by its town (the town's centre) and a found dog placed at its shelter, 25 km apart, may be
    the same street: they pair (25 - 10 - 15 km is within the radius), with the true distance reported and the
    prior of a pair 0 km apart; the same two points as exact coordinates are ruled out. The slack is configurable
    and validated."""
    rng = np.random.default_rng(3)
    lost = make_side(2, [1, 1], rng, lat=[47.6, 47.6], lon=[-122.3, -122.3])
    found = make_side(2, [1, 1], rng, lat=[47.6 + 25 / 111.2, 47.6 + 3 / 111.2], lon=[-122.3, -122.3])
    lost.geo_source = np.array(["city", "page"], dtype=object)
    found.geo_source = np.array(["shelter", "page"], dtype=object)
    p = background_stats(lost, found, params())
    scorer = Scorer(lost, found, p)
    tile = scorer.tile(0, 2, 0, 2).numpy()
    assert np.isfinite(tile[0, 0]) and not np.isfinite(tile[1, 0])  # exact lost point, 25 - 15 km > 9 km
    assert np.isfinite(tile[0, 1]) and np.isfinite(tile[1, 1])
    terms = scorer.pairs(np.array([0, 1]), np.array([0, 0]))
    assert terms["distance_km"][0] == pytest.approx(25.0, abs=0.1) and terms["geo_score"][0] == pytest.approx(1.0)
    assert terms["fused"][0] == pytest.approx(tile[0, 0], abs=1e-5) and not np.isfinite(terms["fused"][1])
    assert "25.0 km apart (lost placed by its town name ±10 km, found placed by the shelter ±15 km)" in str(
        terms["explanation"][0]
    )
    exact = Scorer(lost, found, background_stats(lost, found, params(place_slack_km={})))
    assert not np.isfinite(exact.tile(0, 1, 0, 1).numpy()).any()
    for bad, message in (({"town": 5}, "unknown place sources"), ({"city": -1}, "finite kilometres")):
        with pytest.raises(HomewardError, match=message):
            params(place_slack_km=bad)


# ---------------------------------------------------------------------------------------------------------- attributes
def test_colour_words_in_english_and_russian() -> None:
    assert attributes.canonical_colours("Chocolate/White") == {"brown", "white"}
    assert attributes.canonical_colours(["рыжий с белым"]) == {"red", "white"}
    assert attributes.canonical_colours("Gray Tabby") == {"grey", "tabby"}
    assert attributes.canonical_colours("tricolor") == {"black", "white", "tan"}
    assert attributes.canonical_colours(None) == set()
    assert attributes.breed_tokens("Labrador Retriever Mix") == ["labrador", "retriever"]
    assert attributes.breed_tokens("метис") == []


def test_attribute_evidence_signs() -> None:
    a = attributes.encode(["male", "male", None], ["large", "small", None], [["black"], ["black"], None],
                          ["labrador retriever", "poodle", "mixed"])  # fmt: skip
    b = attributes.encode(["male", "female", None], ["large", "xlarge", None], [["black", "white"], ["white"], None],
                          ["labrador mix", "beagle", None])  # fmt: skip
    t = attributes.attribute_terms(a, b, outer=False)
    assert t["colour"][0] == 1.0 and t["colour"][1] == -1.0 and math.isnan(t["colour"][2])
    assert t["sex"][0] > 0 and t["sex"][1] == -1.0
    assert t["size"][0] > 0 and t["size"][1] == -1.0
    assert t["breed"][0] == 0.4 and t["breed"][1] < 0  # shared word "labrador"
    assert t["evidence"][0] > 0 > t["evidence"][1]
    assert t["evidence"][2] == 0.0 and t["known"][2] == 0  # nothing known: no evidence either way
    outer = attributes.attribute_terms(a, b, outer=True)
    assert torch.allclose(torch.diagonal(outer["evidence"]), t["evidence"])


# ----------------------------------------------------------------------------------------------------------- aggregate
def test_best_photo_pair_and_agreement_count() -> None:
    rng = np.random.default_rng(3)
    lost = make_side(3, [2, 1, 3], rng)
    found = make_side(4, [1, 3, 2, 1], rng)
    best, (rows, cols, counts) = aggregate.tile_image_terms(
        lost.det_emb, lost.det_owner, 3, found.det_emb, found.det_owner, 4, agree_threshold=0.0
    )
    agree = torch.zeros((3, 4), dtype=torch.int64)
    agree[rows, cols] = counts
    sim = (lost.det_emb @ found.det_emb.T).numpy()
    lo, fo = lost.det_owner.numpy(), found.det_owner.numpy()
    for i in range(3):
        for j in range(4):
            block = sim[np.ix_(lo == i, fo == j)]
            assert math.isclose(float(best[i, j]), block.max(), abs_tol=1e-6)
            assert int(agree[i, j]) == int((block >= 0).sum())
    # the padded per-pair path gives the same numbers
    li, fi = torch.tensor([0, 2, 1]), torch.tensor([1, 2, 3])
    ap, am, _ = lost.padded(li)
    bp, bm, _ = found.padded(fi)
    pbest, pagree, _, _ = aggregate.pair_image_terms(ap, am, bp, bm, 0.0)
    assert torch.allclose(pbest, best[li, fi], atol=1e-6) and torch.equal(pagree.long(), agree[li, fi])
    assert aggregate.evidence_bonus(torch.tensor([0, 1, 2, 9])).tolist() == pytest.approx([0, 0, 0.05, 0.15])


# ---------------------------------------------------------------------------------------------------------------- fuse
def test_tile_and_pair_paths_agree_with_missing_data() -> None:
    rng = np.random.default_rng(5)
    lost = make_side(5, [1, 0, 2, 1, 3], rng, lat=[47.6, NAN, 47.61, 47.7, 47.6],
                     day=[100, 100, NAN, 101, 99], species=[1, 1, 0, 2, 1])  # fmt: skip
    found = make_side(6, [2, 1, 0, 1, 1, 2], rng, lon=[-122.3, -122.31, -122.3, NAN, -122.2, -122.3],
                      day=[101, 103, 100, NAN, 120, 98], species=[1, 2, 1, 0, 1, 1])  # fmt: skip
    p = background_stats(lost, found, params())
    scorer = Scorer(lost, found, p)
    tile = scorer.tile(0, 5, 0, 6)
    li, fi = np.meshgrid(np.arange(5), np.arange(6), indexing="ij")
    terms = scorer.pairs(li.ravel(), fi.ravel())
    fused = terms["fused"].reshape(5, 6)
    assert np.array_equal(np.isfinite(fused), torch.isfinite(tile).numpy())
    finite = np.isfinite(fused)
    assert np.allclose(fused[finite], tile.numpy()[finite], atol=1e-5)
    # species: dog × cat ruled out, unknown pairs with anything
    assert not finite[0, 1] and not finite[3, 0] and finite[2, 1] and finite[3, 3]
    # a listing without photos is kept, flagged, with no image similarity
    no_photo = terms["no_photo"].reshape(5, 6)
    assert no_photo[1].all() and no_photo[:, 2].all() and not no_photo[0, 0]
    assert np.isnan(terms["image_sim"].reshape(5, 6)[1]).all() and finite[1, 0]
    # missing coordinates or dates: no prior, not dropped
    assert np.isnan(terms["distance_km"].reshape(5, 6)[1]).all()
    assert np.isnan(terms["days_apart"].reshape(5, 6)[2]).all() and finite[2, 0]
    expl = terms["explanation"].reshape(5, 6)
    assert "no photo on the lost side" in expl[1, 0] and "no location" in expl[1, 0]
    assert "ruled out" in expl[0, 1]
    assert ((terms["score"] >= 0) & (terms["score"] <= 1)).all()


@pytest.mark.parametrize("share", [0.0, 2.0], ids=["whole-sides", "gathered-listings"])
def test_listed_pairs_score_as_their_tile(monkeypatch: pytest.MonkeyPatch, share: float) -> None:
    """``Scorer.listed`` (a few listings against their own candidates) gives the tile's values, -inf and the
    several-photos bonus included, for any subset of pairs in any order, whether it multiplies by the whole sides'
    vectors or gathers those of the listings it was given."""
    monkeypatch.setattr(fuse, "WHOLE_SIDE_SHARE", share)
    rng = np.random.default_rng(7)
    lost = make_side(5, [1, 0, 2, 1, 3], rng, lat=[47.6, NAN, 47.61, 47.7, 47.6],
                     day=[100, 100, NAN, 101, 99], species=[1, 1, 0, 2, 1])  # fmt: skip
    found = make_side(6, [2, 1, 0, 1, 3, 2], rng, lon=[-122.3, -122.31, -122.3, NAN, -122.2, -122.3],
                      day=[101, 103, 100, NAN, 120, 98], species=[1, 2, 1, 0, 1, 1])  # fmt: skip
    found.det_emb[6:9] = lost.det_emb[4:7]  # lost 4 and found 4: three agreeing photo pairs
    p = background_stats(lost, found, params())
    scorer = Scorer(lost, found, p)
    tile = scorer.tile(0, 5, 0, 6).numpy()
    li, fi = np.meshgrid(np.arange(5), np.arange(6), indexing="ij")
    pick = rng.permutation(30)[:17]
    listed = scorer.listed(li.ravel()[pick], fi.ravel()[pick]).numpy()
    expected = tile.ravel()[pick]
    assert np.array_equal(np.isfinite(listed), np.isfinite(expected)) and not np.isfinite(expected).all()
    assert np.allclose(listed[np.isfinite(listed)], expected[np.isfinite(expected)], atol=1e-5)
    whole = scorer.listed(li.ravel(), fi.ravel()).numpy().reshape(5, 6)
    assert whole[4, 4] > whole[4, 0] and np.isclose(whole[4, 4], tile[4, 4], atol=1e-5)


def test_stronger_evidence_scores_higher() -> None:
    rng = np.random.default_rng(7)
    emb = rng.standard_normal((40, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    lost = make_side(1, [1], rng, emb=emb[:1], colours=[["black"]], sexes=["male"])
    twin = emb[0] + 0.1 * rng.standard_normal(16).astype(np.float32)
    found_emb = np.vstack([twin / np.linalg.norm(twin), twin / np.linalg.norm(twin), emb[1:39]])
    found = make_side(
        39,
        [1] * 39,
        rng,
        emb=found_emb,
        colours=[["black"], ["white"]] + [None] * 37,
        sexes=["male", "female"] + [None] * 37,
        lat=[47.6, 47.6] + [47.6] * 37,
    )
    p = background_stats(lost, found, params())
    fused = Scorer(lost, found, p).tile(0, 1, 0, 39)[0]
    # same image, agreeing attributes beats same image, conflicting attributes; both beat every other animal
    assert fused[0] > fused[1] > fused[2:].max()


def test_weights_validated_and_calibration_fit() -> None:
    with pytest.raises(HomewardError, match="unknown terms"):
        params(weights={"image": 1.0, "smell": 0.5})
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, 5000)
    y = (rng.random(5000) < 1 / (1 + np.exp(-(3.0 * x - 1.0)))).astype(float)
    fit = fit_calibration(x, y)
    assert abs(fit["slope"] - 3.0) < 0.3 and abs(fit["offset"] + 1.0) < 0.2
    p = params()
    assert float(calibrate(torch.tensor(0.5), p)) == pytest.approx(0.5)  # the documented default midpoint


def test_calibration_is_a_config_key() -> None:
    """``match.calibration`` is declared: set from the environment it reaches the scorer; one key keeps the other's
    default; an unknown key is refused by name."""
    env = {"HOMEWARD_MATCH__CALIBRATION__SLOPE": "3"}
    p = ScoreParams.from_settings(load_settings(environ=env).match)
    assert (p.slope, p.offset) == (3.0, -4.0)
    assert float(calibrate(torch.tensor(4 / 3), p)) == pytest.approx(0.5)
    with pytest.raises(HomewardError, match=r"unknown keys \['slop'\]"):
        params(calibration={"slop": 2.0})


def test_background_is_robust_to_true_pairs() -> None:
    sims = torch.cat([torch.normal(0.5, 0.05, (990,)), torch.full((10,), 0.99)])
    center, scale = robust_center_scale(sims)
    assert abs(center - 0.5) < 0.01 and abs(scale - 0.05) < 0.01


def test_multi_detection_tiles_match_single_tile() -> None:
    rng = np.random.default_rng(11)
    counts_l = rng.integers(0, 4, 40).tolist()
    counts_f = rng.integers(0, 4, 30).tolist()
    lost = make_side(40, counts_l, rng, lat=list(47.6 + rng.normal(0, 0.05, 40)))
    found = make_side(30, counts_f, rng, lat=list(47.6 + rng.normal(0, 0.05, 30)))
    scorer = Scorer(lost, found, background_stats(lost, found, params()))
    results = []
    for tile in (3, 4096):
        top = blocked_topk(40, 30, 4, scorer.tile, tile_bounds(lost.det_counts.numpy(), tile),
                           tile_bounds(found.det_counts.numpy(), tile))  # fmt: skip
        results.append(top)
    assert torch.equal(results[0].row_idx, results[1].row_idx)
    assert torch.equal(results[0].col_idx, results[1].col_idx)
    assert torch.allclose(results[0].row_score, results[1].row_score, atol=1e-5)
