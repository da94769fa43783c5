"""``homeward sources`` and ``homeward schedule``: what is crawled, how it went, and crawling it on time.

``sources`` lists every source of the sources config with its cadence and, from DuckDB ``crawl_runs``: the last
run and its status, the last success, the lag since it (and whether the source is overdue: lag > cadence), the
share of failed runs and the error rate (errors ÷ (items + errors)) over its last ``window`` runs.

``schedule`` runs every enabled source at its ``cadence_minutes``: a source is due when its last finished run
*started* more than one cadence ago (or it never finished one). All state is in ``crawl_runs``, so a restarted
scheduler picks up exactly where the previous one was — a source crawled ten minutes before the restart is not
crawled again, one that was due during the downtime is crawled at once, and a run left ``running`` by a killed
scheduler is closed as ``interrupted`` and its source crawled again at once, resuming from the stored card state
(unless its crawl process is still alive: then the source counts as in flight). Two
crawls of one source never overlap: the scheduler does not start a source whose run is in flight, and
:func:`ray_jobs.crawl.begin_run` refuses a second one even from another ``homeward crawl``.

Each due source is crawled in its own process (``crawlers/run.py``), up to ``max_parallel`` at once, so a slow
source never delays the others. ``--once`` runs one round (start what is due, wait for it) and returns;
``--max-cycles N`` bounds the loop (for tests and cron-style use); without either it runs until interrupted, and an
interrupt stops the crawls in flight gracefully (recorded ``interrupted``; the next round resumes them).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from crawlers.sources import SourceError, load_sources
from engine.config import Settings
from engine.storage import RunsDB
from ray_jobs.crawl import CrawlBusyError, absolute_settings, row_alive, run_sources

log = logging.getLogger(__name__)


def _aware(ts: float | datetime | None) -> datetime | None:
    """A UTC datetime from DuckDB's ``epoch(ts)`` (TIMESTAMPTZ values themselves would need pytz to fetch)."""
    if ts is None:
        return None
    if isinstance(ts, datetime):
        return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    return datetime.fromtimestamp(float(ts), UTC)


def _minutes(delta: timedelta | None) -> float | None:
    return None if delta is None else round(delta.total_seconds() / 60.0, 1)


def human_minutes(minutes: float | None) -> str:
    """A duration in minutes as people say it: ``12m``, ``3h 20m``, ``19d 23h`` (two units at most; ``-`` for never)."""
    if minutes is None:
        return "-"
    total = max(0, round(minutes))
    days, rest = divmod(total, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {mins}m" if hours else f"{mins}m"


def source_status(settings: Settings, window: int = 10) -> list[dict[str, Any]]:
    """One dict per source: config, last run, last success, lag, overdue, failure share and error rate."""
    sources = load_sources(settings)
    runs = RunsDB(settings.duckdb)
    rows = runs.query(
        """
        SELECT source, run_id, epoch(started), epoch(finished), status, items, errors, errors_by_reason,
               row_number() OVER (PARTITION BY source ORDER BY started DESC) AS n
        FROM crawl_runs WHERE status <> 'skipped'
        """,
    )
    by_source: dict[str, list[tuple[Any, ...]]] = {}
    for row in rows:
        by_source.setdefault(row[0], []).append(row)
    now = datetime.now(UTC)
    out = []
    for name in sorted(set(sources) | set(by_source)):
        cfg = sources.get(name, {})
        history = sorted(by_source.get(name, []), key=lambda r: r[8])
        recent = [r for r in history if r[8] <= window]
        last = history[0] if history else None
        ok = [r for r in history if r[4] == "ok"]
        last_ok = _aware(ok[0][3]) if ok else None
        cadence = cfg.get("cadence_minutes")
        lag = now - last_ok if last_ok else None
        items = sum(int(r[5] or 0) for r in recent)
        errors = sum(int(r[6] or 0) for r in recent)
        reasons: dict[str, int] = {}
        for r in recent:
            for reason, count in json.loads(r[7] or "{}").items():
                if not reason.startswith("warning:"):
                    reasons[reason] = reasons.get(reason, 0) + int(count)
        out.append(
            {
                "source": name,
                "spider": cfg.get("spider"),
                "enabled": bool(cfg.get("enabled", True)) if cfg else False,
                "configured": bool(cfg),
                "cadence_minutes": cadence,
                "last_run": _aware(last[2]).isoformat() if last else None,
                "last_status": last[4] if last else None,
                "last_success": last_ok.isoformat() if last_ok else None,
                "lag_minutes": _minutes(lag),
                "overdue": bool(cfg.get("enabled", True))
                and bool(cfg)
                and (lag is None or (cadence is not None and lag > timedelta(minutes=cadence))),
                "runs": len(history),
                "failed_share": round(sum(r[4] != "ok" for r in recent) / len(recent), 3) if recent else None,
                "error_rate": round(errors / (items + errors), 4) if items + errors else None,
                "top_errors": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:5]),
            }
        )
    return out


