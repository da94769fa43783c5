"""The run rows of ``homeward.duckdb`` (``crawl_runs``, ``enrich_runs``, ``match_runs``), the pairs match runs
publish (``match_pairs``, ``match_members``: the ``matches`` view), the scheduler's (``loop_rounds``, ``loop_steps``,
``loop_alerts``), shelter ``feedback`` and the candidates each shelter's report e-mail carried
(``report_deliveries``): every INSERT, UPDATE and DELETE of those tables, beside the schema (``engine/sql/schema.sql``)
they write.

Each function takes an open write connection (``with runs.write() as con:``) rather than a :class:`RunsDB`, so a
caller composes it into its own transaction: a crawl's busy check and its new row, or a match run's matches and its
``published`` status, commit together or not at all.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

import duckdb
import pyarrow as pa

#: the count columns of ``crawl_runs`` a crawl reports, by the key its result uses
CRAWL_COUNT_COLUMNS = {
    "pages": "pages",
    "items": "items",
    "new": "new_items",
    "updated": "updated_items",
    "unchanged": "unchanged_items",
    "photos": "photos",
    "errors": "errors",
}


# ------------------------------------------------------------------------------------------------ crawl_runs


def running_crawls(con: duckdb.DuckDBPyConnection, source: str) -> list[tuple[str, str, float]]:
    """``(run_id, parameters JSON, started epoch seconds)`` of every ``running`` crawl row of ``source``."""
    return con.execute(
        "SELECT run_id, parameters, epoch(started) FROM crawl_runs WHERE source = ? AND status = 'running'", [source]
    ).fetchall()


def interrupt_crawl(con: duckdb.DuckDBPyConnection, run_id: str, at: dt.datetime, message: str) -> None:
    con.execute(
        "UPDATE crawl_runs SET status = 'interrupted', finished = ?, message = ? WHERE run_id = ?",
        [at, message, run_id],
    )


def start_crawl(
    con: duckdb.DuckDBPyConnection, run_id: str, source: str, started: dt.datetime, parameters: Mapping[str, Any]
) -> None:
    con.execute(
        "INSERT INTO crawl_runs (run_id, source, started, status, parameters) VALUES (?, ?, ?, 'running', ?)",
        [run_id, source, started, json.dumps(parameters, default=str)],
    )


def finish_crawl(con: duckdb.DuckDBPyConnection, result: Mapping[str, Any], finished: dt.datetime) -> None:
    """A crawl's outcome (its result dict: ``run_id``, ``status``, the counts, ``errors_by_reason``, …) on its row;
    a result without a status records ``failed``, missing counts record 0."""
    counts = {col: int(result.get(key) or 0) for key, col in CRAWL_COUNT_COLUMNS.items()}
    con.execute(
        f"UPDATE crawl_runs SET finished = ?, status = ?, {', '.join(f'{c} = ?' for c in counts)}, "
        "errors_by_reason = ?, duration_s = ?, message = ? WHERE run_id = ?",
        [
            finished,
            result.get("status") or "failed",
            *counts.values(),
            json.dumps(result.get("errors_by_reason") or {}),
            float(result.get("duration_s") or 0.0),
            result.get("message"),
            result["run_id"],
        ],
    )


# ------------------------------------------------------------------------------------------------ enrich_runs


def start_enrich(
    con: duckdb.DuckDBPyConnection, run_id: str, started: dt.datetime, parameters: Mapping[str, Any]
) -> None:
    con.execute(
        "INSERT INTO enrich_runs (run_id, started, status, parameters) VALUES (?, ?, 'running', ?)",
        [run_id, started, json.dumps(parameters)],
    )


def finish_enrich(con: duckdb.DuckDBPyConnection, run: Mapping[str, Any]) -> None:
    """An enrich run's outcome: ``finished``, ``status``, ``models``, the photo counts, ``detections``,
    ``errors_by_reason``, ``duration_s`` and ``message`` of ``run`` on the row of ``run["run_id"]``."""
    con.execute(
        """UPDATE enrich_runs SET finished = ?, status = ?, models = ?, photos = ?, ok = ?, no_animal = ?,
           failed = ?, detections = ?, errors_by_reason = ?, duration_s = ?, message = ? WHERE run_id = ?""",
        [
            run["finished"],
            run["status"],
            json.dumps(run["models"]),
            run["photos"],
            run["ok"],
            run["no_animal"],
            run["failed"],
            run["detections"],
            json.dumps(run["errors_by_reason"]),
            run["duration_s"],
            run.get("message"),
            run["run_id"],
        ],
    )


# ------------------------------------------------------------------------------------------------ match_runs


def start_match(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    started: dt.datetime,
    parameters: Mapping[str, Any],
    lance_versions: Mapping[str, int | None],
) -> None:
    con.execute(
        "INSERT INTO match_runs (run_id, started, status, parameters, lance_versions) VALUES (?, ?, 'running', ?, ?)",
        [run_id, started, json.dumps(parameters), json.dumps(lance_versions)],
    )


def publish_match(
    con: duckdb.DuckDBPyConnection, run_id: str, finished: dt.datetime, summary: Mapping[str, Any]
) -> None:
    """Mark a match run ``published`` with its summary's counts (readers then see its matches as the current ones)."""
    con.execute(
        "UPDATE match_runs SET status = 'published', finished = ?, lost_listings = ?, found_listings = ?, "
        "candidate_pairs = ?, matches = ?, duration_s = ?, message = ?, embed_model = ? WHERE run_id = ?",
        [
            finished,
            summary["lost_listings"],
            summary["found_listings"],
            summary["candidate_pairs"],
            summary["matches"],
            summary["duration_s"],
            summary.get("message"),
            summary.get("embed_model"),
            run_id,
        ],
    )


