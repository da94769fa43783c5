"""Which photos an enrich run does, and the work items (one per distinct image) the pipeline gets for them.

Selection reads the photos table whole and filters in Python rather than in a Lance ``where``: the "finished but
without a detection of this embedder" rule is an anti-join Lance cannot express, and a photos table is small.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa


def select_photos(lance: Any, retry_failed: bool, limit: int | None, embed_model: str | None) -> pa.Table:
    """Fetched photos still to enrich: never done or ``pending``, ``failed`` when ``retry_failed``, and finished ones
    with no detection of ``embed_model`` yet; ordered by image then photo key, at most ``limit`` rows."""
    if not lance.exists("photos"):
        return pa.table({})
    cols = ["photo_key", "photo_id", "listing_id", "uri", "status", "enrich_status"]
    rows = lance.read("photos", where="status = 'ok' AND uri IS NOT NULL AND photo_id IS NOT NULL", columns=cols)
    if rows.num_rows == 0:
        return rows
    st = rows.column("enrich_status").to_pylist()
    want = [s in (None, "", "pending") or (retry_failed and s == "failed") for s in st]
    if embed_model and lance.exists("detections"):
        done = {
            k
            for k in lance.read(
                "detections",
                where=f"embed_model = '{embed_model.replace(chr(39), chr(39) * 2)}'",
                columns=["photo_key"],
            )
            .column("photo_key")
            .to_pylist()
        }
        keys = rows.column("photo_key").to_pylist()
        want = [w or (s in ("ok", "no_animal") and k not in done) for w, s, k in zip(want, st, keys, strict=True)]
    elif embed_model:
        want = [w or s in ("ok", "no_animal") for w, s in zip(want, st, strict=True)]
    rows = rows.filter(pa.array(want))
    rows = rows.sort_by([("photo_id", "ascending"), ("photo_key", "ascending")])
    if limit is not None:
        rows = rows.slice(0, max(0, int(limit)))
    return rows


def _listing_fields(lance: Any, listing_ids: set[str]) -> dict[str, tuple[str, str]]:
    """``{listing_id: (description, species)}``."""
    if not listing_ids or not lance.exists("listings"):
        return {}
    data = lance.read("listings", columns=["listing_id", "description", "species"]).to_pydict()
    return {
        lid: (desc or "", species or "unknown")
        for lid, desc, species in zip(data["listing_id"], data["description"], data["species"], strict=True)
        if lid in listing_ids
    }


def work_items(lance: Any, todo: pa.Table) -> list[dict[str, Any]]:
    """One item per distinct image (``photo_id``): its URI and, JSON-encoded, every listing photo that shows it with
    that listing's description (the text stage embeds caption + description per listing) and species (the embedder's
    species for a photo in which the detector saw no animal)."""
    fields = _listing_fields(lance, set(todo.column("listing_id").to_pylist()))
    groups: dict[str, dict[str, Any]] = {}
    for r in todo.to_pylist():
        g = groups.setdefault(r["photo_id"], {"photo_id": r["photo_id"], "uri": r["uri"], "targets": []})
        g["targets"].append(
            {
                "photo_key": r["photo_key"],
                "listing_id": r["listing_id"],
                "description": fields.get(r["listing_id"], ("", ""))[0],
                "species": fields.get(r["listing_id"], ("", "unknown"))[1],
            }
        )
    return [{"photo_id": g["photo_id"], "uri": g["uri"], "targets": json.dumps(g["targets"])} for g in groups.values()]