def sources(settings: Settings, *, window: int = 10) -> dict[str, Any]:
    """List sources with last success, lag and error rate (a table on stderr, JSON on the last line).

    Args:
        window: how many recent runs of each source the failure share and error rate are computed over.
    """
    table = source_status(settings, window)
    header = f"{'source':<14}{'spider':<14}{'on':<4}{'cadence':>8}  {'last success':<20}{'lag':>9}  "
    header += f"{'status':<12}{'err rate':>9}"
    lines = [header]
    for s in table:
        last = (s["last_success"] or "never")[:19].replace("T", " ")
        rate = "-" if s["error_rate"] is None else f"{s['error_rate']:.2%}"
        lag, cadence = human_minutes(s["lag_minutes"]), human_minutes(s["cadence_minutes"])
        flag = " OVERDUE" if s["overdue"] else ""
        lines.append(
            f"{s['source']:<14}{s['spider'] or '?':<14}{'y' if s['enabled'] else 'n':<4}"
            f"{cadence:>8}  {last:<20}{lag:>9}  {s['last_status'] or '-':<12}{rate:>9}{flag}"
        )
    print("\n".join(lines), file=sys.stderr)
    return {"sources": table}


def due_sources(settings: Settings, names: list[str] | None = None, now: datetime | None = None) -> list[str]:
    """Enabled sources (or ``names``) not in flight whose last finished run (ok or failed) started at least one
    cadence ago, or that never finished one. An interrupted run does not count: its source is due at once, so a
    crawl cut short by a restart is resumed by the next round (the card state makes it skip what it stored)."""
    now = now or datetime.now(UTC)
    config = load_sources(settings)
    wanted = names or [n for n, s in config.items() if s.get("enabled", True)]
    unknown = [n for n in wanted if n not in config]
    if unknown:
        raise SourceError(f"unknown source(s) {', '.join(unknown)}; known sources: {', '.join(sorted(config))}")
    runs = RunsDB(settings.duckdb)
    last = dict(
        runs.query(
            "SELECT source, epoch(max(started)) FROM crawl_runs WHERE status IN ('ok', 'failed') GROUP BY source"
        )
    )
    in_flight = {
        source
        for run_id, source, params, started in runs.query(
            "SELECT run_id, source, parameters, epoch(started) FROM crawl_runs WHERE status = 'running'"
        )
        if row_alive(run_id, params, started, settings.data_dir)
    }
    due = []
    for name in wanted:
        if name in in_flight:
            continue
        started = _aware(last.get(name))
        if started is None or now - started >= timedelta(minutes=float(config[name]["cadence_minutes"])):
            due.append(name)
    return due


def schedule(
    settings: Settings,
    *,
    source: list[str] | None = None,
    once: bool = False,
    max_cycles: int | None = None,
    poll_seconds: float = 30.0,
    max_parallel: int = 4,
    timeout_minutes: float | None = None,
) -> dict[str, Any]:
    """Run every enabled source at its cadence, recording runs in DuckDB (resumes from crawl_runs after a restart).

    Args:
        source: only these sources (default: every enabled source).
        once: run one round — start what is due, wait for it — then return.
        max_cycles: stop after this many rounds (default: run until interrupted).
        poll_seconds: time between rounds.
        max_parallel: most crawls running at once.
        timeout_minutes: stop a crawl (gracefully) that runs longer than this.
    """
    settings = absolute_settings(settings)
    settings.ensure_writable()
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=max(1, max_parallel), thread_name_prefix="homeward-crawl")
    running: dict[str, Future[list[dict[str, Any]]]] = {}
    results: list[dict[str, Any]] = []
    launched: list[str] = []
    cycles = 0
    timeout_s = timeout_minutes * 60 if timeout_minutes else None

    def collect(block: bool) -> None:
        for name, fut in list(running.items()):
            if block or fut.done():
                try:
                    results.extend(fut.result())
                except CrawlBusyError as exc:
                    results.append({"source": name, "status": "skipped", "message": str(exc)})
                except Exception as exc:
                    log.exception("crawl of %s failed to run", name)
                    results.append({"source": name, "status": "failed", "message": repr(exc)})
                del running[name]

    try:
        while True:
            cycles += 1
            collect(block=False)
            for name in due_sources(settings, source):
                if name in running or len(running) >= max_parallel:
                    continue
                log.info("schedule: crawling %s", name)
                launched.append(name)
                running[name] = pool.submit(
                    run_sources,
                    settings,
                    [name],
                    timeout_s=timeout_s,
                    skip_busy=True,
                    stop=stop,
                    check_writable=False,
                    progress=False,
                )
            if once:
                collect(block=True)
                break
            if max_cycles is not None and cycles >= max_cycles:
                collect(block=True)
                break
            deadline = time.monotonic() + poll_seconds
            while time.monotonic() < deadline and not all(f.done() for f in running.values()) and running:
                time.sleep(min(0.5, poll_seconds))
            if not running:
                time.sleep(max(0.0, deadline - time.monotonic()))
    except KeyboardInterrupt:
        stop.set()
        collect(block=True)
        raise
    finally:
        stop.set()
        pool.shutdown(wait=True)
    return {
        "cycles": cycles,
        "launched": launched,
        "runs": results,
        "status": "ok" if all(r.get("status") in ("ok", "skipped") for r in results) else "partial",
    }
