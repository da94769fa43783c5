-- Homeward's DuckDB file: job runs, ranked matches, shelter feedback, and a listing snapshot for joins.
-- One writer at a time (each job opens, writes in one transaction, closes); readers open it read-only.

CREATE TABLE IF NOT EXISTS crawl_runs (
    run_id       VARCHAR PRIMARY KEY,
    source       VARCHAR NOT NULL,
    started      TIMESTAMPTZ NOT NULL,
    finished     TIMESTAMPTZ,
    status       VARCHAR NOT NULL,          -- running | ok | failed | interrupted
    parameters   JSON,
    pages        BIGINT DEFAULT 0,
    items        BIGINT DEFAULT 0,
    new_items    BIGINT DEFAULT 0,
    updated_items BIGINT DEFAULT 0,
    unchanged_items BIGINT DEFAULT 0,
    photos       BIGINT DEFAULT 0,
    errors       BIGINT DEFAULT 0,
    errors_by_reason JSON,
    duration_s   DOUBLE,
    message      VARCHAR
);

CREATE TABLE IF NOT EXISTS enrich_runs (
    run_id       VARCHAR PRIMARY KEY,
    started      TIMESTAMPTZ NOT NULL,
    finished     TIMESTAMPTZ,
    status       VARCHAR NOT NULL,
    parameters   JSON,
    models       JSON,
    photos       BIGINT DEFAULT 0,
    ok           BIGINT DEFAULT 0,
    no_animal    BIGINT DEFAULT 0,
    failed       BIGINT DEFAULT 0,
    detections   BIGINT DEFAULT 0,
    errors_by_reason JSON,
    duration_s   DOUBLE,
    message      VARCHAR
);

CREATE TABLE IF NOT EXISTS match_runs (
    run_id       VARCHAR PRIMARY KEY,
    started      TIMESTAMPTZ NOT NULL,
    finished     TIMESTAMPTZ,
    status       VARCHAR NOT NULL,          -- running | published | failed
    parameters   JSON,
    lance_versions JSON,
    embed_model  VARCHAR,
    lost_listings BIGINT DEFAULT 0,
    found_listings BIGINT DEFAULT 0,
    candidate_pairs BIGINT DEFAULT 0,
    matches      BIGINT DEFAULT 0,
    duration_s   DOUBLE,
    message      VARCHAR
);

CREATE TABLE IF NOT EXISTS matches (
    run_id           VARCHAR NOT NULL,
    lost_listing_id  VARCHAR NOT NULL,
    found_listing_id VARCHAR NOT NULL,
    score            DOUBLE NOT NULL,
    image_sim        DOUBLE,
    text_sim         DOUBLE,
    attribute_score  DOUBLE,
    geo_score        DOUBLE,
    time_score       DOUBLE,
    distance_km      DOUBLE,
    days_apart       DOUBLE,
    photos_agreeing  INTEGER,
    rank_for_lost    INTEGER,
    rank_for_found   INTEGER,
    no_photo         BOOLEAN DEFAULT FALSE,
    lost_photo_id    VARCHAR,
    found_photo_id   VARCHAR,
    explanation      VARCHAR,
    PRIMARY KEY (run_id, lost_listing_id, found_listing_id)
);

CREATE TABLE IF NOT EXISTS feedback (
    lost_listing_id  VARCHAR NOT NULL,
    found_listing_id VARCHAR NOT NULL,
    verdict          VARCHAR NOT NULL CHECK (verdict IN ('confirmed', 'rejected')),
    who              VARCHAR,
    created_at       TIMESTAMPTZ NOT NULL,
    note             VARCHAR
);

-- Snapshot of the listings a match run scored, refreshed by each published run (LanceDB stays the source of truth).
CREATE TABLE IF NOT EXISTS listings (
    listing_id VARCHAR PRIMARY KEY,
    source VARCHAR, source_id VARCHAR, url VARCHAR, kind VARCHAR, status VARCHAR, species VARCHAR,
    breed VARCHAR, colors VARCHAR[], sex VARCHAR, age_group VARCHAR, size VARCHAR, name VARCHAR,
    description VARCHAR, location_text VARCHAR, lat DOUBLE, lon DOUBLE, event_date DATE,
    posted_at TIMESTAMPTZ, scraped_at TIMESTAMPTZ, shelter_id VARCHAR, shelter_name VARCHAR,
    photo_ids VARCHAR[], n_photos INTEGER
);

-- Incremental match (ray_jobs/match.py): a run's mode and why, its scoring fingerprint and lineage (scoring inputs,
-- frozen background), the per-listing fingerprints of the snapshot it scored, and each kept pair's fused value.
ALTER TABLE match_runs ADD COLUMN IF NOT EXISTS mode VARCHAR;                 -- full | incremental
ALTER TABLE match_runs ADD COLUMN IF NOT EXISTS mode_reason VARCHAR;
ALTER TABLE match_runs ADD COLUMN IF NOT EXISTS scoring_fingerprint VARCHAR;
ALTER TABLE match_runs ADD COLUMN IF NOT EXISTS lineage JSON;
ALTER TABLE match_runs ADD COLUMN IF NOT EXISTS changes JSON;
ALTER TABLE matches ADD COLUMN IF NOT EXISTS fused DOUBLE;
ALTER TABLE listings ADD COLUMN IF NOT EXISTS match_fingerprint VARCHAR;
