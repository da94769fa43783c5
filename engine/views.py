"""Analyst views: ``engine/sql/views.sql`` created in the DuckDB file, idempotently.

In the core beside the schema because jobs (``homeward match``) and the dashboards both create them.

:func:`ensure_views` checks (read-only) whether the file already holds this version of the views and only then takes
the write lock, for one short transaction of ``CREATE OR REPLACE VIEW`` statements. So a dashboard or report started
while a job writes waits at most for that job's transaction, and a second call costs one read.

:func:`rows` is the one way the dashboards read query results: through Arrow (DuckDB's ``fetchall`` of a TIMESTAMPTZ
needs pytz, which the stack does not install).
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

import duckdb

from engine.storage import RunsDB, StorageError

#: Every view the file defines, in creation order (the tests check each exists and answers).
VIEW_NAMES = (
    "published_match_runs",
    "latest_match_run",
    "pair_verdicts",
    "match_history",
    "latest_matches",
    "open_candidates",
    "matches_this_week",
    "source_yield",
    "time_to_reunion",
    "listings_over_time",
    "crawl_health",
    "job_throughput",
    "score_distribution",
)
VERSION_VIEW = "homeward_views_version"


def views_sql() -> str:
    return resources.files("engine.sql").joinpath("views.sql").read_text()


def statements(sql: str | None = None) -> list[str]:
    """The file's statements (separated by lines holding only ``;;``)."""
    text = views_sql() if sql is None else sql
    parts = []
    for chunk in text.split("\n;;"):
        body = "\n".join(line for line in chunk.splitlines() if line.strip() and not line.strip().startswith("--"))
        if body.strip():
            parts.append(chunk.strip())
    return parts


def version() -> str:
    return hashlib.sha256(views_sql().encode()).hexdigest()[:16]


def rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    """Run ``sql`` and return its rows as dicts (through Arrow, so TIMESTAMPTZ columns need no pytz)."""
    rel = con.sql(sql, params=params) if params else con.sql(sql)
    if rel is None:
        return []
    return rel.to_arrow_table().to_pylist()


def current(runs: RunsDB) -> bool:
    """Whether the file already holds this version of the views (read-only check)."""
    try:
        with runs.read() as con:
            got = rows(con, f"SELECT version FROM {VERSION_VIEW}")
    except (duckdb.Error, StorageError):  # absent view (older file) or a writer holding the lock too long
        return False
    return bool(got) and got[0]["version"] == version()


def ensure_views(runs: RunsDB | str) -> dict[str, Any]:
    """Create or refresh every analyst view in the DuckDB file; a no-op (one read) when already current.

    Args:
        runs: a :class:`engine.storage.RunsDB` or the path of the DuckDB file.
    """
    runs = RunsDB(runs) if isinstance(runs, str) else runs
    ver = version()
    if current(runs):
        return {"views": list(VIEW_NAMES), "version": ver, "created": False}
    with runs.write() as con:
        for stmt in statements():
            con.execute(stmt)
        con.execute(f"CREATE OR REPLACE VIEW {VERSION_VIEW} AS SELECT '{ver}' AS version")
    return {"views": list(VIEW_NAMES), "version": ver, "created": True}
