"""Scrapy settings, built from Homeward's ``settings.crawl`` (defaults ← config file ← ``HOMEWARD_*`` env).

Two ways in:

* ``crawlers/run.py`` (what ``homeward crawl`` and ``homeward schedule`` start, one process per crawl) calls
  :func:`scrapy_settings` with the run's :class:`engine.config.Settings` and ``write=True``: the full item pipeline
  (validate → normalise → redact → deduplicate → photos → LanceDB writer), the incremental card state and the run's
  error file.
* ``cd crawlers && scrapy crawl NAME -a start_urls=URL -O out.jsonl`` (an operator re-checking a page) reads this
  module through ``scrapy.cfg``: the same politeness, and the pipeline up to deduplication only, so ``out.jsonl``
  holds the normalised, redacted listings and nothing is written to the data dir or downloaded beyond the pages.

Politeness, whichever way in: an identifying User-Agent with the contact URL, robots.txt obeyed, AutoThrottle, at
most ``concurrency_per_domain`` (2) requests per domain, only http(s) URLs, only public addresses (every request
and redirect hop; the source's own ``base_url``, operator start URLs and ``crawl.allow_hosts`` are exempt), page
and image size limits, bounded retries and timeouts. Scrapy 2.19's RemoteControl extension and the telnet console
are off for batch crawls.

Components read only their own ``HOMEWARD_*`` keys (:func:`homeward_keys`: stores, salt, credentials), never a copy
of the whole configuration nor the environment, so what a pipeline stage or spider depends on is visible here.
"""

from __future__ import annotations

import os
from typing import Any

from engine.config import Settings, load_settings

MB = 1024 * 1024

PIPELINES_READ_ONLY = {
    "crawlers.pipelines.validate.ValidatePipeline": 100,
    "crawlers.pipelines.normalize.NormalizePipeline": 200,
    "crawlers.pipelines.redact.RedactPipeline": 300,
    "crawlers.pipelines.dedupe.DedupePipeline": 400,
}
PIPELINES_FULL = {
    **PIPELINES_READ_ONLY,
    "crawlers.pipelines.photos.PhotosPipeline": 500,
    "crawlers.pipelines.lance.LanceWriterPipeline": 900,
}


def user_agent(hw: Settings) -> str:
    return hw.crawl.user_agent.format(contact_url=hw.crawl.contact_url)


def homeward_keys(hw: Settings) -> dict[str, Any]:
    """The Homeward values crawl components read, one Scrapy key each (not the whole config in one key): the stores
    (``HOMEWARD_LANCE_URI``, ``HOMEWARD_PHOTO_STORE``, ``HOMEWARD_STORAGE_OPTIONS``, ``HOMEWARD_DATA_DIR``), the
    hashing ``HOMEWARD_SALT`` and the Petfinder credentials (``crawl.petfinder_*``, else ``PETFINDER_KEY`` /
    ``PETFINDER_SECRET``: read here, once, so no spider reads the environment). Scrapy logs only the overridden
    settings it knows, so these secrets stay out of the crawl log."""
    c = hw.crawl
    return {
        "HOMEWARD_DATA_DIR": hw.data_dir,
        "HOMEWARD_LANCE_URI": hw.lance,
        "HOMEWARD_PHOTO_STORE": hw.photos,
        "HOMEWARD_STORAGE_OPTIONS": dict(hw.storage_options),
        "HOMEWARD_SALT": hw.salt,
        "HOMEWARD_PETFINDER_KEY": c.petfinder_key or os.environ.get("PETFINDER_KEY"),
        "HOMEWARD_PETFINDER_SECRET": c.petfinder_secret or os.environ.get("PETFINDER_SECRET"),
    }


