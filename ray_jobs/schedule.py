"""``homeward sources`` and ``homeward schedule``: what is crawled, how it went, and crawling it on time.

``sources`` lists every source of the sources config with its cadence and, from DuckDB ``crawl_runs``: the last
run and its status, the last success, the lag since it (and whether the source is overdue: lag > cadence), the
share of failed runs and the error rate (errors ÷ (items + errors)) over its last ``window`` runs.

``schedule`` runs every enabled source at its ``cadence_minutes``: a source is due when its last finished run
*started* more than one cadence ago (or it never finished one); a source whose last run failed is retried sooner,
with exponential backoff (``schedule.backoff_base_s`` doubling per failure in a row, at most the cadence or
``schedule.backoff_max_s``). After the crawls, each round runs the pipeline steps for what they brought
(:mod:`ray_jobs.loop`: enrich, match, deliver reports, each a ``loop_steps`` row, resumed after a restart) and raises
operator alerts (:mod:`ray_jobs.operator_alerts`). One scheduler per data dir (a lock file refuses a second).

Why this loop and not APScheduler: what is due is a function of the run rows in DuckDB (last start, last failure,
failures in a row), not of a timer, so a restarted scheduler resumes exactly from the database with nothing else to
keep in step; APScheduler's interval jobs would need their own persistent job store (SQLAlchemy), which can disagree
with ``crawl_runs``, and still this code to compute backoff and resume rounds. Its 3.x line is in maintenance and
4.x, a different API, is still pre-release. All state is in ``crawl_runs``, so a restarted
scheduler picks up exactly where the previous one was — a source crawled ten minutes before the restart is not
crawled again, one that was due during the downtime is crawled at once, and a run left ``running`` by a killed
scheduler is closed as ``interrupted`` and its source crawled again at once, resuming from the stored card state
(unless its crawl process is still alive: then the source counts as in flight). Two
crawls of one source never overlap: the scheduler does not start a source whose run is in flight, and
:func:`ray_jobs.crawl.begin_run` refuses a second one even from another ``homeward crawl``.

Each due source is crawled in its own process (``crawlers/run.py``), up to ``max_parallel`` at once, so a slow
source never delays the others. The pipeline steps run in a thread of their own, one round at a time, so a long
match (minutes at national size) never holds back a crawl that falls due meanwhile: the loop goes on launching
crawls, and what they bring is the next round's. ``--once`` runs one round (start what is due, wait for it) and returns;
``--max-cycles N`` bounds the loop (for tests and cron-style use); without either it runs until interrupted, and an
interrupt stops the crawls in flight gracefully (recorded ``interrupted``; the next round resumes them).
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from crawlers.sources import SourceError, load_sources
from engine.config import Settings
from engine.errors import HomewardError
from engine.storage import RunsDB
from ray_jobs.crawl import CrawlBusyError, absolute_settings, row_alive, run_sources
from ray_jobs.loop import advance, backoff, close_interrupted_steps, loop_status, source_latency, step_failures
from ray_jobs.operator_alerts import incidents, raise_alerts

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


def _next_due(settings: Settings, cadence: float, history: list[tuple[Any, ...]]) -> datetime | None:
    """When a source is due, from its finished runs (newest first: started, finished, status, ...): one cadence after
    its last finished run started; after a failure, sooner: the retry backoff after that failure (never later than
    the cadence). None: it never finished a run (due now)."""
    if not history:
        return None
    started, finished, status = _aware(history[0][0]), _aware(history[0][1]), history[0][2]
    due = started + timedelta(minutes=float(cadence))
    if status == "failed":
        failures = next((i for i, r in enumerate(history) if r[2] != "failed"), len(history))
        due = min(due, (finished or started) + backoff(settings, failures))
    return due


def source_status(settings: Settings, window: int = 10) -> list[dict[str, Any]]:
    """One dict per source: config, last run, last success, lag, overdue, failure share and error rate, failures in
    a row with the last error, when it is next due, and the latency of its latest new listings to a published match."""
    sources = load_sources(settings)
    runs = RunsDB(settings.duckdb)
    rows = runs.query(
        """
        SELECT source, run_id, epoch(started), epoch(finished), status, items, errors, errors_by_reason, message,
               row_number() OVER (PARTITION BY source ORDER BY started DESC) AS n
        FROM crawl_runs WHERE status <> 'skipped'
        """,
    )
    by_source: dict[str, list[tuple[Any, ...]]] = {}
    for row in rows:
        by_source.setdefault(row[0], []).append(row)
    latency = source_latency(runs)
    now = datetime.now(UTC)
    out = []
    for name in sorted(set(sources) | set(by_source)):
        cfg = sources.get(name, {})
        history = sorted(by_source.get(name, []), key=lambda r: r[9])
        recent = [r for r in history if r[9] <= window]
        last = history[0] if history else None
        ok = [r for r in history if r[4] == "ok"]
        last_ok = _aware(ok[0][3]) if ok else None
        finished = [r for r in history if r[4] in ("ok", "failed")]
        streak = list(itertools.takewhile(lambda r: r[4] == "failed", finished))
        cadence = cfg.get("cadence_minutes")
        next_due = _next_due(settings, cadence, [r[2:] for r in finished]) if cadence else None
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
                "first_run": _aware(history[-1][2]).isoformat() if history else None,
                "last_run": _aware(last[2]).isoformat() if last else None,
                "last_status": last[4] if last else None,
                "last_success": last_ok.isoformat() if last_ok else None,
                "lag_minutes": _minutes(lag),
                "overdue": bool(cfg.get("enabled", True))
                and bool(cfg)
                and (lag is None or (cadence is not None and lag > timedelta(minutes=cadence))),
                "next_due": (next_due or now).isoformat(timespec="seconds") if cadence else None,
                "consecutive_failures": len(streak),
                "failing_since": _aware(streak[-1][2]).isoformat(timespec="seconds") if streak else None,
                "failing_since_run": streak[-1][1] if streak else None,
                "last_error": next((r[8] for r in history if r[4] != "ok" and r[8]), None),
                "latency_s": latency.get(name),
                "runs": len(history),
                "failed_share": round(sum(r[4] != "ok" for r in recent) / len(recent), 3) if recent else None,
                "error_rate": round(errors / (items + errors), 4) if items + errors else None,
                "top_errors": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:5]),
            }
        )
    return out


def sources(settings: Settings, *, window: int = 10) -> dict[str, Any]:
    """List sources with last success, lag, error rate, failures in a row and next due, and the scheduler's rounds (a
    table on stderr, JSON on the last line).

    Args:
        window: how many recent runs of each source the failure share and error rate are computed over.
    """
    table = source_status(settings, window)
    state = loop_status(settings)
    header = f"{'source':<14}{'spider':<14}{'on':<4}{'cadence':>8}  {'last success':<20}{'lag':>9}  "
    header += f"{'status':<12}{'err rate':>9}{'fails':>6}  {'next due':<17}{'latency':>9}"
    lines = [header]
    now = datetime.now(UTC)
    for s in table:
        last = (s["last_success"] or "never")[:19].replace("T", " ")
        rate = "-" if s["error_rate"] is None else f"{s['error_rate']:.2%}"
        lag, cadence = human_minutes(s["lag_minutes"]), human_minutes(s["cadence_minutes"])
        due = "-"
        if s["next_due"] and s["enabled"]:
            wait = datetime.fromisoformat(s["next_due"]) - now
            due = "now" if wait <= timedelta(0) else f"in {human_minutes(wait.total_seconds() / 60)}"
        latency = "-" if s["latency_s"] is None else human_minutes(s["latency_s"] / 60)
        flag = " OVERDUE" if s["overdue"] else ""
        lines.append(
            f"{s['source']:<14}{s['spider'] or '?':<14}{'y' if s['enabled'] else 'n':<4}"
            f"{cadence:>8}  {last:<20}{lag:>9}  {s['last_status'] or '-':<12}{rate:>9}{s['consecutive_failures']:>6}  "
            f"{due:<17}{latency:>9}{flag}"
        )
        if s["consecutive_failures"] and s["last_error"]:
            lines.append(f"{'':<14}last error: {s['last_error'][:100]}")
    last_round = state["last_round"]
    if last_round:
        steps = ", ".join(
            f"{st['step']}{'(' + st['source'] + ')' if st.get('source') else ''} {st['status']}"
            for st in last_round["steps"]
        )
        latency = "" if last_round["latency_s"] is None else f", latency {last_round['latency_s']:.0f}s"
        lines.append(
            f"\nlast round {last_round['round_id']} ({last_round['status']}, {last_round['changed_listings']} new or "
            f"changed listings{latency}): {steps}"
        )
    for step, f in state["failing_steps"].items():
        lines.append(f"step {step}: {f['failures']} failure(s) in a row, retry at {f['retry_at']}: {f['last_error']}")
    print("\n".join(lines), file=sys.stderr)
    return {"sources": table, "loop": state}


def due_sources(settings: Settings, names: list[str] | None = None, now: datetime | None = None) -> list[str]:
    """Enabled sources (or ``names``) not in flight whose last finished run (ok or failed) started at least one
    cadence ago, or that never finished one; after a failed run, once the retry backoff has passed (see
    :func:`_next_due`). An interrupted run does not count: its source is due at once, so a crawl cut short by a
    restart is resumed by the next round (the card state makes it skip what it stored)."""
    now = now or datetime.now(UTC)
    config = load_sources(settings)
    wanted = names or [n for n, s in config.items() if s.get("enabled", True)]
    unknown = [n for n in wanted if n not in config]
    if unknown:
        raise SourceError(f"unknown source(s) {', '.join(unknown)}; known sources: {', '.join(sorted(config))}")
    runs = RunsDB(settings.duckdb)
    finished: dict[str, list[tuple[Any, ...]]] = {}
    for source, *row in runs.query(
        "SELECT source, epoch(started), epoch(finished), status FROM crawl_runs WHERE status IN ('ok', 'failed') "
        "QUALIFY row_number() OVER (PARTITION BY source ORDER BY started DESC) <= 100 ORDER BY started DESC"
    ):
        finished.setdefault(source, []).append(tuple(row))
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
        next_due = _next_due(settings, float(config[name]["cadence_minutes"]), finished.get(name, []))
        if next_due is None or now >= next_due:
            due.append(name)
    return due


class ScheduleBusyError(HomewardError):
    """Another ``homeward schedule`` runs on this data dir."""


def _check_alerts(settings: Settings) -> list[dict[str, Any]]:
    current = incidents(settings, source_status(settings), step_failures(RunsDB(settings.duckdb)))
    return raise_alerts(settings, current)


Round = tuple[dict[str, Any] | None, list[dict[str, Any]]]


def _round(settings: Settings, pipeline: bool) -> Round:
    """The pipeline steps for what the finished crawls brought (``pipeline``) and the operator alerts → (what the
    round did or None, alerts raised). A store problem in the bookkeeping fails this round, not the service: the next
    round retries."""
    try:
        return (advance(settings) if pipeline else None), _check_alerts(settings)
    except HomewardError as exc:
        log.exception("schedule: round bookkeeping failed")
        return {"error": str(exc), "steps": [{"step": "round", "status": "failed", "error": str(exc)}]}, []


def _in_background(settings: Settings, pipeline: bool) -> Future[Round]:
    """:func:`_round` in a daemon thread. Daemon, so an interrupted scheduler exits at once instead of waiting out a
    long match: the step's row, left ``running``, is closed ``interrupted`` and resumed by the next scheduler, as
    after a kill."""
    fut: Future[Round] = Future()

    def run() -> None:
        fut.set_running_or_notify_cancel()
        try:
            fut.set_result(_round(settings, pipeline))
        except BaseException as exc:  # handed to the loop's thread, which re-raises it
            fut.set_exception(exc)

    threading.Thread(target=run, name="homeward-pipeline", daemon=True).start()
    return fut


def schedule(
    settings: Settings,
    *,
    source: list[str] | None = None,
    once: bool = False,
    max_cycles: int | None = None,
    poll_seconds: float = 30.0,
    max_parallel: int = 4,
    timeout_minutes: float | None = None,
    pipeline: bool = True,
) -> dict[str, Any]:
    """Run every enabled source at its cadence and, after crawls that brought new or changed listings, enrich, match
    and deliver reports; every step a row in DuckDB, resumed after a restart.

    Args:
        source: only these sources (default: every enabled source).
        once: run one round — start what is due, wait for it, run the steps after it — then return.
        max_cycles: stop after this many rounds (default: run until interrupted).
        poll_seconds: time between rounds.
        max_parallel: most crawls running at once.
        timeout_minutes: stop a crawl (gracefully) that runs longer than this.
        pipeline: run the steps after the crawls (enrich, match, deliver); --no-pipeline: crawl only.
    """
    settings = absolute_settings(settings)
    settings.ensure_writable()
    lock = FileLock(str(Path(settings.data_dir) / "schedule.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout as exc:
        raise ScheduleBusyError(f"another `homeward schedule` runs on data dir {settings.data_dir}") from exc
    try:
        return _loop(settings, source, once, max_cycles, poll_seconds, max_parallel, timeout_minutes, pipeline)
    finally:
        lock.release()


def _loop(
    settings: Settings,
    source: list[str] | None,
    once: bool,
    max_cycles: int | None,
    poll_seconds: float,
    max_parallel: int,
    timeout_minutes: float | None,
    pipeline: bool,
) -> dict[str, Any]:
    interrupted = close_interrupted_steps(settings)
    if interrupted:
        log.warning("schedule: %d step(s) left running by a stopped scheduler are resumed", interrupted)
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=max(1, max_parallel), thread_name_prefix="homeward-crawl")
    running: dict[str, Future[list[dict[str, Any]]]] = {}
    pending: Future[Round] | None = None  # the round whose pipeline steps run in the background
    results: list[dict[str, Any]] = []
    rounds: list[dict[str, Any]] = []
    alerts: list[dict[str, Any]] = []
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

    def record(outcome: Round) -> None:
        done, raised = outcome
        alerts.extend(raised)
        if done:
            rounds.append(done)

    def finish_round(block: bool) -> None:
        nonlocal pending
        if pending is not None and (block or pending.done()):
            record(pending.result())
            pending = None

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
            last = once or (max_cycles is not None and cycles >= max_cycles)
            collect(block=last)
            if last:  # the round in flight, then one for the crawls just waited for, in this thread
                finish_round(block=True)
                record(_round(settings, pipeline))
                break
            finish_round(block=False)
            if pending is None:
                pending = _in_background(settings, pipeline)
            deadline = time.monotonic() + poll_seconds
            while time.monotonic() < deadline and not all(f.done() for f in running.values()) and running:
                time.sleep(min(0.5, poll_seconds))
            if not running:
                time.sleep(max(0.0, deadline - time.monotonic()))
    except KeyboardInterrupt:
        stop.set()
        if pending is not None and not pending.done():
            log.warning("schedule: interrupted while a pipeline step runs; the next scheduler resumes it")
        collect(block=True)
        raise
    finally:
        stop.set()
        pool.shutdown(wait=True)
    failed_steps = [st for r in rounds for st in r.get("steps", []) if st["status"] == "failed"]
    ok = all(r.get("status") in ("ok", "skipped") for r in results) and not failed_steps
    return {
        "cycles": cycles,
        "launched": launched,
        "runs": results,
        "rounds": rounds,
        "alerts": alerts,
        "status": "ok" if ok else "partial",
    }
