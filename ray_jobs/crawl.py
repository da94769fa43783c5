"""``homeward crawl``: crawl one or more sources into LanceDB, one process per crawl, several as Ray tasks.

Each crawl runs ``python -m crawlers.run`` in its own process (Twisted's reactor cannot restart in a process). One
source runs as a local subprocess; several fan out as Ray tasks (each task starts its subprocess, so sources crawl
in parallel on a laptop's cores or across a cluster's nodes — there LanceDB and the photo store must be shared,
``lance_uri`` / ``photo_store`` on object storage; each node keeps crawl logs under its own local ``data_dir`` and the
task hands the result back to the driver, which alone writes DuckDB).

Every run is recorded in DuckDB ``crawl_runs``: a ``running`` row before the crawl starts (so no second crawl of the
same source starts while it runs), then its outcome — ``ok`` | ``failed`` | ``interrupted`` — with pages, items,
new, updated, unchanged, photos, errors, ``errors_by_reason`` (JSON; failures, plus ``warning:*`` counts of
doubtful pages that were still stored) and the duration. A ``running`` row whose driver process is gone (a killed
scheduler, a crashed machine) is marked ``interrupted`` by the next crawl of that source.

The settings (Petfinder credentials, salt, storage credentials) reach each crawl process on its stdin, never in a
file. ``homeward crawl`` exits 1 when a run ended ``failed``, after one line naming the source and why (the JSON
result still comes last); a bad source name or configuration exits 2 before anything runs.

Python::

    from engine.config import load_settings
    from ray_jobs.crawl import crawl
    result = crawl(load_settings(), source=["demo"])            # every enabled source when source is None
    result = crawl(settings, source=["pet911"], base_url="http://127.0.0.1:8000", max_pages=50)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from crawlers.sources import SourceError, load_sources
from engine import analyst, run_rows
from engine.config import ConfigError, Settings
from engine.errors import RESULT_ERROR, HomewardError
from engine.storage import RunsDB

log = logging.getLogger(__name__)

#: A ``running`` row from another machine older than this is taken as dead.
STALE_AFTER = timedelta(hours=12)


class CrawlBusyError(HomewardError):
    """The source is being crawled right now by another process."""


def absolute_settings(settings: Settings) -> Settings:
    """Local paths made absolute, so a subprocess or a Ray worker with another working dir writes the same place."""
    changes: dict[str, Any] = {}
    for key in ("data_dir", "lance_uri", "duckdb_path", "photo_store", "models_dir"):
        value = getattr(settings, key)
        if value and "://" not in value and not os.path.isabs(value):
            changes[key] = os.path.abspath(value)
    crawl = settings.crawl
    if crawl.sources_file and not os.path.isabs(crawl.sources_file):
        changes["crawl"] = dataclasses.replace(crawl, sources_file=os.path.abspath(crawl.sources_file))
    return dataclasses.replace(settings, **changes) if changes else settings


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _alive(owner: dict[str, Any]) -> bool | None:
    """Whether the process ``{host, pid}`` runs; ``None`` when it is on another machine (cannot tell)."""
    if not owner.get("pid"):
        return False
    if owner.get("host") != socket.gethostname():
        return None
    return _pid_alive(int(owner["pid"]))


def row_alive(run_id: str, parameters: Any, started: float | datetime, data_dir: str) -> bool:
    """A ``running`` row is alive while its driver (crawl/schedule) or its crawl process still runs."""
    try:
        params = json.loads(parameters) if isinstance(parameters, str) else dict(parameters or {})
    except ValueError:
        params = {}
    owners = [params.get("owner") or {}]
    with contextlib.suppress(OSError, ValueError):
        owners.append(json.loads((Path(data_dir) / "crawl_logs" / f"{run_id}.pid").read_text()))
    verdicts = [_alive(o) for o in owners]
    if any(v is True for v in verdicts):
        return True
    if all(v is False for v in verdicts):
        return False
    if not isinstance(started, datetime):  # DuckDB epoch seconds
        started = datetime.fromtimestamp(float(started), UTC)
    started = started if started.tzinfo else started.replace(tzinfo=UTC)
    return datetime.now(UTC) - started < STALE_AFTER


def begin_run(runs: RunsDB, source: str, parameters: dict[str, Any], data_dir: str = ".") -> str:
    """Insert the ``running`` row of a new crawl, unless ``source`` is being crawled now (:class:`CrawlBusyError`).

    Rows left ``running`` by a process that is gone are closed as ``interrupted`` first.
    """
    run_id = uuid.uuid4().hex[:16]
    now = datetime.now(UTC)
    with runs.write() as con:
        for other_id, params, started in run_rows.running_crawls(con, source):
            if row_alive(other_id, params, started, data_dir):
                since = datetime.fromtimestamp(float(started), UTC).isoformat(timespec="seconds")
                raise CrawlBusyError(f"source {source!r} is already being crawled (run {other_id}, since {since})")
            run_rows.interrupt_crawl(con, other_id, now, "the process running it is gone")
        run_rows.start_crawl(con, run_id, source, now, {**parameters, "owner": _owner()})
    return run_id


def finish_run(runs: RunsDB, result: dict[str, Any]) -> None:
    """Record a crawl's outcome in its ``crawl_runs`` row."""
    with runs.write() as con:
        run_rows.finish_crawl(con, result, datetime.now(UTC))


