"""The data model: Arrow schemas of the LanceDB tables and the vocabularies every stage agrees on.

LanceDB holds what the crawl and enrich stages produce (``listings``, ``photos``, ``detections``); DuckDB holds runs,
matches and feedback (``engine/sql/schema.sql``). Every table carries a ``status``/``error`` pair so a bad row is
kept with its reason instead of being dropped.
"""

from __future__ import annotations

import pyarrow as pa

KINDS = ("lost", "found", "sighting", "shelter", "adoptable")
LISTING_STATUSES = ("active", "resolved", "expired")
SPECIES = ("dog", "cat", "other", "unknown")
SEXES = ("male", "female", "unknown")
AGE_GROUPS = ("baby", "young", "adult", "senior", "unknown")
SIZES = ("small", "medium", "large", "xlarge", "unknown")
#: Lost side of a pair; every other kind except ``sighting`` is a found side (a sighting is both).
LOST_KINDS = ("lost",)
FOUND_KINDS = ("found", "sighting", "shelter", "adoptable")

UTC_TS = pa.timestamp("us", tz="UTC")

#: Where a listing's ``lat``/``lon`` came from (``listings.geo_source``; ``engine.places`` decides it): the page's
#: own coordinates, a postcode, a street address's town, a town or region name, the shelter, or nowhere.
GEO_SOURCES = ("page", "postcode", "address", "city", "region", "shelter", "none")

LISTINGS = pa.schema(
    [
        pa.field("listing_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("kind", pa.string()),
        pa.field("status", pa.string()),
        pa.field("species", pa.string()),
        pa.field("breed", pa.string()),
        pa.field("colors", pa.list_(pa.string())),
        pa.field("sex", pa.string()),
        pa.field("age_group", pa.string()),
        pa.field("size", pa.string()),
        pa.field("name", pa.string()),
        pa.field("description", pa.string()),
        pa.field("location_text", pa.string()),
        pa.field("lat", pa.float64()),
        pa.field("lon", pa.float64()),
        pa.field("geo_source", pa.string()),
        pa.field("event_date", pa.date32()),
        pa.field("posted_at", UTC_TS),
        pa.field("scraped_at", UTC_TS),
        pa.field("shelter_id", pa.string()),
        pa.field("shelter_name", pa.string()),
        pa.field("photo_urls", pa.list_(pa.string())),
        pa.field("photo_ids", pa.list_(pa.string())),
        pa.field("content_hash", pa.string()),
        pa.field("contact_hash", pa.string()),
        pa.field("chip_hash", pa.string()),
        pa.field("parse_warnings", pa.list_(pa.string())),
    ]
)

PHOTOS = pa.schema(
    [
        pa.field("photo_key", pa.string(), nullable=False),
        pa.field("photo_id", pa.string()),
        pa.field("listing_id", pa.string(), nullable=False),
        pa.field("source_url", pa.string()),
        pa.field("uri", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("format", pa.string()),
        pa.field("fetched_at", UTC_TS),
        pa.field("status", pa.string()),
        pa.field("error", pa.string()),
        pa.field("enrich_status", pa.string()),
        pa.field("enrich_error", pa.string()),
        pa.field("enriched_at", UTC_TS),
    ]
)
"""One row per (listing, photo URL): ``photo_key`` = hash(listing_id, source_url) so a failed download still has a
row with its reason; ``photo_id`` = sha256 of the stored bytes (null until fetched). ``status``: ok | failed (fetch);
``enrich_status``: pending | ok | no_animal | failed."""


def detections_schema(image_dim: int, text_dim: int) -> pa.Schema:
    """Detections are fixed-size vectors, so the schema depends on the embedder's dimension.

    ``embed_model`` and ``text_model`` travel with every row: matching refuses to compare vectors of different
    models even when their dimensions happen to agree.
    """
    return pa.schema(
        [
            pa.field("detection_id", pa.string(), nullable=False),
            pa.field("photo_id", pa.string()),
            pa.field("photo_key", pa.string()),
            pa.field("listing_id", pa.string()),
            pa.field("species", pa.string()),
            pa.field("confidence", pa.float32()),
            pa.field("bbox", pa.list_(pa.float32(), 4)),
            pa.field("full_frame", pa.bool_()),
            pa.field("embedding", pa.list_(pa.float32(), image_dim)),
            pa.field("embed_model", pa.string()),
            pa.field("caption", pa.string()),
            pa.field("attributes", pa.string()),
            pa.field("text_embedding", pa.list_(pa.float32(), text_dim)),
            pa.field("text_model", pa.string()),
            pa.field("detector_model", pa.string()),
            pa.field("created_at", UTC_TS),
            pa.field("status", pa.string()),
            pa.field("error", pa.string()),
        ]
    )


def empty_row(schema: pa.Schema) -> dict[str, object]:
    return {name: None for name in schema.names}