def insert_matches(con: duckdb.DuckDBPyConnection, rows: pa.Table) -> int:
    """Add ``rows`` (columns of the ``matches`` view, by name; ``run_id``, both listing ids and ``score`` required)
    as new pairs of their runs: each row's values become a ``match_pairs`` row under a fresh pair id and its run and
    ranks a ``match_members`` row. Pair ids continue from the largest in the file, which is safe because a write
    connection holds the only write lock on the file. Returns the rows added."""
    first = int(con.execute("SELECT coalesce(max(pair_id), 0) FROM match_pairs").fetchall()[0][0]) + 1
    incoming = rows.append_column("pair_id", pa.array(range(first, first + rows.num_rows), pa.int64()))
    members = [c for c in ("run_id", "pair_id", "rank_for_lost", "rank_for_found") if c in incoming.column_names]
    values = [c for c in incoming.column_names if c not in members or c == "pair_id"]
    con.register("_incoming_matches", incoming)
    try:
        con.execute(f"INSERT INTO match_pairs BY NAME SELECT {', '.join(values)} FROM _incoming_matches")
        con.execute(f"INSERT INTO match_members BY NAME SELECT {', '.join(members)} FROM _incoming_matches")
    finally:
        con.unregister("_incoming_matches")
    return rows.num_rows


def carry_matches(con: duckdb.DuckDBPyConnection, run_id: str, ranks: pa.Table) -> int:
    """Make the pairs ``ranks`` names (``pair_id``, ``rank_for_lost``, ``rank_for_found``: pairs of an earlier run)
    pairs of ``run_id`` too, with those ranks: one narrow ``match_members`` row each, the pair's values stay where
    they are. Returns the pairs carried."""
    con.register("_carried", ranks)
    try:
        con.execute(
            "INSERT INTO match_members (run_id, pair_id, rank_for_lost, rank_for_found) "
            "SELECT ?, pair_id, rank_for_lost, rank_for_found FROM _carried",
            [run_id],
        )
    finally:
        con.unregister("_carried")
    return ranks.num_rows


def delete_matches(con: duckdb.DuckDBPyConnection, runs: str, params: list[Any]) -> int:
    """Delete the pairs of the match runs ``runs`` selects (a SQL condition on ``run_id``), and the pair values no
    run lists any more. Returns the run pairs deleted."""
    deleted = con.execute(f"DELETE FROM match_members WHERE {runs}", params).fetchall()
    con.execute("DELETE FROM match_pairs WHERE pair_id NOT IN (SELECT pair_id FROM match_members)")
    return int(deleted[0][0]) if deleted else 0


def prune_matches(con: duckdb.DuckDBPyConnection, keep_runs: int) -> int:
    """Delete the pairs of every match run but the newest ``keep_runs`` published ones (failed and abandoned runs'
    pairs included); the runs' own rows stay. Returns the pairs deleted."""
    kept = max(2, int(keep_runs))
    return delete_matches(
        con,
        "run_id NOT IN (SELECT run_id FROM match_runs WHERE status = 'published' ORDER BY finished DESC, started DESC "
        "LIMIT ?) AND run_id NOT IN (SELECT run_id FROM match_runs WHERE status = 'running')",
        [kept],
    )


def record_match_lineage(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    mode: str,
    reason: str,
    fingerprint: str,
    lineage: Mapping[str, Any],
    changes: Mapping[str, Any],
) -> None:
    """How a match run was made: ``full`` or ``incremental`` and why, its scoring fingerprint and lineage (scoring
    inputs, frozen background), and what changed since the previous published run."""
    con.execute(
        "UPDATE match_runs SET mode = ?, mode_reason = ?, scoring_fingerprint = ?, lineage = ?, changes = ? "
        "WHERE run_id = ?",
        [mode, reason, fingerprint, json.dumps(lineage), json.dumps(changes), run_id],
    )


def fail_match(
    con: duckdb.DuckDBPyConnection, run_id: str, finished: dt.datetime, duration_s: float, message: str
) -> None:
    """Mark the run failed and delete the pairs it inserted before failing (never published, never shown)."""
    con.execute(
        "UPDATE match_runs SET status = 'failed', finished = ?, duration_s = ?, message = ? WHERE run_id = ?",
        [finished, duration_s, message, run_id],
    )
    delete_matches(con, "run_id = ?", [run_id])


