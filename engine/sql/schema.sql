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

-- A run's matches are the view `matches` over two tables, so that a run which keeps most pairs of the previous one
-- (an incremental match) writes only what changed: each pair's values once, in `match_pairs`, by the run that scored
-- it, and each run's list of its pairs with their ranks in that run, in `match_members`. Copying the kept pairs' wide
-- rows (terms, photos, explanation) into every run cost 1.4 s of a 6 s incremental run at 50k listings; their
-- membership rows cost 0.1 s. Neither table has a key: the writer assigns pair ids and never repeats a pair within a
-- run (tests check both); an index made publication 2.5-5x slower.
CREATE TABLE IF NOT EXISTS match_pairs (
    pair_id          BIGINT NOT NULL,
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
    no_photo         BOOLEAN DEFAULT FALSE,
    lost_photo_id    VARCHAR,
    found_photo_id   VARCHAR,
    explanation      VARCHAR,
    fused            DOUBLE
);

CREATE TABLE IF NOT EXISTS match_members (
    run_id           VARCHAR NOT NULL,
    pair_id          BIGINT NOT NULL,
    rank_for_lost    INTEGER,
    rank_for_found   INTEGER
);

-- One row per pair a run publishes: what readers, views and analysts query (writers: engine.run_rows.insert_matches).
CREATE OR REPLACE VIEW matches AS
SELECT m.run_id, p.lost_listing_id, p.found_listing_id, p.score, p.image_sim, p.text_sim, p.attribute_score,
       p.geo_score, p.time_score, p.distance_km, p.days_apart, p.photos_agreeing, m.rank_for_lost, m.rank_for_found,
       p.no_photo, p.lost_photo_id, p.found_photo_id, p.explanation, p.fused
FROM match_members m JOIN match_pairs p USING (pair_id);

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

-- What each shelter's report e-mail carried: a candidate pair is "new" for a shelter until it was e-mailed once.
CREATE TABLE IF NOT EXISTS report_deliveries (
    shelter_key      VARCHAR NOT NULL,
    lost_listing_id  VARCHAR NOT NULL,
    found_listing_id VARCHAR NOT NULL,
    run_id           VARCHAR NOT NULL,      -- the match run whose report first carried the pair
    sent_at          TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (shelter_key, lost_listing_id, found_listing_id)
);

-- Owners' saved searches (`homeward watch add`): the photo's vectors, where, how far, whom to e-mail.
CREATE TABLE IF NOT EXISTS watches (
    watch_id         VARCHAR PRIMARY KEY,
    email            VARCHAR NOT NULL,
    species          VARCHAR,
    lat              DOUBLE NOT NULL,
    lon              DOUBLE NOT NULL,
    radius_km        DOUBLE NOT NULL,
    threshold        DOUBLE NOT NULL,
    embed_model      VARCHAR NOT NULL,
    vectors          FLOAT[][] NOT NULL,    -- one unit vector per animal crop of the owner's photo
    created          TIMESTAMPTZ NOT NULL,
    unsubscribe_hash VARCHAR NOT NULL,      -- sha256 of the unsubscribe token (the token is derived from salt)
    active           BOOLEAN NOT NULL DEFAULT TRUE,
    ended            TIMESTAMPTZ
);

-- Listings already e-mailed to a watch's owner: each one once.
CREATE TABLE IF NOT EXISTS watch_alerts (
    watch_id         VARCHAR NOT NULL,
    listing_id       VARCHAR NOT NULL,
    score            DOUBLE NOT NULL,
    run_id           VARCHAR,               -- the match run after which it was sent
    sent_at          TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (watch_id, listing_id)
);

-- The scheduler's rounds (`homeward schedule`): each covers the crawl runs that finished since the previous one and,
-- when they brought new or changed listings, runs the pipeline steps after them. A round is `running` until every
-- step it needs is done (a failed step waits for its retry), then `ok`; an open round a new one takes over is `merged`.
CREATE TABLE IF NOT EXISTS loop_rounds (
    round_id     VARCHAR PRIMARY KEY,
    started      TIMESTAMPTZ NOT NULL,
    finished     TIMESTAMPTZ,
    status       VARCHAR NOT NULL,          -- running | ok | merged
    steps        JSON,                      -- the pipeline steps this round runs, in order ([] when nothing changed)
    changed_listings BIGINT DEFAULT 0,      -- new or changed listings its crawls wrote (and those of merged rounds)
    first_seen   TIMESTAMPTZ,               -- when the earliest of them was crawled
    match_run_id VARCHAR,
    published    TIMESTAMPTZ,               -- when that match run was published
    latency_s    DOUBLE,                    -- published - first_seen: a post crawled to its match published
    merged_into  VARCHAR,
    message      VARCHAR
);

-- One row per step attempt of a round: a crawl (source = the source, run_id = its crawl_runs row) or a pipeline step
-- (enrich, match, deliver:<name>; source = ''). A step done `ok` in a round is never run again for that round.
CREATE TABLE IF NOT EXISTS loop_steps (
    round_id     VARCHAR NOT NULL,
    step         VARCHAR NOT NULL,
    source       VARCHAR NOT NULL DEFAULT '',
    attempt      INTEGER NOT NULL,          -- crawl steps: the n-th crawl of the source the round covers
    status       VARCHAR NOT NULL,          -- running | ok | failed | interrupted | skipped
    run_id       VARCHAR,                   -- the crawl, enrich or match run it was
    started      TIMESTAMPTZ NOT NULL,
    finished     TIMESTAMPTZ,
    changed_listings BIGINT,                -- crawl steps: new or changed listings written
    first_seen   TIMESTAMPTZ,               -- crawl steps: when the earliest of them was crawled
    result       JSON,
    error        VARCHAR,
    PRIMARY KEY (round_id, step, source, attempt)
);

-- Operator alerts sent (or logged, without alerts.operator_email): one row per incident, so each is sent once.
CREATE TABLE IF NOT EXISTS loop_alerts (
    subject      VARCHAR NOT NULL,          -- a source, or step:<name> for a pipeline step
    kind         VARCHAR NOT NULL,          -- failing | overdue
    incident     VARCHAR NOT NULL,          -- what identifies this incident (the first failure, the last success)
    raised       TIMESTAMPTZ NOT NULL,
    message      VARCHAR,
    emailed_to   VARCHAR,
    PRIMARY KEY (subject, kind, incident)
);

-- Where lat/lon came from (engine.places.GEO_SOURCES); added after the first release, so older files get it here.
ALTER TABLE listings ADD COLUMN IF NOT EXISTS geo_source VARCHAR;

-- Incremental match (ray_jobs/match.py): a run's mode and why, its scoring fingerprint and lineage (scoring inputs,
-- frozen background) and the per-listing fingerprints of the snapshot it scored.
ALTER TABLE match_runs ADD COLUMN IF NOT EXISTS mode VARCHAR;                 -- full | incremental
ALTER TABLE match_runs ADD COLUMN IF NOT EXISTS mode_reason VARCHAR;
ALTER TABLE match_runs ADD COLUMN IF NOT EXISTS scoring_fingerprint VARCHAR;
ALTER TABLE match_runs ADD COLUMN IF NOT EXISTS lineage JSON;
ALTER TABLE match_runs ADD COLUMN IF NOT EXISTS changes JSON;
ALTER TABLE listings ADD COLUMN IF NOT EXISTS match_fingerprint VARCHAR;
ALTER TABLE watches ADD COLUMN IF NOT EXISTS language VARCHAR;               -- of the alerts; NULL: English
