"""Downloader middleware and extension shared by every Homeward crawl.

* :class:`HttpOnlyMiddleware` — only ``http``/``https`` requests reach a download handler. Scrapy would happily
  fetch ``file://``, ``ftp://``, ``s3://`` or ``data:`` URLs, and a hostile page could point a card link or a photo
  at ``file:///etc/passwd``; this refuses them with reason ``scheme_not_allowed``.
* :class:`AddressGuard` — every request (pages, redirect hops, robots.txt, photos, APIs) may reach only public
  addresses (see :mod:`crawlers.addresses`); a refusal is reason ``blocked_address``.
* :class:`RedirectLoops` — a redirect back to an already requested URL is recorded as ``redirect_loop``.
* :class:`Progress` — running counts in a small JSON file, for the live progress bar of ``homeward crawl``.
* :class:`ErrorLog` — appends one JSON line ``{url, reason, detail, at}`` per failed page or photo to the run's
  error file (``HOMEWARD_ERROR_LOG``), so every failure keeps its URL and reason, not only a count.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from scrapy import signals
from scrapy.exceptions import IgnoreRequest, NotConfigured
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.defer import Deferred
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IResolutionReceiver
from zope.interface import implementer

from crawlers import addresses
from crawlers.addresses import BlockedAddress

ALLOWED_SCHEMES = frozenset({"http", "https"})


class HttpOnlyMiddleware:
    """Refuse every request whose scheme is not http(s)."""

    def __init__(self, stats: Any) -> None:
        self.stats = stats

    @classmethod
    def from_crawler(cls, crawler: Any) -> HttpOnlyMiddleware:
        return cls(crawler.stats)

    def process_request(self, request: Any, spider: Any = None) -> None:
        scheme = urlsplit(request.url).scheme.lower()
        if scheme not in ALLOWED_SCHEMES:
            self.stats.inc_value("homeward/filtered/scheme")
            raise IgnoreRequest(f"scheme not allowed: {scheme!r} ({request.url[:200]})")


@implementer(IResolutionReceiver)
class _Addresses:
    """Collects every address one ``resolveHostName`` call yields."""

    def __init__(self) -> None:
        self.found: list[str] = []
        self.done: Deferred[list[str]] = Deferred()

    def resolutionBegan(self, resolution: Any) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        self.found.append(address.host)

    def resolutionComplete(self) -> None:
        self.done.callback(self.found)


class AddressGuard:
    """Refuse every request whose host is, or resolves to, a non-public address (:mod:`crawlers.addresses`).

    It runs for every request the downloader sees: Scrapy's redirect middleware turns a 3xx into a *new* request
    that passes through the downloader middlewares again (``engine.download_async``, which the photo stage uses,
    loops the same way), so every hop is checked, not only the first URL.

    Exempt, unchecked: the spider's own ``base_url`` host:port, its operator ``start_urls`` (``-a start_urls=``)
    and ``crawl.allow_hosts`` (``HOMEWARD_ALLOW_HOSTS``) — what the operator named, never what a page links to.

    Names are resolved through the reactor's name resolver, the one the download handler connects with, so the
    lookup runs in Twisted's thread pool (the reactor never blocks) and lands in Scrapy's DNS cache
    (``DNSCACHE_ENABLED``, on): the connection that follows reuses the very addresses checked here, so a DNS
    rebinding answer (public for the check, private a second later) cannot slip between check and connect. Every
    address of the answer must be public, since the connection may take any of them. The price: one extra cache
    lookup per request, and a name evicted from the cache (over ``DNSCACHE_SIZE`` distinct hosts) between check
    and connect is resolved twice. Behind an HTTP proxy (``HTTP_PROXY``) the proxy resolves and connects, so the
    check holds only as far as the proxy's DNS agrees with this machine's.
    """

    def __init__(self, crawler: Any, allowance: addresses.Allowance) -> None:
        self.crawler = crawler
        self.configured = allowance
        self.allowance = allowance

    @classmethod
    def from_crawler(cls, crawler: Any) -> AddressGuard:
        try:
            allowance = addresses.Allowance.parse(crawler.settings.getlist("HOMEWARD_ALLOW_HOSTS"))
        except ValueError as exc:
            raise ValueError(f"crawl.allow_hosts: {exc}") from None
        guard = cls(crawler, allowance)
        crawler.signals.connect(guard.opened, signal=signals.spider_opened)
        return guard

    def opened(self, spider: Any = None) -> None:
        named = [getattr(spider, "base_url", None) or ""]
        if getattr(spider, "operator_urls", False):
            named += list(getattr(spider, "start_urls", []) or [])
        self.allowance = self.configured | addresses.Allowance.parse(u for u in named if "://" in u)

    async def process_request(self, request: Any) -> None:
        try:
            host, port = addresses.host_port(request.url)
        except ValueError as exc:
            self._refuse(request, str(exc))
        if self.allowance.allows(host, port):
            return
        decided, why = addresses.literal_verdict(host)
        if not decided:
            # the name exactly as the download handler will look it up, so both hit the same DNS cache entry
            found = await self._resolve(urlsplit(request.url).hostname or host, port)
            if not found:
                raise DNSLookupError(f"{host} has no address")
            for address in found:
                ip = addresses.parse_ip(address)
                why = addresses.blocked_because(ip) if ip is not None else "not an IP address"
                if why:
                    self._refuse(request, f"{host} resolves to {address}: {why}")
        elif why:
            self._refuse(request, why)

    async def _resolve(self, host: str, port: int) -> list[str]:
        from twisted.internet import reactor

        receiver = _Addresses()
        reactor.nameResolver.resolveHostName(receiver, host, port)
        return await maybe_deferred_to_future(receiver.done)

    def _refuse(self, request: Any, why: str) -> None:
        self.crawler.stats.inc_value("homeward/filtered/address")
        raise BlockedAddress(f"blocked address: {why} ({request.url[:200]})")


class RedirectLoops:
    """Extension: a redirect that leads back to a URL already requested is dropped by Scrapy's duplicate filter
    without a word; this records it as ``redirect_loop`` (a loop of new URLs ends at ``REDIRECT_MAX_TIMES`` and
    reaches the errback as ``redirect_loop`` anyway)."""

    def __init__(self, crawler: Any) -> None:
        self.crawler = crawler

    @classmethod
    def from_crawler(cls, crawler: Any) -> RedirectLoops:
        ext = cls(crawler)
        crawler.signals.connect(ext.request_dropped, signal=signals.request_dropped)
        return ext

    def request_dropped(self, request: Any, spider: Any = None) -> None:
        chain = request.meta.get("redirect_urls") or []
        if request.url in chain:
            from crawlers.spiders.base import record_error

            record_error(self.crawler, "redirect_loop", chain[0], f"redirects back to {request.url}")
        elif chain:  # a redirect to a page this crawl already has: a duplicate, not an error
            self.crawler.stats.inc_value("homeward/duplicates/redirect")


class Progress:
    """Extension: every ``HOMEWARD_PROGRESS_INTERVAL`` seconds (2), write the crawl's running counts to
    ``HOMEWARD_PROGRESS_FILE`` (atomically), so ``homeward crawl`` / ``schedule`` can show a live progress bar for a
    crawl that runs in another process (or on another Ray node, through a shared data dir)."""

    KEYS: ClassVar[dict[str, str]] = {
        "pages": "homeward/pages",
        "items": "homeward/items",
        "new": "homeward/new",
        "updated": "homeward/updated",
        "unchanged": "homeward/unchanged",
        "skipped": "homeward/cards_skipped_unchanged",
        "requests": "downloader/request_count",
    }

    def __init__(self, crawler: Any, path: str, interval: float) -> None:
        self.crawler = crawler
        self.path = Path(path)
        self.interval = interval
        self.task: Any = None

    @classmethod
    def from_crawler(cls, crawler: Any) -> Progress:
        path = crawler.settings.get("HOMEWARD_PROGRESS_FILE")
        if not path:
            raise NotConfigured
        ext = cls(crawler, path, crawler.settings.getfloat("HOMEWARD_PROGRESS_INTERVAL", 2.0))
        crawler.signals.connect(ext.opened, signal=signals.spider_opened)
        crawler.signals.connect(ext.closed, signal=signals.spider_closed)
        return ext

    def opened(self, spider: Any = None) -> None:
        from twisted.internet import task

        self.task = task.LoopingCall(self.write)
        self.task.start(self.interval, now=True)

    def closed(self, spider: Any = None, reason: str | None = None) -> None:
        if self.task is not None and self.task.running:
            self.task.stop()
        self.write(done=True)

    def write(self, done: bool = False) -> None:
        stats = self.crawler.stats
        data = {key: int(stats.get_value(stat, 0) or 0) for key, stat in self.KEYS.items()}
        data["errors"] = sum(
            int(v) for k, v in stats.get_stats().items() if k.startswith("homeward/errors/") and isinstance(v, int)
        )
        data["done"] = done
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            tmp.write_text(json.dumps(data))
            tmp.replace(self.path)
        except OSError:
            pass  # progress is a convenience; the crawl never fails for it


class ErrorLog:
    """Extension: ``crawler.homeward_error_log(reason, url, detail)`` appends to ``HOMEWARD_ERROR_LOG``."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fh = self.path.open("a", encoding="utf-8")

    @classmethod
    def from_crawler(cls, crawler: Any) -> ErrorLog:
        path = crawler.settings.get("HOMEWARD_ERROR_LOG")
        if not path:
            raise NotConfigured
        ext = cls(path)
        crawler.homeward_error_log = ext.write
        crawler.signals.connect(ext.close, signal=signals.engine_stopped)
        return ext

    def write(self, reason: str, url: str | None, detail: str | None) -> None:
        line = json.dumps(
            {"at": datetime.now(UTC).isoformat(), "reason": reason, "url": url, "detail": detail}, ensure_ascii=False
        )
        with self._lock:
            if not self._fh.closed:
                self._fh.write(line + "\n")
                self._fh.flush()

    def close(self) -> None:
        with self._lock:
            self._fh.close()
