"""The scheduler's rounds: after crawls that brought new or changed listings, enrich, match and deliver, each step a
row, resumable, retried with backoff.

A **round** (``loop_rounds``) covers the crawl runs (``crawl_runs``) that finished since the previous round — whoever
ran them: the scheduler, a manual ``homeward crawl``, or a scheduler killed mid-crawl (its run closed
``interrupted`` later). Each covered crawl is a ``crawl`` step row (``loop_steps``) with the listings it wrote new or
changed, counted in LanceDB as the source's listings whose ``scraped_at`` lies inside the run (an unchanged listing
keeps its first ``scraped_at``), so a crawl whose counts were lost to a kill still counts. When that number is 0 the
round is crawl-only and closes at once. Otherwise it runs the pipeline steps in order: ``enrich`` (every photo not
yet enriched), ``match``, then one ``deliver:<name>`` step per entry of :data:`DELIVERIES` (shelter reports; alerts
plug in there with one line).

**Resume.** A step done ``ok`` in a round is never run again for that round. The round stays ``running`` until all
its steps are ``ok``; a scheduler that stops (killed, crashed, interrupted) leaves it open and the next one continues
at the first step not done (steps left ``running`` by a dead scheduler are closed ``interrupted`` first). A match
run published by a step that died before its row said ``ok`` is run again: steps are at-least-once, and each is safe
to repeat (enrich skips finished photos, a match run replaces the published one, a report is rewritten).

**Retry.** A failed step is retried with exponential backoff (``schedule.backoff_base_s`` doubling per failure in a
row, at most ``schedule.backoff_max_s``), counted over rounds, so a step failing in every round still backs off.
``enrich`` and ``match`` stop the round when they fail (a match without the new photos would be redone anyway);
deliveries are independent of each other. A new round that brings new listings while an earlier one is still open
takes it over (``merged``): the new round runs every step, its latency counts from the earliest listing of both.

**Latency.** A round's ``latency_s`` is from its earliest new or changed listing's ``scraped_at`` (the post first
seen) to the publication of the match run that scored it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow.compute as pc

from engine import run_rows, views
from engine.config import Settings
from engine.errors import HomewardError
from engine.storage import LanceStore, RunsDB

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RoundContext:
    """What a delivery gets: the round, the match run it published, and the match run the previous successful run of
    the same delivery covered (``None``: never delivered, everything is new)."""

    round_id: str
    match_run_id: str | None
    since_match_run_id: str | None
    earlier_results: list[dict[str, Any]]
    """Results of this delivery's earlier failed attempts in this round (what already went out)."""


Delivery = Callable[[Settings, RoundContext], dict[str, Any]]


def shelter_reports(settings: Settings, ctx: RoundContext) -> dict[str, Any]:
    """``homeward report`` (``--email`` when ``report.smtp_host`` is set) for each shelter with candidates that the
    previous delivered match run did not have. A shelter e-mailed by an earlier attempt of this round is not
    e-mailed again; one shelter's failure does not stop the others (the step fails and retries the rest)."""
    from dashboards.report import report

    runs = RunsDB(settings.duckdb)
    views.ensure_views(runs)
    with runs.read() as con:
        keys = [
            k
            for (k,) in con.execute(
                "SELECT DISTINCT shelter_key FROM open_candidates o WHERE $1::VARCHAR IS NULL OR NOT EXISTS ("
                "SELECT 1 FROM matches m WHERE m.run_id = $1 AND m.lost_listing_id = o.lost_listing_id "
                "AND m.found_listing_id = o.found_listing_id) ORDER BY 1",
                [ctx.since_match_run_id],
            ).fetchall()
        ]
    done = {k for r in ctx.earlier_results for k in r.get("delivered", [])}
    email = bool(settings.report.smtp_host)
    delivered, errors = sorted(done & set(keys)), {}
    for key in keys:
        if key in done:
            continue
        try:
            report(settings, shelter=key, email=email)
            delivered.append(key)
        except HomewardError as exc:
            errors[key] = str(exc)
    result = {"shelters": keys, "delivered": delivered, "emailed": email}
    if errors:
        raise StepFailed(f"reports failed for {len(errors)} shelter(s): {errors}", result)
    return result


