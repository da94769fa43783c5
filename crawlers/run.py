"""Run ONE crawl of one source in this process, then exit.

Twisted's reactor cannot be restarted inside a process, so every crawl gets a fresh interpreter:
``homeward crawl`` and ``homeward schedule`` (``ray_jobs/crawl.py``) start ``python -m crawlers.run`` as a
subprocess — locally for one source, inside a Ray task per source when several fan out. Usable by hand too::

    python -m crawlers.run --source demo --base-url http://127.0.0.1:8000 --data-dir /tmp/hw

The last line on stdout is one JSON object (also written atomically to ``--result``)::

    {"run_id", "source", "status": ok|failed|interrupted, "finish_reason", "pages", "items", "new", "updated",
     "unchanged", "photos", "photos_failed", "errors", "errors_by_reason": {reason: count}, "duration_s",
     "error_log"}

``errors_by_reason`` holds the failures (``http_404``, ``timeout``, ``parse_error:ValueError``,
``photo:not_an_image`` …) and, prefixed ``warning:``, what was missing or doubtful on pages that were still stored
(``warning:no_photo``, ``warning:no_sex`` …); ``errors`` counts only the failures. Exit status: 0 when the crawl ran
to its end (even with per-page errors: those are data), 1 when it could not run or was interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import engine  # noqa: F401  (offline switches before anything else is imported)
from crawlers.spiders.base import ERROR_STAT_PREFIX, WARNING_STAT_PREFIX
from engine.config import Settings, load_settings

log = logging.getLogger("crawlers.run")


def summarize(stats: dict[str, Any], *, run_id: str, source: str, duration_s: float) -> dict[str, Any]:
    """The run's figures from Scrapy's final stats."""
    errors = {k[len(ERROR_STAT_PREFIX) :]: int(v) for k, v in stats.items() if k.startswith(ERROR_STAT_PREFIX)}
    n = len(WARNING_STAT_PREFIX)
    warnings = {f"warning:{k[n:]}": int(v) for k, v in stats.items() if k.startswith(WARNING_STAT_PREFIX)}
    reason = stats.get("finish_reason")
    if reason in ("finished", "closespider_pagecount", "closespider_itemcount", "closespider_timeout"):
        status = "ok"
    elif reason == "shutdown":
        status = "interrupted"
    else:
        status = "failed"
    if stats.get("homeward/writer_failed"):
        status = "failed"
    photos_ok = int(stats.get("homeward/photos/ok", 0)) + int(stats.get("homeward/photos/reused", 0))
    photos_failed = int(stats.get("homeward/photos/failed", 0))
    return {
        "run_id": run_id,
        "source": source,
        "status": status,
        "finish_reason": reason,
        "pages": int(stats.get("homeward/pages", 0)),
        "items": int(stats.get("homeward/items", 0)),
        "new": int(stats.get("homeward/new", 0)),
        "updated": int(stats.get("homeward/updated", 0)),
        "unchanged": int(stats.get("homeward/unchanged", 0)),
        "cards_skipped": int(stats.get("homeward/cards_skipped_unchanged", 0))
        + int(stats.get("homeward/cards_not_modified", 0)),
        "duplicates": int(stats.get("homeward/duplicates/source_id", 0))
        + int(stats.get("homeward/duplicates/content", 0)),
        "photos": photos_ok + photos_failed,
        "photos_failed": photos_failed,
        "requests": int(stats.get("downloader/request_count", 0)),
        "errors": sum(errors.values()),
        "errors_by_reason": dict(sorted({**errors, **warnings}.items())),
        "log_errors": int(stats.get("log_count/ERROR", 0)),
        "duration_s": round(duration_s, 3),
    }


def run_crawl(
    hw: Settings,
    source_name: str,
    *,
    base_url: str | None = None,
    max_pages: int | None = None,
    start_urls: list[str] | None = None,
    run_id: str | None = None,
    scrapy_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Crawl ``source_name`` to its end in this process (call at most once per process)."""
    from scrapy.crawler import CrawlerProcess

    from crawlers.settings import scrapy_settings
    from crawlers.sources import get_source

    run_id = run_id or uuid.uuid4().hex[:16]
    entry = dict(get_source(hw, source_name))
    if base_url:
        entry["base_url"] = base_url
    logs = Path(hw.data_dir) / "crawl_logs"
    logs.mkdir(parents=True, exist_ok=True)
    error_log = str(logs / f"{run_id}.errors.jsonl")
    progress = str(logs / f"{run_id}.progress.json")
    settings = scrapy_settings(hw, write=True, error_log=error_log, progress_file=progress, source=entry)
    settings["SPIDER_LOADER_WARN_ONLY"] = True
    settings.update(scrapy_overrides or {})

    kwargs: dict[str, Any] = {"source": source_name}
    if entry.get("base_url"):
        kwargs["base_url"] = entry["base_url"]
    pages = max_pages if max_pages is not None else (entry.get("max_pages") or hw.crawl.max_pages or None)
    if pages:
        kwargs["max_pages"] = int(pages)
    if start_urls:
        kwargs["start_urls"] = ",".join(start_urls)
    elif entry.get("start_paths"):
        kwargs["start_paths"] = list(entry["start_paths"])
    if entry["spider"] == "configurable":
        kwargs["config"] = json.dumps(entry)

    process = CrawlerProcess(settings)
    crawler = process.create_crawler(entry["spider"])
    pid_file = logs / f"{run_id}.pid"  # lets `homeward crawl/schedule` see this crawl is alive (never two at once)
    pid_file.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    started = time.monotonic()
    try:
        process.crawl(crawler, **kwargs)
        process.start()
    finally:
        pid_file.unlink(missing_ok=True)
    elapsed = time.monotonic() - started
    result = summarize(crawler.stats.get_stats(), run_id=run_id, source=source_name, duration_s=elapsed)
    result["error_log"] = error_log
    return result


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, default=str, sort_keys=True))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m crawlers.run", description="Run one crawl of one source.")
    p.add_argument("--source", required=True)
    p.add_argument("--base-url")
    p.add_argument("--max-pages", type=int)
    p.add_argument("--start-urls", nargs="+")
    p.add_argument("--run-id")
    p.add_argument(
        "--settings-json",
        help="Homeward settings as JSON: a file path, or - to read them from stdin (how `homeward crawl` passes them, "
        "so no file holds the credentials); default: config file + env",
    )
    p.add_argument("--config", help="Homeward YAML config file")
    p.add_argument("--data-dir")
    p.add_argument("--result", help="also write the result JSON here (atomically)")
    p.add_argument("--set", action="append", default=[], metavar="SCRAPY_KEY=JSON", help="raw Scrapy setting")
    args = p.parse_args(argv)

    if args.settings_json:
        text = sys.stdin.read() if args.settings_json == "-" else Path(args.settings_json).read_text()
        hw = Settings().with_overrides(json.loads(text), "settings json")
    else:
        hw = load_settings(args.config)
    if args.data_dir:
        hw = hw.with_overrides({"data_dir": args.data_dir}, "command line")
    overrides = {}
    for pair in args.set:
        key, _, value = pair.partition("=")
        overrides[key] = json.loads(value)
    run_id = args.run_id or uuid.uuid4().hex[:16]
    try:
        result = run_crawl(
            hw,
            args.source,
            base_url=args.base_url,
            max_pages=args.max_pages,
            start_urls=args.start_urls,
            run_id=run_id,
            scrapy_overrides=overrides,
        )
    except Exception as exc:
        log.exception("crawl of %s could not run", args.source)
        message = f"{type(exc).__name__}: {exc}"
        result = {"run_id": run_id, "source": args.source, "status": "failed", "message": message}
    if args.result:
        _write_atomic(Path(args.result), result)
    print(json.dumps(result, default=str, sort_keys=True), flush=True)
    return 0 if result.get("status") == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
