"""The vector index enrichment keeps on ``detections`` and ``homeward bench search`` (tiny sizes, low thresholds)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.config import Settings
from engine.storage import LanceStore
from engine.vector_index import index_stats, nearest, refresh_index
from ray_jobs.bench.search import write_vectors

DIM = 32


def exact_top(vectors: np.ndarray, q: np.ndarray, k: int = 10) -> set[int]:
    return set(np.argsort(-(vectors @ q))[:k].tolist())


def ids(table) -> list[int]:
    return [int(d[1:]) for d in table["detection_id"].to_pylist()]


def test_index_past_the_threshold_folded_in_then_retrained(settings: Settings) -> None:
    # every partition probed: the recall checked below is the index's, not k-means' random split of the look-alikes
    search = {"index_min_rows": 2000, "index_partition_rows": 600, "nprobes": 5}
    cfg = settings.with_overrides({"search": search}).search
    store = LanceStore(settings.lance)
    vectors = write_vectors(store, 0, 1500, DIM, "m", groups=20, seed=1)
    assert refresh_index(store, cfg)["action"] == "none"  # below the threshold: brute force, no index
    assert index_stats(store.open("detections")) is None
    vectors = np.vstack([vectors, write_vectors(store, 1500, 3000, DIM, "m", groups=20, seed=1)])
    built = refresh_index(store, cfg)
    assert built["action"] == "built" and built["partitions"] == 5
    table = store.open("detections")
    assert index_stats(table) == {"index_type": "IVF_HNSW_SQ", "indexed": 3000, "unindexed": 0}
    queries = vectors[::300] + np.random.default_rng(0).normal(0, 0.05, (10, DIM)).astype(np.float32)
    recall = [len(set(ids(nearest(table, q, 10, cfg, columns=["detection_id"]))) & exact_top(vectors, q)) / 10
              for q in queries]  # fmt: skip
    assert np.mean(recall) >= 0.95

    # rows added after training are searched before the index knows them (LanceDB scans unindexed rows exactly)
    new = write_vectors(store, 3000, 3300, DIM, "m", groups=20, seed=2)
    table = store.open("detections")
    assert index_stats(table)["unindexed"] == 300
    assert ids(nearest(table, new[7], 1, cfg, where="embed_model = 'm'", columns=["detection_id"])) == [3007]
    updated = refresh_index(store, cfg)
    assert updated["action"] == "updated" and updated["unindexed"] == 0 and updated["indexed"] == 3300
    assert refresh_index(store, cfg)["action"] == "current"
    write_vectors(store, 3300, 5000, DIM, "m", groups=20, seed=3)  # more than half the index again: retrained
    rebuilt = refresh_index(store, cfg)
    assert rebuilt["action"] == "built" and "added since training" in rebuilt["reason"]
    assert index_stats(store.open("detections"))["indexed"] == 5000


def test_bench_search_smoke(settings: Settings, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from ray_jobs.cli import main

    code = main(["bench", "search", "--n", "1200", "--queries", "10", "--profile", "tiny", "--work-dir",
                 str(tmp_path), "--data-dir", settings.data_dir,
                 "--set", "search.index_partition_rows=400"])  # fmt: skip
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["n"] == 1200 and out["queries"] == 10 and out["indexed_rows"] == 1200
    assert out["index_type"] == "IVF_HNSW_SQ" and out["index_params"]["partitions"] == 3
    assert 0.0 <= out["recall_at_10"] <= 1.0 and out["p95_ms"] >= out["p50_ms"] > 0
    assert out["exact_p95_ms"] > 0 and out["build_s"] > 0 and out["dim"] > 0
    assert list(tmp_path.iterdir()) == []  # the throw-away store is gone