# ------------------------------------------------------------------------------------------------ loop rounds


def start_round(
    con: duckdb.DuckDBPyConnection,
    round_id: str,
    started: dt.datetime,
    steps: list[str],
    changed: int,
    first_seen: dt.datetime | None,
) -> None:
    con.execute(
        "INSERT INTO loop_rounds (round_id, started, status, steps, changed_listings, first_seen) "
        "VALUES (?, ?, 'running', ?, ?, ?)",
        [round_id, started, json.dumps(steps), changed, first_seen],
    )


def update_round(con: duckdb.DuckDBPyConnection, round_id: str, **columns: Any) -> None:
    """Set ``columns`` (``status``, ``finished``, ``match_run_id``, ``published``, ``latency_s``, ``merged_into``,
    ``message``) on a round's row."""
    allowed = {"status", "finished", "match_run_id", "published", "latency_s", "merged_into", "message"}
    unknown = set(columns) - allowed
    if unknown:
        raise ValueError(f"not a loop_rounds column to update: {sorted(unknown)}")
    con.execute(
        f"UPDATE loop_rounds SET {', '.join(f'{c} = ?' for c in columns)} WHERE round_id = ?",
        [*columns.values(), round_id],
    )


def add_step(
    con: duckdb.DuckDBPyConnection,
    round_id: str,
    step: str,
    attempt: int,
    status: str,
    started: dt.datetime,
    *,
    source: str = "",
    run_id: str | None = None,
    finished: dt.datetime | None = None,
    changed: int | None = None,
    first_seen: dt.datetime | None = None,
    error: str | None = None,
) -> None:
    con.execute(
        "INSERT INTO loop_steps (round_id, step, source, attempt, status, run_id, started, finished, "
        "changed_listings, first_seen, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [round_id, step, source, attempt, status, run_id, started, finished, changed, first_seen, error],
    )


def finish_step(
    con: duckdb.DuckDBPyConnection,
    round_id: str,
    step: str,
    attempt: int,
    status: str,
    finished: dt.datetime,
    *,
    run_id: str | None = None,
    result: Mapping[str, Any] | None = None,
    error: str | None = None,
) -> None:
    con.execute(
        "UPDATE loop_steps SET status = ?, finished = ?, run_id = coalesce(?, run_id), result = ?, error = ? "
        "WHERE round_id = ? AND step = ? AND source = '' AND attempt = ?",
        [status, finished, run_id, json.dumps(result, default=str) if result else None, error, round_id, step, attempt],
    )


def interrupt_steps(con: duckdb.DuckDBPyConnection, at: dt.datetime, message: str) -> int:
    """Close every ``running`` step row as ``interrupted`` (a scheduler stopped during it); returns how many."""
    n = con.execute("SELECT count(*) FROM loop_steps WHERE status = 'running'").fetchone()[0]
    con.execute(
        "UPDATE loop_steps SET status = 'interrupted', finished = ?, error = ? WHERE status = 'running'", [at, message]
    )
    return int(n)


def add_alert(
    con: duckdb.DuckDBPyConnection,
    subject: str,
    kind: str,
    incident: str,
    raised: dt.datetime,
    message: str,
    emailed_to: str | None,
) -> None:
    con.execute(
        "INSERT INTO loop_alerts (subject, kind, incident, raised, message, emailed_to) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT DO NOTHING",
        [subject, kind, incident, raised, message, emailed_to],
    )


# ------------------------------------------------------------------------------------------------ feedback


def add_feedback(
    con: duckdb.DuckDBPyConnection,
    lost_listing_id: str,
    found_listing_id: str,
    verdict: str,
    who: str,
    created_at: dt.datetime,
    note: str | None,
) -> None:
    """One shelter verdict on a candidate pair (``verdict`` is checked by the table: confirmed or rejected)."""
    con.execute(
        "INSERT INTO feedback (lost_listing_id, found_listing_id, verdict, who, created_at, note) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [lost_listing_id, found_listing_id, verdict, who, created_at, note],
    )


# ------------------------------------------------------------------------------------------------ report_deliveries


def record_report_delivery(
    con: duckdb.DuckDBPyConnection, shelter_key: str, run_id: str, sent_at: dt.datetime, pairs: list[Mapping[str, Any]]
) -> None:
    """The candidate pairs (``lost_listing_id``, ``found_listing_id``) a shelter's report e-mail carried: from now on
    they are no longer new for that shelter (a pair already recorded keeps its first run and time)."""
    con.executemany(
        "INSERT INTO report_deliveries (shelter_key, lost_listing_id, found_listing_id, run_id, sent_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [[shelter_key, p["lost_listing_id"], p["found_listing_id"], run_id, sent_at] for p in pairs],
    )
