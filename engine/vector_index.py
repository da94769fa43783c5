"""The vector index on ``detections.embedding`` that search by photo asks for candidates (LanceDB, cosine).

Trade-offs worth knowing:

* **Only past a size.** Below ``search.index_min_rows`` detection rows brute force is exact and takes milliseconds,
  and an index trained on a few rows partitions badly; so there is none, and search scores everything.
* **IVF_HNSW_SQ, not IVF_PQ.** Both were measured on 2,752-d vectors (the ``cpu`` profile) on a 2-core box
  (README "Search by photo"): at equal recall IVF_PQ spent most of its build training 172 product quantisers
  (~240 s for 30k rows against ~37 s), and queried no faster. 8-bit scalar quantisation keeps distances close
  enough that ``refine_factor`` re-scoring on the float32 vectors restores exact order among the candidates.
* **Incremental.** :func:`refresh_index` runs at the end of every enrich: new rows are folded into the existing
  index (``optimize``: they join the trained partitions, no retraining) until the rows added since training exceed
  ``search.index_rebuild_share`` of it, when it is retrained from scratch (partitions drift as the data does).
  Rows not yet in the index are still searched: queries run with LanceDB's default ``fast_search=False``, which
  scans unindexed rows exactly beside the index (tested).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import HnswSq, IvfPq

from engine.config import SearchSettings

log = logging.getLogger(__name__)

TABLE = "detections"
COLUMN = "embedding"
INDEX_NAME = f"{COLUMN}_idx"
INDEX_TYPES = ("IVF_HNSW_SQ", "IVF_PQ")


def index_stats(table: lancedb.table.Table) -> dict[str, Any] | None:
    """``{index_type, indexed, unindexed}`` of the vector index, or None when the table has none."""
    if not any(ix.name == INDEX_NAME for ix in table.list_indices()):
        return None
    stats = table.index_stats(INDEX_NAME)
    if stats is None:
        return None
    return {
        "index_type": str(stats.index_type),
        "indexed": int(stats.num_indexed_rows),
        "unindexed": int(stats.num_unindexed_rows),
    }


def index_config(cfg: SearchSettings, rows: int) -> HnswSq | IvfPq:
    """The LanceDB index configuration for ``rows`` vectors (partitions from ``search.index_partition_rows``)."""
    if cfg.index_type not in INDEX_TYPES:
        raise ValueError(f"search.index_type must be one of {', '.join(INDEX_TYPES)}, got {cfg.index_type!r}")
    partitions = max(1, rows // max(1, cfg.index_partition_rows))
    if cfg.index_type == "IVF_PQ":
        return IvfPq(distance_type="cosine", num_partitions=partitions, num_sub_vectors=cfg.index_sub_vectors)
    return HnswSq(
        distance_type="cosine", num_partitions=partitions, m=cfg.index_m, ef_construction=cfg.index_ef_construction
    )


def build_index(table: lancedb.table.Table, cfg: SearchSettings) -> dict[str, Any]:
    """Train the index on every row of ``table`` now (replacing any); → what was built and how long it took."""
    rows = table.count_rows()
    config = index_config(cfg, rows)
    t0 = time.perf_counter()
    table.create_index(COLUMN, config=config, replace=True, name=INDEX_NAME)
    return {
        "action": "built",
        "rows": rows,
        "index_type": cfg.index_type,
        "partitions": config.num_partitions,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def refresh_index(store: Any, cfg: SearchSettings) -> dict[str, Any]:
    """Keep the index of ``store`` (an :class:`engine.storage.LanceStore`) in step with its detections: none below
    ``search.index_min_rows``, built once past it, new rows folded in, retrained once they outgrow it (see the
    module docstring). → ``{"action": "none" | "built" | "updated" | "current", ...}``."""
    if not store.exists(TABLE):
        return {"action": "none", "rows": 0}
    table = store.open(TABLE)
    rows = table.count_rows()
    stats = index_stats(table)
    if stats is None:
        if rows < cfg.index_min_rows:
            return {"action": "none", "rows": rows, "index_min_rows": cfg.index_min_rows}
        return build_index(table, cfg)
    if stats["unindexed"] == 0:
        return {"action": "current", "rows": rows, **stats}
    if stats["unindexed"] > cfg.index_rebuild_share * max(1, stats["indexed"]):
        return {**build_index(table, cfg), "reason": f"{stats['unindexed']} rows added since training"}
    t0 = time.perf_counter()
    table.optimize()
    return {"action": "updated", "rows": rows, **(index_stats(table) or {}),
            "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip


def nearest(
    table: lancedb.table.Table,
    vector: np.ndarray,
    limit: int,
    cfg: SearchSettings,
    *,
    where: str | None = None,
    columns: list[str] | None = None,
) -> pa.Table:
    """The ``limit`` rows nearest to ``vector`` by cosine: through the index where there is one (``where`` applied
    before the search, unindexed rows scanned exactly), by brute force otherwise. ``columns`` plus ``_distance``."""
    query = (
        table.search(np.asarray(vector, np.float32), vector_column_name=COLUMN)
        .distance_type("cosine")
        .nprobes(cfg.nprobes)
        .ef(max(cfg.ef, limit * cfg.refine_factor))  # HNSW needs ef >= the candidates it hands to the refine
        .refine_factor(cfg.refine_factor)
        .limit(limit)
    )
    if where:
        query = query.where(where, prefilter=True)
    if columns:
        query = query.select([*columns, "_distance"])
    return query.to_arrow()


def sql_string(value: str) -> str:
    """``value`` as a SQL string literal for a LanceDB filter (quotes doubled: ids and model names are data)."""
    return "'" + str(value).replace("'", "''") + "'"