class ProgressBars:
    """One live counter per crawl (pages, with items/new/errors beside it), fed from the progress file each crawl
    process writes (``crawlers.middlewares.Progress``); no total, since a crawl discovers its pages as it goes.
    Shown on a terminal only (tqdm's ``disable=None``)."""

    def __init__(self, runs: list[tuple[str, str]], data_dir: str) -> None:
        from tqdm import tqdm

        logs = Path(data_dir) / "crawl_logs"
        self.files = {run_id: logs / f"{run_id}.progress.json" for _, run_id in runs}
        self.bars = {
            run_id: tqdm(desc=f"crawl {name}", unit=" pages", position=i, disable=None, dynamic_ncols=True)
            for i, (name, run_id) in enumerate(runs)
        }

    def update(self) -> None:
        for run_id, bar in self.bars.items():
            try:
                data = json.loads(self.files[run_id].read_text())
            except (OSError, ValueError):
                continue
            bar.n = int(data.get("pages", 0))
            bar.set_postfix(
                items=data.get("items", 0), new=data.get("new", 0), errors=data.get("errors", 0), refresh=False
            )
            bar.refresh()

    def close(self) -> None:
        self.update()
        for bar in self.bars.values():
            bar.close()


def _send_settings(proc: subprocess.Popen[bytes], settings_dict: dict[str, Any]) -> None:
    """Hand the settings (credentials and salt included) to the crawl process on its stdin: no file holds them, so
    none is left behind, readable or not, whatever happens to either process. A child that died before reading
    them ends as a failed run with its log tail, like any other early death."""
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.write(json.dumps(settings_dict, default=str).encode())
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()


