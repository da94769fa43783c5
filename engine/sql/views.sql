-- Homeward analyst views over the DuckDB file (tables: engine/sql/schema.sql).
--
-- Created idempotently by engine.views.ensure_views(runs_db) (CREATE OR REPLACE, one short write transaction,
-- skipped when the views already carry this file's version). `homeward report` and `homeward dashboard` call it,
-- so analysts who open the file read-only find every view below.
--
-- Conventions
-- * Only PUBLISHED match runs are visible: a run still 'running' (or 'failed') never reaches a view, so readers
--   never see half a run.
-- * A pair's verdict is its LATEST feedback row (a shelter may confirm and later reject, or the reverse).
-- * "Shelter" of a candidate = the found-side listing's shelter, keyed by shelter_key(source, shelter_id) below:
--   'petango:SEAS' for a shelter_id, the bare source ('pet911') for found posts and sightings without one.
-- * Times are TIMESTAMPTZ; "this week" is the rolling last 7 days from now().
-- Each statement is separated by a line holding only ";;" so the loader can split the file without parsing SQL.

-- shelter_key(source, shelter_id): the one definition of a shelter's key (views, reports, dashboard, tokens).
-- A shelter_id is text from a crawled page, so any source could claim any id: the id only names a shelter WITHIN the
-- source that listed it ('petango:SEAS'; a page on another source claiming "SEAS" becomes 'evilsite:SEAS'). A listing
-- without a shelter_id belongs to its source alone ('pet911': no colon). The source part has '%' and ':' escaped
-- ('%25', '%3A'), so the first ':' always ends the source and a shelter key never equals a source-only key.
CREATE OR REPLACE MACRO shelter_key(source, shelter_id) AS
    replace(replace(coalesce(source, 'unknown'), '%', '%25'), ':', '%3A')
    || CASE WHEN nullif(trim(shelter_id), '') IS NULL THEN '' ELSE ':' || trim(shelter_id) END
;;

-- published_match_runs: every match run whose results are visible, newest first.
CREATE OR REPLACE VIEW published_match_runs AS
SELECT *
FROM match_runs
WHERE status = 'published'
;;

-- latest_match_run: the one published match run whose matches are current (newest finish wins).
CREATE OR REPLACE VIEW latest_match_run AS
SELECT *
FROM match_runs
WHERE status = 'published'
ORDER BY finished DESC NULLS LAST, started DESC, run_id DESC
LIMIT 1
;;

-- pair_verdicts: the latest verdict per (lost, found) pair, with when it was first confirmed.
CREATE OR REPLACE VIEW pair_verdicts AS
SELECT
    lost_listing_id,
    found_listing_id,
    arg_max(verdict, created_at) AS verdict,
    arg_max(who, created_at) AS who,
    arg_max(note, created_at) AS note,
    max(created_at) AS decided_at,
    min(created_at) FILTER (WHERE verdict = 'confirmed') AS first_confirmed_at,
    count(*) AS feedback_rows
FROM feedback
GROUP BY lost_listing_id, found_listing_id
;;

-- match_history: every pair ever published, with the first and last published run that ranked it.
CREATE OR REPLACE VIEW match_history AS
SELECT
    m.lost_listing_id,
    m.found_listing_id,
    min(r.finished) AS first_matched_at,
    max(r.finished) AS last_matched_at,
    max(m.score) AS best_score,
    count(*) AS runs
FROM matches m
JOIN match_runs r ON r.run_id = m.run_id AND r.status = 'published'
GROUP BY m.lost_listing_id, m.found_listing_id
;;

-- latest_matches: the matches of the latest published run, joined to both listings of the snapshot, with the
-- pair's current verdict (NULL when nobody decided yet). One row per (lost, found) pair.
CREATE OR REPLACE VIEW latest_matches AS
SELECT
    m.run_id,
    r.finished AS run_finished,
    m.lost_listing_id,
    m.found_listing_id,
    m.score,
    m.image_sim,
    m.text_sim,
    m.attribute_score,
    m.geo_score,
    m.time_score,
    m.distance_km,
    m.days_apart,
    m.photos_agreeing,
    m.rank_for_lost,
    m.rank_for_found,
    m.no_photo,
    m.lost_photo_id,
    m.found_photo_id,
    m.explanation,
    l.source AS lost_source,
    l.url AS lost_url,
    l.species AS lost_species,
    l.breed AS lost_breed,
    l.colors AS lost_colors,
    l.sex AS lost_sex,
    l.name AS lost_name,
    l.location_text AS lost_location,
    l.geo_source AS lost_geo_source,
    l.event_date AS lost_event_date,
    l.photo_ids AS lost_photo_ids,
    f.source AS found_source,
    f.kind AS found_kind,
    f.url AS found_url,
    f.species AS found_species,
    f.breed AS found_breed,
    f.colors AS found_colors,
    f.sex AS found_sex,
    f.name AS found_name,
    f.location_text AS found_location,
    f.geo_source AS found_geo_source,
    f.event_date AS found_event_date,
    f.photo_ids AS found_photo_ids,
    shelter_key(f.source, f.shelter_id) AS shelter_key,
    coalesce(f.shelter_name, f.shelter_id, f.source, 'unknown') AS shelter_name,
    v.verdict,
    v.decided_at
FROM matches m
JOIN latest_match_run r ON r.run_id = m.run_id
LEFT JOIN listings l ON l.listing_id = m.lost_listing_id
LEFT JOIN listings f ON f.listing_id = m.found_listing_id
LEFT JOIN pair_verdicts v ON v.lost_listing_id = m.lost_listing_id AND v.found_listing_id = m.found_listing_id
;;

-- open_candidates: latest matches minus the pairs whose latest verdict is 'rejected' (what reports and the
-- shelter review page show; confirmed pairs stay, marked by verdict = 'confirmed').
CREATE OR REPLACE VIEW open_candidates AS
SELECT *
FROM latest_matches
WHERE verdict IS DISTINCT FROM 'rejected'
;;

-- matches_this_week: latest matches whose pair was FIRST published in the last 7 days (new candidates, not
-- pairs re-ranked by every nightly run).
CREATE OR REPLACE VIEW matches_this_week AS
SELECT lm.*, h.first_matched_at
FROM latest_matches lm
JOIN match_history h USING (lost_listing_id, found_listing_id)
WHERE h.first_matched_at >= now() - INTERVAL 7 DAY
;;

-- source_yield: per source, how many of its listings appear in the latest matches (either side), how many pairs
-- they are in, and how many of those pairs a shelter confirmed.
CREATE OR REPLACE VIEW source_yield AS
WITH sides AS (
    SELECT lost_source AS source, lost_listing_id AS listing_id, lost_listing_id, found_listing_id, verdict, score
    FROM latest_matches
    UNION ALL
    SELECT found_source, found_listing_id, lost_listing_id, found_listing_id, verdict, score
    FROM latest_matches
),
per_source AS (
    SELECT
        source,
        count(DISTINCT listing_id) AS matched_listings,
        count(DISTINCT (lost_listing_id, found_listing_id)) AS pairs,
        count(DISTINCT (lost_listing_id, found_listing_id)) FILTER (WHERE verdict = 'confirmed') AS confirmed_pairs,
        count(DISTINCT (lost_listing_id, found_listing_id)) FILTER (WHERE verdict = 'rejected') AS rejected_pairs,
        avg(score) AS mean_score
    FROM sides
    WHERE source IS NOT NULL
    GROUP BY source
),
listed AS (
    SELECT source, count(*) AS listings FROM listings GROUP BY source
)
SELECT
    coalesce(p.source, l.source) AS source,
    coalesce(l.listings, 0) AS listings,
    coalesce(p.matched_listings, 0) AS matched_listings,
    coalesce(p.pairs, 0) AS pairs,
    coalesce(p.confirmed_pairs, 0) AS confirmed_pairs,
    coalesce(p.rejected_pairs, 0) AS rejected_pairs,
    p.mean_score,
    CASE WHEN coalesce(l.listings, 0) > 0 THEN coalesce(p.matched_listings, 0) / l.listings END AS yield
FROM per_source p
FULL OUTER JOIN listed l ON l.source = p.source
;;

-- time_to_reunion: one row per confirmed pair (latest verdict 'confirmed'): days from the lost pet's event_date to
-- the first published match of the pair and to the shelter's confirmation.
CREATE OR REPLACE VIEW time_to_reunion AS
SELECT
    v.lost_listing_id,
    v.found_listing_id,
    l.source AS lost_source,
    f.source AS found_source,
    shelter_key(f.source, f.shelter_id) AS shelter_key,
    l.species,
    l.event_date AS lost_event_date,
    h.first_matched_at,
    v.first_confirmed_at AS confirmed_at,
    date_diff('day', l.event_date, h.first_matched_at::DATE) AS days_to_match,
    date_diff('day', l.event_date, v.first_confirmed_at::DATE) AS days_to_reunion
FROM pair_verdicts v
LEFT JOIN listings l ON l.listing_id = v.lost_listing_id
LEFT JOIN listings f ON f.listing_id = v.found_listing_id
LEFT JOIN match_history h ON h.lost_listing_id = v.lost_listing_id AND h.found_listing_id = v.found_listing_id
WHERE v.verdict = 'confirmed'
;;

-- listings_over_time: listings of the snapshot per day (posted_at, else event_date, else scraped_at), source,
-- kind and species.
CREATE OR REPLACE VIEW listings_over_time AS
SELECT
    coalesce(posted_at::DATE, event_date, scraped_at::DATE) AS day,
    source,
    coalesce(kind, 'unknown') AS kind,
    coalesce(species, 'unknown') AS species,
    count(*) AS listings
FROM listings
GROUP BY ALL
;;

-- crawl_health: per source, the last crawl run, its items and errors, the last successful run (status 'ok'),
-- lag since that success, and totals over the last 7 days.
CREATE OR REPLACE VIEW crawl_health AS
WITH ranked AS (
    SELECT *, row_number() OVER (PARTITION BY source ORDER BY started DESC, run_id DESC) AS rn
    FROM crawl_runs
),
agg AS (
    SELECT
        source,
        count(*) AS runs,
        max(coalesce(finished, started)) FILTER (WHERE status = 'ok') AS last_success,
        count(*) FILTER (WHERE status = 'failed') AS failed_runs,
        sum(items) FILTER (WHERE started >= now() - INTERVAL 7 DAY)::BIGINT AS items_7d,
        sum(errors) FILTER (WHERE started >= now() - INTERVAL 7 DAY)::BIGINT AS errors_7d
    FROM crawl_runs
    GROUP BY source
)
SELECT
    a.source,
    a.runs,
    a.failed_runs,
    r.run_id AS last_run_id,
    r.started AS last_run_started,
    r.status AS last_status,
    r.items AS last_items,
    r.errors AS last_errors,
    r.message AS last_message,
    a.last_success,
    round(epoch(now() - a.last_success) / 3600.0, 2) AS lag_hours,
    coalesce(a.items_7d, 0) AS items_7d,
    coalesce(a.errors_7d, 0) AS errors_7d,
    CASE WHEN coalesce(a.items_7d, 0) + coalesce(a.errors_7d, 0) > 0
         THEN coalesce(a.errors_7d, 0) / (coalesce(a.items_7d, 0) + coalesce(a.errors_7d, 0)) END AS error_rate_7d
FROM agg a
JOIN ranked r ON r.source = a.source AND r.rn = 1
;;

-- job_throughput: enrich and match runs with their throughput (photos/s for enrich, candidate pairs/s for match).
CREATE OR REPLACE VIEW job_throughput AS
SELECT
    'enrich' AS job, run_id, started, finished, status,
    photos AS items, failed AS errors, duration_s,
    CASE WHEN duration_s > 0 THEN photos / duration_s END AS items_per_s,
    message
FROM enrich_runs
UNION ALL
SELECT
    'match', run_id, started, finished, status,
    candidate_pairs, NULL, duration_s,
    CASE WHEN duration_s > 0 THEN candidate_pairs / duration_s END,
    message
FROM match_runs
;;

-- score_distribution: histogram of the latest matches' scores in bins of 0.05 (bin = lower edge).
CREATE OR REPLACE VIEW score_distribution AS
SELECT
    greatest(least(floor(score * 20) / 20, 0.95), 0.0) AS bin,
    count(*) AS pairs,
    count(*) FILTER (WHERE verdict = 'confirmed') AS confirmed,
    count(*) FILTER (WHERE verdict = 'rejected') AS rejected
FROM latest_matches
GROUP BY ALL
ORDER BY bin
;;