def scrapy_settings(
    hw: Settings,
    *,
    write: bool = True,
    error_log: str | None = None,
    progress_file: str | None = None,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Scrapy settings dict for one crawl.

    Args:
        hw: Homeward settings (``hw.crawl`` for politeness and limits, ``hw.data_dir`` … for the writer).
        write: run the photo and LanceDB stages and keep the incremental state (else stop after deduplication).
        error_log: JSON-lines file that receives one line per failed page or photo.
        progress_file: JSON file the crawl's running counts are written to every 2 s (for progress bars).
        source: the source's config entry; its ``concurrency_per_domain``, ``download_delay_s``, ``recheck_hours``
            and ``scrapy_settings`` (a mapping of raw Scrapy settings) override the defaults for this crawl; its
            ``phone_region`` becomes ``HOMEWARD_PHONE_REGION`` (the redact stage reads phones there first);
            ``country``, ``timezone`` and ``shelters`` become ``HOMEWARD_SOURCE_COUNTRY``,
            ``HOMEWARD_SOURCE_TIMEZONE`` and ``HOMEWARD_SHELTERS`` (the normalise stage places listings and reads
            dates with them).
    """
    c = hw.crawl
    source = source or {}
    concurrency = int(source.get("concurrency_per_domain") or c.concurrency_per_domain)
    delay = float(source.get("download_delay_s", c.download_delay_s))
    out: dict[str, Any] = {
        "BOT_NAME": "homeward",
        "SPIDER_MODULES": ["crawlers.spiders"],
        "NEWSPIDER_MODULE": "crawlers.spiders",
        "USER_AGENT": user_agent(hw),
        "ROBOTSTXT_OBEY": c.obey_robots,
        "ROBOTSTXT_USER_AGENT": "HomewardBot",
        "CONCURRENT_REQUESTS": max(16, concurrency * 4),
        "CONCURRENT_REQUESTS_PER_DOMAIN": concurrency,
        "DOWNLOAD_DELAY": delay,
        "AUTOTHROTTLE_ENABLED": c.autothrottle,
        "AUTOTHROTTLE_START_DELAY": max(delay, 0.1),
        "AUTOTHROTTLE_MAX_DELAY": 60.0,
        "AUTOTHROTTLE_TARGET_CONCURRENCY": float(concurrency),
        "DOWNLOAD_TIMEOUT": c.timeout_s,
        "DOWNLOAD_MAXSIZE": int(c.max_page_mb * MB),
        "DOWNLOAD_WARNSIZE": int(min(c.max_page_mb, c.max_image_mb) * MB),
        "RETRY_ENABLED": c.retry_times > 0,
        "RETRY_TIMES": c.retry_times,
        "REDIRECT_MAX_TIMES": 10,
        "COOKIES_ENABLED": False,
        "REMOTE_CONTROL_ENABLED": False,
        "TELNETCONSOLE_ENABLED": False,
        "LOG_LEVEL": "INFO",
        "FEED_EXPORT_ENCODING": "utf-8",
        "DOWNLOADER_MIDDLEWARES": {
            "crawlers.middlewares.HttpOnlyMiddleware": 40,
            "crawlers.middlewares.AddressGuard": 45,
        },
        "DNSCACHE_ENABLED": True,  # AddressGuard's check and the connection share one DNS answer (no rebinding)
        "HOMEWARD_ALLOW_HOSTS": list(c.allow_hosts),
        "EXTENSIONS": {
            "crawlers.middlewares.ErrorLog": 100,
            "crawlers.middlewares.RedirectLoops": 110,
            "crawlers.middlewares.Progress": 120,
        },
        "ITEM_PIPELINES": dict(PIPELINES_FULL if write else PIPELINES_READ_ONLY),
        **homeward_keys(hw),
        "HOMEWARD_INCREMENTAL": write,
        "HOMEWARD_MAX_IMAGE_BYTES": int(c.max_image_mb * MB),
        "HOMEWARD_MAX_IMAGE_PIXELS": c.max_image_pixels,
        "HOMEWARD_FLUSH_ITEMS": 500,
        "HOMEWARD_NORMALIZER": "engine.normalize:normalize_listing",
    }
    if source.get("recheck_hours") is not None:
        out["HOMEWARD_RECHECK_HOURS"] = float(source["recheck_hours"])
    if source.get("phone_region"):
        out["HOMEWARD_PHONE_REGION"] = source["phone_region"]
    out["HOMEWARD_SOURCE_COUNTRY"] = source.get("country")
    out["HOMEWARD_SOURCE_TIMEZONE"] = source.get("timezone")
    out["HOMEWARD_SHELTERS"] = dict(source.get("shelters") or {})
    if error_log:
        out["HOMEWARD_ERROR_LOG"] = error_log
    if progress_file:
        out["HOMEWARD_PROGRESS_FILE"] = progress_file
    out.update(source.get("scrapy_settings") or {})
    return out


# `scrapy crawl` from crawlers/ (scrapy.cfg → this module): read-only pipeline, settings from config/env.
globals().update(scrapy_settings(load_settings(), write=False))