def run_subprocess(
    settings_dict: dict[str, Any],
    source: str,
    run_id: str,
    *,
    base_url: str | None = None,
    max_pages: int | None = None,
    timeout_s: float | None = None,
    stop: threading.Event | None = None,
    on_tick: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run ``python -m crawlers.run`` for one source and return its result dict (never raises for a failed crawl).

    ``timeout_s`` or a set ``stop`` event ends the crawl gracefully (SIGTERM: Scrapy flushes what it has and the
    run is recorded ``interrupted``); SIGKILL follows if it does not exit within a minute.
    """
    data_dir = Path(settings_dict["data_dir"])
    logs = data_dir / "crawl_logs"
    logs.mkdir(parents=True, exist_ok=True)
    result_file = logs / f"{run_id}.result.json"
    log_file = logs / f"{run_id}.log"
    cmd = [sys.executable, "-m", "crawlers.run", "--source", source, "--run-id", run_id]
    cmd += ["--settings-json", "-", "--result", str(result_file)]
    if base_url:
        cmd += ["--base-url", base_url]
    if max_pages:
        cmd += ["--max-pages", str(int(max_pages))]
    started = time.monotonic()
    message = None
    with log_file.open("w") as out, warnings.catch_warnings():
        # fork+exec of a fresh interpreter: lancedb's warning about its runtime in a forked child does not apply
        warnings.filterwarnings("ignore", message="lancedb fork support")
        repo = str(Path(__file__).resolve().parents[1])
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, cwd=repo)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            _send_settings(proc, settings_dict)
            while True:
                try:
                    code = proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if on_tick is not None:
                    on_tick()
                if (stop is not None and stop.is_set()) or (deadline is not None and time.monotonic() > deadline):
                    proc.terminate()  # Scrapy shuts down gracefully on SIGTERM and flushes what it has
                    try:
                        code = proc.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        code = proc.wait()
                    message = "stopped" if stop is not None and stop.is_set() else f"time limit {timeout_s:.0f}s"
                    break
        except BaseException:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=60)
            raise
    try:
        result = json.loads(result_file.read_text())
    except (OSError, ValueError):
        tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
        result = {
            "run_id": run_id,
            "source": source,
            "status": "failed",
            "message": f"crawl process exited with code {code} and no result; log tail: {tail[-500:]}",
            "duration_s": time.monotonic() - started,
        }
    if message:
        result["status"] = "interrupted"
        result["message"] = message
    result["log"] = str(log_file)
    return result


def _ray_task() -> Any:
    import ray

    @ray.remote(num_cpus=0.25, max_retries=0)
    def crawl_task(settings_dict: dict[str, Any], source: str, run_id: str, max_pages: int | None) -> dict[str, Any]:
        return run_subprocess(settings_dict, source, run_id, max_pages=max_pages)

    return crawl_task


def run_sources(
    settings: Settings,
    names: list[str],
    *,
    base_url: str | None = None,
    max_pages: int | None = None,
    timeout_s: float | None = None,
    skip_busy: bool = False,
    stop: threading.Event | None = None,
    check_writable: bool = True,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Crawl ``names`` (recorded in ``crawl_runs``); several fan out as Ray tasks. Returns one result per source."""
    if "://" in settings.data_dir:
        raise ConfigError(
            f"data_dir {settings.data_dir!r}: crawls keep their logs, state files and DuckDB under a local data_dir; "
            "put LanceDB and photos on object storage with lance_uri / photo_store instead"
        )
    settings = absolute_settings(settings)
    if check_writable:  # the scheduler checks once: Settings.ensure_writable's probe file is not thread-safe
        settings.ensure_writable()
    runs = RunsDB(settings.duckdb)
    params = {"base_url": base_url, "max_pages": max_pages}
    started: list[tuple[str, str]] = []
    results: list[dict[str, Any]] = []
    for name in names:
        try:
            started.append((name, begin_run(runs, name, params, settings.data_dir)))
        except CrawlBusyError as exc:
            if not skip_busy and len(names) == 1:
                raise
            results.append({"source": name, "status": "skipped", "message": str(exc)})
    settings_dict = settings.to_dict()
    bars = ProgressBars(started, settings.data_dir) if progress and started else None
    try:
        if len(started) == 1:
            name, run_id = started[0]
            outcome = [
                run_subprocess(
                    settings_dict,
                    name,
                    run_id,
                    base_url=base_url,
                    max_pages=max_pages,
                    timeout_s=timeout_s,
                    stop=stop,
                    on_tick=bars.update if bars else None,
                )
            ]
        elif started:
            outcome = _fan_out(settings, settings_dict, started, max_pages, bars)
        else:
            outcome = []
    except BaseException as exc:
        for name, run_id in started:
            finish_run(runs, {"run_id": run_id, "source": name, "status": "interrupted", "message": repr(exc)})
        raise
    finally:
        if bars is not None:
            bars.close()
    for result in outcome:
        if result.get("status") == "failed" and not result.get("message"):
            result["message"] = failure_reason(result)
        finish_run(runs, result)
    if outcome:
        published = analyst.publish(settings)
        for result in outcome:
            result.update(published)
    return results + outcome


def failure_reason(result: dict[str, Any]) -> str:
    """Why a run that left no message failed: Scrapy's finish reason and its most frequent error reasons."""
    errors = {k: v for k, v in (result.get("errors_by_reason") or {}).items() if not k.startswith("warning:")}
    top = ", ".join(f"{k} x{v}" for k, v in sorted(errors.items(), key=lambda kv: -kv[1])[:3])
    reason = f"finish reason {result.get('finish_reason')!r}"
    return f"{reason}; errors: {top}" if top else reason


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else f"{flat[: limit - 3]}..."


def _fan_out(
    settings: Settings,
    settings_dict: dict[str, Any],
    started: list[tuple[str, str]],
    max_pages: int | None,
    bars: ProgressBars | None,
) -> list[dict[str, Any]]:
    """One Ray task per source; results in ``started`` order, a lost task recorded as a failed run."""
    import ray

    from engine.runtime import ray_session

    with ray_session(settings):
        task = _ray_task()
        refs = {task.remote(settings_dict, name, run_id, max_pages): (name, run_id) for name, run_id in started}
        done: dict[str, dict[str, Any]] = {}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            if bars is not None:
                bars.update()
            for ref in ready:
                name, run_id = refs[ref]
                try:
                    done[run_id] = ray.get(ref)
                except Exception as exc:  # a lost worker: record it, keep the other sources' results
                    done[run_id] = {"run_id": run_id, "source": name, "status": "failed", "message": f"ray task: {exc}"}
    return [done[run_id] for _, run_id in started]


def crawl(
    settings: Settings,
    *,
    source: list[str] | None = None,
    base_url: str | None = None,
    max_pages: int | None = None,
) -> dict[str, Any]:
    """Crawl sources into LanceDB (listings, photos), recording each run in DuckDB crawl_runs.

    Args:
        source: source names from the sources config (default: every enabled source).
        base_url: crawl a mirror of the source at this URL instead of the real site (one source only).
        max_pages: stop each crawl after this many pages.
    """
    sources = load_sources(settings)
    names = list(source) if source else [n for n, s in sources.items() if s.get("enabled", True)]
    unknown = [n for n in names if n not in sources]
    if unknown:
        raise SourceError(f"unknown source(s) {', '.join(unknown)}; known sources: {', '.join(sorted(sources))}")
    if not names:
        raise SourceError("no source to crawl: every source is disabled (pass --source NAME)")
    if base_url and len(names) != 1:
        raise SourceError("--base-url points one source at a mirror: pass exactly one --source with it")
    results = run_sources(settings, names, base_url=base_url, max_pages=max_pages)
    total = {
        key: sum(int(r.get(key) or 0) for r in results) for key in (*run_rows.CRAWL_COUNT_COLUMNS, "photos_failed")
    }
    statuses = {r.get("status") for r in results}
    status = "ok" if statuses == {"ok"} else ("failed" if "ok" not in statuses else "partial")
    out: dict[str, Any] = {"status": status, **total, "runs": results}
    failed = [r for r in results if r.get("status") == "failed"]
    if failed:
        out[RESULT_ERROR] = "; ".join(
            f"crawl of source {r.get('source')!r} failed: {_one_line(r.get('message') or failure_reason(r))}"
            for r in failed
        )
    return out
