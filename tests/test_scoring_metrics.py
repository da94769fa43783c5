"""The eval protocol's maths, against small cases computed by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from engine.scoring.metrics import pair_scores, reid_metrics, retrieval_metrics, roc_auc_eer


def test_perfectly_separable_set() -> None:
    # two identities, two images each, each identity on its own axis
    emb = np.array([[1, 0], [0.99, 0.141], [0, 1], [0.141, 0.99]], dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    m = reid_metrics(emb, emb, np.array([0, 0, 1, 1]))
    assert m["top1"] == 1.0 and m["top5"] == 1.0 and m["map"] == 1.0
    assert m["eer"] == 0.0 and m["auc"] == 1.0
    assert m["pairs_same"] == 2 and m["pairs_different"] == 4  # unordered pairs of a symmetric set


def test_known_map_and_topk() -> None:
    # query 0 (identity 0) ranks gallery [id1, id0, id0] → AP = (1/2 + 2/3) / 2 = 7/12
    # query 1 (identity 1) ranks gallery [id1, id0, id0] → AP = 1
    sims = np.array([[0.9, 0.8, 0.7], [0.9, 0.1, 0.2]])
    m = retrieval_metrics(sims, [0, 1], [1, 0, 0])
    assert m["map"] == pytest.approx((7 / 12 + 1) / 2)
    assert m["top1"] == 0.5 and m["top5"] == 1.0


def test_excluded_and_unanswerable_queries() -> None:
    sims = np.array([[1.0, 0.2, 0.1], [0.2, 1.0, 0.3], [0.1, 0.3, 1.0]])
    m = retrieval_metrics(sims, [0, 0, 1], [0, 0, 1], exclude=np.eye(3, dtype=bool))
    # query 2 is the only image of its identity: skipped, not counted as a miss
    assert m["skipped_queries"] == 1 and m["queries"] == 2
    # query 0: nearest other image is image 1 (same identity) → hit, AP 1
    # query 1: image 2 (0.3, another identity) outranks image 0 (0.2) → miss, AP 1/2
    assert m["top1"] == 0.5 and m["map"] == pytest.approx(0.75)


def test_auc_and_eer_by_hand() -> None:
    # positives 0.9, 0.4; negatives 0.5, 0.1 → 3 of 4 (pos, neg) orderings right
    r = roc_auc_eer([0.9, 0.4, 0.5, 0.1], [1, 1, 0, 0])
    assert r["auc"] == pytest.approx(0.75)
    # accepting ≥ 0.5: one of two positives rejected, one of two negatives accepted
    assert r["eer"] == pytest.approx(0.5)
    # ties count one half
    assert roc_auc_eer([0.5, 0.5], [1, 0])["auc"] == pytest.approx(0.5)
    assert math.isnan(roc_auc_eer([0.1, 0.2], [1, 1])["auc"])


def test_auc_equals_brute_force_and_eer_lies_between_roc_points() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    s = rng.normal(size=300).round(1) + y
    r = roc_auc_eer(s, y)
    pos, neg = s[y], s[~y]
    brute = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)])
    assert r["auc"] == pytest.approx(brute)
    fpr = np.array([(neg >= t).mean() for t in np.unique(s)])
    fnr = np.array([(pos < t).mean() for t in np.unique(s)])
    i = np.argmin(np.abs(fpr - fnr))
    assert min(fpr[i], fnr[i]) - 0.02 <= r["eer"] <= max(fpr[i], fnr[i]) + 0.02


def test_pair_scores_count_each_unordered_pair_once() -> None:
    sims = np.arange(9, dtype=np.float32).reshape(3, 3)
    s, same = pair_scores(sims, [0, 0, 1], [0, 0, 1], exclude=np.eye(3, dtype=bool), upper_only=True)
    assert s.tolist() == [1, 2, 5] and same.tolist() == [True, False, False]
