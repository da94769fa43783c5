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
import pyarrow.compute as pc

from engine import schema
from engine.errors import HomewardError
from engine.scoring.fuse import Side
from engine.scoring.sides import VECTOR_FLAGS, SideRows, add_vectors, finish_text

ROW_COLUMNS = (
    "listing_id", "photo_id", "detection_id", "created_at", "species", "confidence", "status", "embed_model",
    "text_model",
)  # fmt: skip
VECTOR_COLUMNS = ("embedding", "text_embedding")
CHUNK_BYTES = 16 * 2**20
"""Vector bytes taken from LanceDB per chunk (≈ 4.7k rows of 512 + 384 dimensions, 1.3k of the cpu profile's
2752 + 384). Smaller takes are faster and hold less: in an incremental run at 50k listings (108k of 127k detection
rows read, a shared box) LanceDB's takes alone took 0.44-0.56 s at ~16 MB and 0.74-1.14 s at 64 MB, placing the
vectors 0.65 / 0.93 s, and the load phase peaked at 1.41 / 1.57 GB. At 100k listings / 250k photos a chunk of 256 MB
took the load phase to 1.5 GB above the process's start, 64 MB to 1.25 GB (the sides alone: 0.84 GB)."""


def read_rows(table: Any | None) -> tuple[pa.Table, int, int]:
    """Every detection row's small columns, ``_rowid`` and :data:`VECTOR_FLAGS` (``table``: the pinned LanceDB table,
    None: no table) → (rows, image dim, text dim).

    A row has an image vector when it names its ``embed_model`` and a text vector when it names its ``text_model``:
    every writer of ``detections`` writes a vector with its model (enrichment, the benchmarks), and asking LanceDB
    for ``embedding IS NOT NULL`` reads the vectors (at 100k listings 4.5 s of a 5 s full read). Each row's vectors
    are checked against it when read (:meth:`SideVectors.read`): a full run reads every row, and an incremental one
    every row written since (its listing changed)."""
    if table is None:
        columns = schema.detections_schema(1, 1)
        rows = pa.schema([columns.field(c) for c in ROW_COLUMNS] + [pa.field("_rowid", pa.uint64())]).empty_table()
        image_dim = text_dim = 1
    else:
        rows = table.search().select(list(ROW_COLUMNS)).with_row_id(True).limit(None).to_arrow()
        image_dim, text_dim = (int(table.schema.field(c).type.list_size) for c in VECTOR_COLUMNS)
    for flag, model in zip(VECTOR_FLAGS, ("embed_model", "text_model"), strict=True):
        rows = rows.append_column(flag, pc.is_valid(rows[model]))
    return rows, image_dim, text_dim


@dataclass
class SideVectors:
    """Where a side's rows lie in the pinned detections table, to read the vectors of chosen listings."""

    side: Side
    rows: SideRows
    row_ids: np.ndarray  # (R,) uint64 LanceDB row id of each side row

    def read(self, table: Any | None, listings: np.ndarray) -> int:
        """Read the vectors of the listings in mask ``listings`` into the side; → rows read. Call once: text vectors
        are summed per listing and normalised at the end.

        Rows are read in ascending row id, a chunk at a time: LanceDB reads neighbouring rows together, and a
        listing's text vectors are summed in row-id order however the rows are chunked, so its text vector is the
        same whichever other listings a run reads (an incremental run and a full rematch agree to the last bit)."""
        at = np.flatnonzero(listings[self.rows.owner]) if len(self.rows.owner) else np.zeros(0, np.int64)
        at = at[np.argsort(self.row_ids[at], kind="stable")]
        if table is not None and len(at):
            dims = self.side.det_emb.shape[1] + self.side.text.shape[1]
            step = max(1, CHUNK_BYTES // (4 * dims))
            for start in range(0, len(at), step):
                self._chunk(table, at[start : start + step])
        finish_text(self.side, listings)
        return len(at)

    def _chunk(self, table: Any, at: np.ndarray) -> None:
        """Side rows ``at``, in ascending row id (the order LanceDB returns them in)."""
        ids = self.row_ids[at]
        taken = table.take_row_ids(ids.tolist()).select([*VECTOR_COLUMNS, "_rowid"]).to_arrow()
        if not np.array_equal(taken["_rowid"].to_numpy(), ids):
            raise RuntimeError("LanceDB returned other detection rows than the row ids asked for")
        image = pc.is_valid(taken["embedding"]).to_numpy(zero_copy_only=False)
        text = pc.is_valid(taken["text_embedding"]).to_numpy(zero_copy_only=False)
        odd = (image != (self.rows.image_slot[at] >= 0)) | (text != self.rows.has_text[at])
        if odd.any():
            listings = sorted(set(self.side.listing_ids[self.rows.owner[at[odd]]]))
            raise HomewardError(
                f"{int(odd.sum())} detection rows (of listings {', '.join(map(str, listings[:5]))}) have a vector "
                "without its model or a model without its vector (embed_model / text_model): each vector must be "
                "written with the model that made it; re-run `homeward enrich` for those photos"
            )
        add_vectors(self.side, self.rows, at, taken["embedding"], taken["text_embedding"])