def owner_alerts(settings: Settings, ctx: RoundContext) -> dict[str, Any]:
    """Owners' saved searches (``homeward watch``): e-mail each the listings of this match run above its threshold
    that it was not sent before (:func:`dashboards.alerts.deliver_watch_alerts`)."""
    from dashboards.alerts import deliver_watch_alerts

    return deliver_watch_alerts(settings, ctx.match_run_id)


#: The deliver steps, run in this order after each match: name → callable. Adding one is one line here.
DELIVERIES: dict[str, Delivery] = {"reports": shelter_reports, "owner_alerts": owner_alerts}


class StepFailed(HomewardError):
    """A step that did part of its work: ``result`` is recorded with the failure (a retry reads it)."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


def _enrich(settings: Settings) -> dict[str, Any]:
    from ray_jobs.enrich import enrich

    result = enrich(settings)
    if result.get("status") != "ok":
        raise StepFailed(f"enrich ended {result.get('status')}", result)
    return result


def _match(settings: Settings) -> dict[str, Any]:
    from ray_jobs.match import match

    return match(settings)


#: the jobs of the pipeline steps before the deliveries
JOBS: dict[str, Callable[[Settings], dict[str, Any]]] = {"enrich": _enrich, "match": _match}


def pipeline_steps() -> list[str]:
    return [*JOBS, *(f"deliver:{name}" for name in DELIVERIES)]


def backoff(settings: Settings, failures: int) -> timedelta:
    """How long after its ``failures``-th failure in a row a step is tried again."""
    cfg = settings.schedule
    return timedelta(seconds=min(cfg.backoff_max_s, cfg.backoff_base_s * 2 ** max(0, failures - 1)))


def _utc(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(float(epoch), UTC)


def step_failures(runs: RunsDB) -> dict[str, dict[str, Any]]:
    """Per pipeline step with failures since its last success: ``failures`` in a row, ``first_failed`` and
    ``last_failed`` (datetimes), ``first_failed_id`` (``round#attempt``: what identifies the streak), ``last_error``."""
    rows = runs.query(
        """
        WITH s AS (SELECT round_id, attempt, step, status, finished, error FROM loop_steps
                   WHERE source = '' AND status IN ('ok', 'failed') AND finished IS NOT NULL),
        last_ok AS (SELECT step, max(finished) AS t FROM s WHERE status = 'ok' GROUP BY step)
        SELECT s.step, count(*), epoch(min(s.finished)), epoch(max(s.finished)), arg_max(s.error, s.finished),
               arg_min(s.round_id || '#' || s.attempt, s.finished)
        FROM s LEFT JOIN last_ok USING (step)
        WHERE s.status = 'failed' AND (last_ok.t IS NULL OR s.finished > last_ok.t)
        GROUP BY s.step
        """
    )
    return {
        step: {
            "failures": int(n),
            "first_failed": _utc(first),
            "first_failed_id": first_id,
            "last_failed": _utc(last),
            "last_error": err,
        }
        for step, n, first, last, err, first_id in rows
    }


# ------------------------------------------------------------------------------------------------------ the crawls
def _uncovered_crawls(runs: RunsDB) -> list[dict[str, Any]]:
    """Finished crawl runs no round covers yet, oldest first."""
    rows = runs.query(
        """
        SELECT run_id, source, status, epoch(started), epoch(coalesce(finished, started))
        FROM crawl_runs c WHERE status <> 'running'
          AND NOT EXISTS (SELECT 1 FROM loop_steps s WHERE s.step = 'crawl' AND s.run_id = c.run_id)
        ORDER BY started
        """
    )
    keys = ("run_id", "source", "status", "started", "finished")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def _changed_listings(settings: Settings, crawls: list[dict[str, Any]]) -> None:
    """Set ``changed`` and ``first_seen`` on each crawl: its source's listings with ``scraped_at`` inside the run."""
    for c in crawls:
        c["changed"], c["first_seen"] = 0, None
    lance = LanceStore(settings.lance, settings.storage_options)
    if not crawls or not lance.exists("listings"):
        return
    table = lance.read("listings", columns=["source", "scraped_at"])
    sources = np.asarray(table["source"].to_pylist(), dtype=object)
    seen = pc.cast(pc.fill_null(table["scraped_at"], 0), "int64").to_numpy(zero_copy_only=False) / 1e6
    for c in crawls:
        inside = (sources == c["source"]) & (seen >= float(c["started"])) & (seen <= float(c["finished"]))
        c["changed"] = int(inside.sum())
        c["first_seen"] = _utc(float(seen[inside].min())) if c["changed"] else None


# ------------------------------------------------------------------------------------------------------ the rounds
def _open_round(runs: RunsDB) -> dict[str, Any] | None:
    rows = runs.query(
        "SELECT round_id, steps, changed_listings, epoch(first_seen) FROM loop_rounds WHERE status = 'running' "
        "ORDER BY started DESC LIMIT 1"
    )
    if not rows:
        return None
    round_id, steps, changed, first_seen = rows[0]
    return {
        "round_id": round_id,
        "steps": json.loads(steps),
        "changed": int(changed or 0),
        "first_seen": _utc(first_seen),
    }


def _new_round(runs: RunsDB, crawls: list[dict[str, Any]], previous: dict[str, Any] | None) -> dict[str, Any]:
    """Record a round covering ``crawls`` (taking over ``previous`` when it brings new listings) in one transaction."""
    now = datetime.now(UTC)
    round_id = f"round-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    changed = sum(c["changed"] for c in crawls)
    seen = [c["first_seen"] for c in crawls if c["first_seen"] is not None]
    steps = pipeline_steps() if changed else []
    if changed and previous is not None:
        changed += previous["changed"]
        if previous["first_seen"] is not None:
            seen.append(previous["first_seen"])
    first_seen = min(seen) if seen else None
    with runs.write() as con:
        run_rows.start_round(con, round_id, now, steps, changed, first_seen)
        nth: Counter[str] = Counter()  # a source crawled twice since the last round (a short cadence, a manual
        for c in crawls:  # crawl beside the scheduler's, a round's long match) has a crawl step per run: 1, 2, ...
            nth[c["source"]] += 1
            run_rows.add_step(con, round_id, "crawl", nth[c["source"]], c["status"], _utc(c["started"]),
                              source=c["source"], run_id=c["run_id"], finished=_utc(c["finished"]),
                              changed=c["changed"], first_seen=c["first_seen"])  # fmt: skip
        if not changed:
            run_rows.update_round(con, round_id, status="ok", finished=now, message="no new or changed listings")
        elif previous is not None:
            run_rows.update_round(con, previous["round_id"], status="merged", finished=now, merged_into=round_id,
                                  message=f"taken over by {round_id}, which brought new listings")  # fmt: skip
            con.execute(
                "UPDATE loop_rounds SET merged_into = ? WHERE merged_into = ?", [round_id, previous["round_id"]]
            )
    log.info("round %s: %d crawl(s), %d new or changed listing(s)", round_id, len(crawls), changed)
    return {"round_id": round_id, "steps": steps, "changed": changed, "first_seen": first_seen}


def _attempts(runs: RunsDB, round_id: str) -> dict[str, list[tuple[int, str, Any, Any]]]:
    """step → [(attempt, status, run_id, result JSON)] of a round's pipeline steps."""
    out: dict[str, list[tuple[int, str, Any, Any]]] = {}
    for step, attempt, status, run_id, result in runs.query(
        "SELECT step, attempt, status, run_id, result FROM loop_steps WHERE round_id = ? AND source = '' "
        "ORDER BY attempt",
        [round_id],
    ):
        out.setdefault(step, []).append((int(attempt), status, run_id, result))
    return out


def _since_match_run(runs: RunsDB, step: str, round_id: str) -> str | None:
    rows = runs.query(
        "SELECT r.match_run_id FROM loop_steps s JOIN loop_rounds r USING (round_id) "
        "WHERE s.step = ? AND s.status = 'ok' AND s.round_id <> ? AND r.match_run_id IS NOT NULL "
        "ORDER BY s.finished DESC LIMIT 1",
        [step, round_id],
    )
    return rows[0][0] if rows else None


def _run_step(
    settings: Settings, runs: RunsDB, rnd: dict[str, Any], step: str, attempt: int, earlier: list[dict[str, Any]]
) -> dict[str, Any]:
    round_id = rnd["round_id"]
    with runs.write() as con:
        run_rows.add_step(con, round_id, step, attempt, "running", datetime.now(UTC))
    t0 = time.perf_counter()
    try:
        if step in JOBS:
            result = JOBS[step](settings)
        else:
            match_run = runs.query("SELECT match_run_id FROM loop_rounds WHERE round_id = ?", [round_id])[0][0]
            ctx = RoundContext(round_id, match_run, _since_match_run(runs, step, round_id), earlier)
            result = DELIVERIES[step.split(":", 1)[1]](settings, ctx)
    except Exception as exc:
        log.exception("round %s: step %s failed (attempt %d)", round_id, step, attempt)
        partial = exc.result if isinstance(exc, StepFailed) else None
        with runs.write() as con:
            run_rows.finish_step(con, round_id, step, attempt, "failed", datetime.now(UTC), result=partial,
                                 error=f"{type(exc).__name__}: {exc}"[:2000])  # fmt: skip
        return {"step": step, "attempt": attempt, "status": "failed", "error": str(exc)}
    except BaseException as exc:
        with runs.write() as con:
            run_rows.finish_step(con, round_id, step, attempt, "interrupted", datetime.now(UTC), error=repr(exc))
        raise
    finished = datetime.now(UTC)
    with runs.write() as con:
        run_rows.finish_step(con, round_id, step, attempt, "ok", finished, run_id=result.get("run_id"), result=result)
        if step == "match":
            row = con.execute("SELECT epoch(finished) FROM match_runs WHERE run_id = ?", [result["run_id"]]).fetchone()
            published = _utc(row[0]) if row and row[0] is not None else finished
            first_seen = rnd["first_seen"]
            latency = (published - first_seen).total_seconds() if first_seen else None
            run_rows.update_round(con, round_id, match_run_id=result["run_id"], published=published,
                                  latency_s=latency)  # fmt: skip
    return {"step": step, "attempt": attempt, "status": "ok", "seconds": round(time.perf_counter() - t0, 3)}


def _continue(settings: Settings, runs: RunsDB, rnd: dict[str, Any]) -> list[dict[str, Any]]:
    """Run the round's steps not done yet whose backoff has passed; close the round when all are ``ok``."""
    done: list[dict[str, Any]] = []
    attempts = _attempts(runs, rnd["round_id"])
    now = datetime.now(UTC)
    pending = False
    for step in rnd["steps"]:
        tried = attempts.get(step, [])
        if any(status == "ok" for _, status, _, _ in tried):
            continue
        failing = step_failures(runs).get(step)
        if failing and now < failing["last_failed"] + backoff(settings, failing["failures"]):
            retry_at = failing["last_failed"] + backoff(settings, failing["failures"])
            done.append({"step": step, "status": "waiting", "retry_at": retry_at.isoformat(timespec="seconds")})
            pending = True
            if step in JOBS:
                break
            continue
        earlier = [json.loads(r) for _, st, _, r in tried if st == "failed" and r]
        outcome = _run_step(settings, runs, rnd, step, 1 + max((a for a, *_ in tried), default=0), earlier)
        done.append(outcome)
        if outcome["status"] != "ok":
            pending = True
            if step in JOBS:
                break
    if not pending:
        with runs.write() as con:
            run_rows.update_round(con, rnd["round_id"], status="ok", finished=datetime.now(UTC))
    return done


def advance(settings: Settings) -> dict[str, Any] | None:
    """One round's worth of work: cover the crawls finished since the last round, then run the pipeline steps of the
    open round (new or earlier) that are due. Returns what happened, or None when there was nothing to do."""
    runs = RunsDB(settings.duckdb)
    crawls = _uncovered_crawls(runs)
    previous = _open_round(runs)
    if not crawls and previous is None:
        return None
    summary: dict[str, Any] = {}
    if crawls:
        _changed_listings(settings, crawls)
        new = _new_round(runs, crawls, previous)
        summary["new_round"] = new["round_id"]
        summary["crawls"] = {c["source"]: {"status": c["status"], "changed": c["changed"]} for c in crawls}
        if new["steps"]:  # it took over any open round
            previous = new
    if previous is not None:
        summary["round"] = previous["round_id"]
        summary["steps"] = _continue(settings, runs, previous)
    return summary


def close_interrupted_steps(settings: Settings) -> int:
    """Steps a stopped scheduler left ``running`` become ``interrupted`` (the caller holds the scheduler lock, so no
    live scheduler runs them); their rounds continue at them."""
    with RunsDB(settings.duckdb).write() as con:
        return run_rows.interrupt_steps(con, datetime.now(UTC), "the scheduler stopped during this step")


# ------------------------------------------------------------------------------------------------------ state
def loop_status(settings: Settings, recent: int = 5) -> dict[str, Any]:
    """The loop's state for ``homeward sources`` and the dashboard: the last rounds with their steps and latency,
    the open round, the pipeline steps failing now (with their next retry), and the latest operator alerts."""
    runs = RunsDB(settings.duckdb)
    rounds = runs.query(
        "SELECT round_id, epoch(started), epoch(finished), status, steps, changed_listings, match_run_id, "
        "latency_s, merged_into, message FROM loop_rounds ORDER BY started DESC LIMIT ?",
        [recent],
    )
    ids = [r[0] for r in rounds]
    steps: dict[str, list[dict[str, Any]]] = {}
    if ids:
        for round_id, step, source, attempt, status, error in runs.query(
            "SELECT round_id, step, source, attempt, status, error FROM loop_steps WHERE list_contains(?, round_id) "
            "ORDER BY started, step, source",
            [ids],
        ):
            entry = {"step": step, "attempt": int(attempt), "status": status}
            entry.update({"source": source} if source else {})
            entry.update({"error": error} if error else {})
            steps.setdefault(round_id, []).append(entry)
    keys = ("round_id", "started", "finished", "status", "pipeline", "changed_listings", "match_run_id",
            "latency_s", "merged_into", "message")  # fmt: skip
    out_rounds = []
    for r in rounds:
        row = dict(zip(keys, r, strict=True))
        row["started"], row["finished"] = (_iso(row["started"]), _iso(row["finished"]))
        row["pipeline"] = json.loads(row["pipeline"] or "[]")
        row["steps"] = steps.get(row["round_id"], [])
        out_rounds.append(row)
    failing = {
        step: {
            "failures": f["failures"],
            "last_error": f["last_error"],
            "retry_at": (f["last_failed"] + backoff(settings, f["failures"])).isoformat(timespec="seconds"),
        }
        for step, f in step_failures(runs).items()
    }
    alerts = runs.query(
        "SELECT subject, kind, epoch(raised), message, emailed_to FROM loop_alerts ORDER BY raised DESC LIMIT ?",
        [recent],
    )
    return {
        "last_round": out_rounds[0] if out_rounds else None,
        "open_round": next((r["round_id"] for r in out_rounds if r["status"] == "running"), None),
        "rounds": out_rounds,
        "failing_steps": failing,
        "alerts": [
            {"subject": s, "kind": k, "raised": _iso(t), "message": m, "emailed_to": e} for s, k, t, m, e in alerts
        ],
    }


def source_latency(runs: RunsDB) -> dict[str, float]:
    """Per source: seconds from the earliest listing of its latest crawl that brought any to that round's match run
    published (a merged round's crawls count with the round that took it over)."""
    rows = runs.query(
        """
        SELECT s.source, arg_max(epoch(coalesce(m.published, r.published)) - epoch(s.first_seen), s.started)
        FROM loop_steps s JOIN loop_rounds r USING (round_id) LEFT JOIN loop_rounds m ON m.round_id = r.merged_into
        WHERE s.step = 'crawl' AND s.changed_listings > 0 AND coalesce(m.published, r.published) IS NOT NULL
        GROUP BY s.source
        """
    )
    return {source: round(float(latency), 1) for source, latency in rows if latency is not None}


def _iso(epoch: float | None) -> str | None:
    ts = _utc(epoch)
    return ts.isoformat(timespec="seconds") if ts else None
