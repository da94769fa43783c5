"""Reading ``homeward match``'s detections from LanceDB in two steps: the small columns of every row, then the
vectors of just the listings a run scores, a bounded chunk at a time.

The small columns (ids, species, confidence, status, models, write stamp and which vectors a row has, each row's
LanceDB row id) are enough to build both sides' every field but the vectors (``engine.scoring.sides.side_frame``),
to choose the run's models, to fingerprint every listing and to plan which pairs to score. Only then are vectors read:
all of them for a full run, the rescored listings' and those of the listings they may pair with for an incremental
one (at 50k listings with 500 new, a few percent of the rows). Each chunk is taken by row id, normalised and written
into the side's preallocated arrays before the next is read, so loading holds the sides plus one chunk: reading the
whole table as one Arrow table, filtering it per side and normalising a copy held three copies of every vector at
once (at 400k listings / 1M photos the load phase was match's peak, 11.7 GB).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from engine import schema
from engine.scoring.fuse import Side
from engine.scoring.sides import VECTOR_FLAGS, SideRows, add_vectors, finish_text

ROW_COLUMNS = (
    "listing_id", "photo_id", "detection_id", "created_at", "species", "confidence", "status", "embed_model",
    "text_model",
)  # fmt: skip
VECTOR_COLUMNS = ("embedding", "text_embedding")
CHUNK_BYTES = 256 * 2**20
"""Vector bytes taken from LanceDB per chunk (≈ 75k rows of 512 + 384 dimensions, 21k of the cpu profile's 2752)."""


def read_rows(table: Any | None) -> tuple[pa.Table, int, int]:
    """Every detection row's small columns, its :data:`VECTOR_FLAGS` and ``_rowid`` (``table``: the pinned LanceDB
    table, None: no table) → (rows, image dim, text dim)."""
    if table is None:
        columns = schema.detections_schema(1, 1)
        fields = [columns.field(c) for c in ROW_COLUMNS] + [pa.field(f, pa.bool_()) for f in VECTOR_FLAGS]
        return pa.schema([*fields, pa.field("_rowid", pa.uint64())]).empty_table(), 1, 1
    projection = {c: c for c in ROW_COLUMNS} | VECTOR_FLAGS
    rows = table.search().select(projection).with_row_id(True).limit(None).to_arrow()
    dims = [table.schema.field(c).type.list_size for c in VECTOR_COLUMNS]
    return rows, int(dims[0]), int(dims[1])


@dataclass
class SideVectors:
    """Where a side's rows lie in the pinned detections table, to read the vectors of chosen listings."""

    side: Side
    rows: SideRows
    row_ids: np.ndarray  # (R,) uint64 LanceDB row id of each side row

    def read(self, table: Any | None, listings: np.ndarray) -> int:
        """Read the vectors of the listings in mask ``listings`` into the side; → rows read. Call once: text vectors
        are summed per listing and normalised at the end."""
        at = np.flatnonzero(listings[self.rows.owner]) if len(self.rows.owner) else np.zeros(0, np.int64)
        if table is not None and len(at):
            dims = self.side.det_emb.shape[1] + self.side.text.shape[1]
            step = max(1, CHUNK_BYTES // (4 * dims))
            for start in range(0, len(at), step):
                self._chunk(table, at[start : start + step])
        finish_text(self.side)
        return len(at)

    def _chunk(self, table: Any, at: np.ndarray) -> None:
        """Side rows ``at`` (ascending): LanceDB returns them by ascending row id; they go back into side order."""
        ids = self.row_ids[at]
        by_id = np.argsort(ids, kind="stable")
        taken = table.take_row_ids(ids[by_id].tolist()).select([*VECTOR_COLUMNS, "_rowid"]).to_arrow()
        got = taken["_rowid"].to_numpy()
        if len(got) != len(ids) or not np.array_equal(got, ids[by_id]):
            raise RuntimeError("LanceDB returned other detection rows than the row ids asked for")
        back = np.empty(len(at), dtype=np.int64)
        back[by_id] = np.arange(len(at))
        add_vectors(self.side, self.rows, at, taken["embedding"].take(back), taken["text_embedding"].take(back))
