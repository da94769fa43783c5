"""``ListingSpider``: the base every Homeward spider extends.

A site spider only says how to recognise a card URL and how to parse the two kinds of page, usually by naming its
parser module (:class:`SiteSpider`)::

    class Pet911Spider(SiteSpider):
        name = "pet911"                                  # = the source name
        default_base_url = "https://pet911.ru"
        start_paths = ["/catalog"]
        parser = crawlers.parsers.pet911                 # is_card_url, parse_card, parse_catalog[, catalog_tiles]

A spider with its own page logic (an API, a config-driven site) overrides ``is_card``, ``parse_card`` and
``parse_listing_page`` instead.

What the base does so that subclasses do not have to:

* **Arguments.** ``-a base_url=URL`` points the spider at a mirror (start paths and links to the site's own host are
  rebased onto it); ``-a start_urls=URL,URL…`` (card or catalog pages on any host) replaces the start paths, so an
  operator re-checks one page with ``scrapy crawl pet911 -a start_urls=… -O out.jsonl``; ``-a max_pages=N`` stops
  issuing requests after N pages.
* **Dispatch.** :meth:`parse` sends a card URL to :meth:`parse_card`, anything else to :meth:`parse_listing_page`.
* **Errors never crash a crawl.** An exception in a parser becomes reason ``parse_error:<ExceptionName>``; a card
  page that yields no listing is ``empty_card``; HTTP errors (``http_404``, ``http_500`` …), timeouts, DNS errors,
  refused connections, redirect loops, oversize pages, robots.txt refusals and non-public addresses
  (``blocked_address``, :class:`crawlers.middlewares.AddressGuard`) arrive at :meth:`on_error`. Every
  reason is counted in the crawl stats under ``homeward/errors/<reason>`` and one line per failed URL goes to the
  run's error log (see :func:`record_error`); ``crawlers/run.py`` turns the counts into ``crawl_runs``.
* **Incremental crawls.** When the crawl runs with a data dir (``crawlers/run.py`` sets ``HOMEWARD_INCREMENTAL``),
  card requests found on catalog pages are filtered through :class:`crawlers.state.CrawlState`: a card already
  stored is not fetched again unless its catalog ``fingerprint`` changed or it is due for a (conditional) re-check.
  Build card requests with :meth:`card_request` (pass ``fingerprint=`` the catalog tile's text when the catalog
  shows one). Operator ``start_urls`` are always fetched.
* **Politeness and safety** live in the settings and middlewares (robots.txt, AutoThrottle, per-domain
  concurrency, http(s) only, public addresses only); spiders need not repeat it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import UTC, datetime
from types import ModuleType
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import scrapy
from scrapy.http import Request, Response

from crawlers.items import FIELDS, ListingItem
from engine import ids, phones
from engine.redact import redact_text

log = logging.getLogger(__name__)

ERROR_STAT_PREFIX = "homeward/errors/"
WARNING_STAT_PREFIX = "homeward/warnings/"
_HTTP_SCHEMES = ("http", "https")


def record_error(crawler: Any, reason: str, url: str | None = None, detail: str | None = None) -> None:
    """Count ``reason`` in the crawl stats and log one line for ``url``; the crawl goes on.

    ``crawlers/run.py`` reads the ``homeward/errors/*`` stats into ``crawl_runs.errors_by_reason`` and the
    :class:`crawlers.middlewares.ErrorLog` extension (when enabled) appends ``{url, reason, detail}`` to the run's
    error file, so every failed page keeps its reason. ``url`` and ``detail`` are redacted first
    (:func:`engine.redact.redact_text`): a detail quotes what failed (a parser's exception, a redirect target) and
    a hostile page puts contacts in its links, and the error file is stored text like any other.
    """
    settings = getattr(crawler, "settings", None)
    hint = settings.get("HOMEWARD_PHONE_REGION") if settings is not None else None
    url, detail = (redact_text(v, phones.regions(hint)) for v in (url, detail))
    if crawler is not None and crawler.stats is not None:
        crawler.stats.inc_value(ERROR_STAT_PREFIX + reason)
        sink = getattr(crawler, "homeward_error_log", None)
        if sink is not None:
            sink(reason, url, detail)
    log.warning("crawl error %s: %s%s", reason, url or "-", f" ({detail})" if detail else "")


def failure_reason(failure: Any, crawler: Any = None) -> str:
    """A short, stable reason for a failed request (the key of ``errors_by_reason``).

    A download Scrapy cancelled while the crawl is running is one that outgrew its size limit (the handler cancels
    a body once it streams past ``download_maxsize``; only a shutdown cancels otherwise), hence ``too_large``.
    """
    from scrapy import exceptions as sx
    from scrapy.spidermiddlewares.httperror import HttpError
    from twisted.internet import defer
    from twisted.internet import error as terr

    from crawlers.addresses import BLOCKED_REASON, BlockedAddress

    exc = getattr(failure, "value", failure)
    if isinstance(exc, BlockedAddress):
        return BLOCKED_REASON
    if isinstance(exc, HttpError):
        return f"http_{exc.response.status}"
    if isinstance(exc, sx.IgnoreRequest):
        text = str(exc).lower()
        if "robots.txt" in text:
            return "robots_disallowed"
        if "redirection" in text:
            return "redirect_loop"
        if "scheme" in text:
            return "scheme_not_allowed"
        if "offsite" in text:
            return "offsite"
        return "ignored"
    if isinstance(exc, (sx.DownloadTimeoutError, terr.TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, (sx.CannotResolveHostError, terr.DNSLookupError)):
        return "dns_error"
    if isinstance(exc, (sx.DownloadConnectionRefusedError, terr.ConnectionRefusedError)):
        return "connection_refused"
    if isinstance(exc, (sx.DownloadCancelledError, defer.CancelledError)):
        if "size" in str(exc).lower() or (crawler is not None and getattr(crawler, "crawling", False)):
            return "too_large"
        return "cancelled"
    if isinstance(exc, sx.ResponseDataLossError):
        return "data_loss"
    if isinstance(exc, sx.UnsupportedURLSchemeError):
        return "scheme_not_allowed"
    name = type(exc).__name__
    if "Timeout" in name:
        return "timeout"
    return f"download_error:{name}"


def _host(url: str) -> str:
    host = (urlsplit(url).hostname or "").lower()
    return host[4:] if host.startswith("www.") else host


def split_list(value: str | Iterable[str] | None) -> list[str]:
    """A spider argument given as ``-a x=a,b`` (a string) or as a list, without empty entries."""
    items = re.split(r"[,\s]+", value) if isinstance(value, str) else list(value or [])
    return [v for v in items if v]


class ListingSpider(scrapy.Spider):
    """Base of Homeward's spiders; see the module docstring for what it gives subclasses."""

    name = "listing"
    #: The site's real root, e.g. ``https://pet911.ru``; ``-a base_url=`` replaces it (a local mirror).
    default_base_url: str = ""
    #: Catalog or API paths relative to the base URL where a full crawl starts.
    start_paths: list[str] = ["/"]  # noqa: RUF012 (class-level default, replaced per instance)

    def __init__(
        self,
        base_url: str | None = None,
        start_urls: str | Iterable[str] | None = None,
        max_pages: int | str | None = None,
        start_paths: str | Iterable[str] | None = None,
        **kwargs: Any,
    ) -> None:
        source = kwargs.pop("source", None)
        super().__init__(**kwargs)
        #: Source name stamped on every item (``name`` unless a config-driven spider serves several sources).
        self.source: str = str(source or self.name)
        self.base_url: str = (base_url or self.default_base_url or "").rstrip("/")
        self.start_paths = split_list(start_paths) or list(self.start_paths)
        start_urls = split_list(start_urls)
        self.operator_urls: bool = bool(start_urls)
        self.start_urls: list[str] = list(start_urls) if start_urls else [self.url(p) for p in self.start_paths]
        self.max_pages: int | None = int(max_pages) if max_pages not in (None, "", 0, "0") else None
        self.requests_issued = 0
        self.pages_parsed = 0
        self.crawl_state: Any = None  # crawlers.state.CrawlState when the crawl is incremental

    # -- wiring --------------------------------------------------------------------------------------------------

    @classmethod
    def from_crawler(cls, crawler: Any, *args: Any, **kwargs: Any) -> ListingSpider:
        spider = super().from_crawler(crawler, *args, **kwargs)
        if crawler.settings.getbool("HOMEWARD_INCREMENTAL") and not spider.operator_urls:
            from crawlers.state import CrawlState

            spider.crawl_state = CrawlState.from_crawler(crawler, spider.source)
        return spider

    # -- URLs ----------------------------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        """``path`` (relative to the base URL, or absolute) as an absolute URL."""
        if urlsplit(path).scheme:
            return self.rebase(path)
        if not self.base_url:
            raise ValueError(f"spider {self.name!r} has no base_url; pass -a base_url=URL or -a start_urls=URL")
        return f"{self.base_url}/{path.lstrip('/')}"

    def rebase(self, url: str) -> str:
        """Point a link to the site's real host at the mirror in ``base_url`` (no-op when they are the same)."""
        if not self.default_base_url or not self.base_url or self.base_url == self.default_base_url.rstrip("/"):
            return url
        parts = urlsplit(url)
        if _host(url) != _host(self.default_base_url):
            return url
        root = urlsplit(self.default_base_url)
        path = parts.path
        if root.path.rstrip("/") and path.startswith(root.path.rstrip("/")):
            path = path[len(root.path.rstrip("/")) :]
        rebased = urlsplit(self.base_url)
        return urlunsplit((rebased.scheme, rebased.netloc, rebased.path.rstrip("/") + path, parts.query, ""))

    def absolute(self, response: Response, href: str | None) -> str | None:
        """``href`` resolved against ``response`` and rebased; ``None`` for empty or non-http(s) links."""
        if not href or not href.strip():
            return None
        url = urljoin(response.url, href.strip())
        if urlsplit(url).scheme.lower() not in _HTTP_SCHEMES:
            return None
        return self.rebase(url.split("#", 1)[0])

    def card_request(
        self, response: Response, href: str | None, fingerprint: str | None = None, **kwargs: Any
    ) -> Request | None:
        """A request for a card page linked from ``response`` (``None`` for an unusable link).

        ``fingerprint``: what the catalog shows of this card (tile text: title, status, date, photo count). When it
        differs from the one stored at the card's last fetch, an incremental crawl fetches the card again; without
        one, a stored card is re-checked only after the source's ``recheck_hours``.
        """
        url = self.absolute(response, href)
        if url is None:
            return None
        meta = dict(kwargs.pop("meta", None) or {})
        meta["hw_card_url"] = url
        if fingerprint is not None:
            meta["hw_fingerprint"] = ids.content_hash(" ".join(str(fingerprint).split()))
        return Request(url, callback=self.parse, errback=self.on_error, meta=meta, **kwargs)

    def page_request(self, response: Response, href: str | None, **kwargs: Any) -> Request | None:
        """A request for another catalog/API page (pagination) linked from ``response``."""
        url = self.absolute(response, href)
        return None if url is None else Request(url, callback=self.parse, errback=self.on_error, **kwargs)

    # -- start ---------------------------------------------------------------------------------------------------

    def initial_requests(self) -> Iterator[Request]:
        for url in self.start_urls:
            if urlsplit(url).scheme.lower() not in _HTTP_SCHEMES:
                record_error(self.crawler, "scheme_not_allowed", url)
                continue
            self.requests_issued += 1
            yield Request(url, callback=self.parse, errback=self.on_error, dont_filter=True)

    async def start(self) -> AsyncIterator[Any]:
        for request in self.initial_requests():
            yield request

    def start_requests(self) -> Iterator[Request]:  # Scrapy < 2.13
        yield from self.initial_requests()

    # -- subclass API --------------------------------------------------------------------------------------------

    def is_card(self, url: str) -> bool:
        """True when ``url`` is a single listing's page (as opposed to a catalog or API list page)."""
        raise NotImplementedError

    def parse_card(self, response: Response) -> Iterable[Any]:
        """Yield the :class:`ListingItem` (usually one) on a card page."""
        raise NotImplementedError

    def parse_listing_page(self, response: Response) -> Iterable[Any]:
        """Yield requests for the cards and next pages linked from a catalog/API page (and items it holds)."""
        raise NotImplementedError

    def listing_item(self, raw: dict[str, Any], response: Response | None = None) -> ListingItem:
        """A :class:`ListingItem` from a parser's raw dict, stamped with source, url and scraped_at.

        Unknown keys are dropped (and counted as warnings) rather than failing the page.
        """
        item = ListingItem()
        for key, value in raw.items():
            if key in FIELDS:
                item[key] = value
            elif self.crawler is not None and self.crawler.stats is not None:
                self.crawler.stats.inc_value(WARNING_STAT_PREFIX + f"unknown_key:{key}")
        item["source"] = self.source
        if response is not None:
            if not item.get("url"):
                item["url"] = response.url
            item["fetch_url"] = response.meta.get("hw_card_url")
            item["fetch_fingerprint"] = response.meta.get("hw_fingerprint")
        item["scraped_at"] = datetime.now(UTC).isoformat()
        if item.get("source_id") is not None:
            item["source_id"] = str(item["source_id"])
        return item

    # -- dispatch ------------------------------------------------------------------------------------------------

    def parse(self, response: Response, **kwargs: Any) -> Iterator[Any]:
        self.pages_parsed += 1
        self.crawler.stats.inc_value("homeward/pages")
        if response.status == 304 and response.meta.get("hw_conditional"):
            self.crawler.stats.inc_value("homeward/cards_not_modified")
            if self.crawl_state is not None:
                self.crawl_state.not_modified(response.meta.get("hw_card_url", response.url))
            return
        card = self.is_card(response.url)
        if card or response.meta.get("hw_card_url"):
            card = True
        produced = 0
        try:
            results = self.parse_card(response) if card else self.parse_listing_page(response)
            iterator = iter(results or ())
            while True:
                try:
                    obj = next(iterator)
                except StopIteration:
                    break
                out = self._route(obj, response)
                if out is not None:
                    if isinstance(out, ListingItem):
                        produced += 1
                    yield out
        except Exception as exc:  # a bad page must never stop the crawl
            record_error(self.crawler, f"parse_error:{type(exc).__name__}", response.url, str(exc)[:300])
            return
        if card and produced == 0:
            record_error(self.crawler, "empty_card", response.url, "card page yielded no listing")

    def _route(self, obj: Any, response: Response) -> Any:
        if obj is None:
            return None
        if isinstance(obj, dict) and not isinstance(obj, ListingItem):
            return self.listing_item(obj, response)
        if isinstance(obj, ListingItem):
            if not obj.get("source"):
                obj["source"] = self.source
            obj.setdefault("fetch_url", response.meta.get("hw_card_url"))
            obj.setdefault("fetch_fingerprint", response.meta.get("hw_fingerprint"))
            obj.setdefault("scraped_at", datetime.now(UTC).isoformat())
            return obj
        if isinstance(obj, Request):
            return self._route_request(obj, response)
        return obj

    def _route_request(self, request: Request, response: Response) -> Request | None:
        if urlsplit(request.url).scheme.lower() not in _HTTP_SCHEMES:
            self.crawler.stats.inc_value("homeward/filtered/scheme")
            return None
        if request.errback is None:
            request = request.replace(errback=self.on_error)
        if request.callback is None:
            request = request.replace(callback=self.parse)
        if self.is_card(request.url) or "hw_card_url" in request.meta:
            if self.crawl_state is not None:
                filtered = self.crawl_state.filter_card(request, response)
                if filtered is None:
                    self.crawler.stats.inc_value("homeward/cards_skipped_unchanged")
                    return None
                request = filtered
            request.meta.setdefault("hw_card_url", request.url)
        if self.max_pages is not None and self.requests_issued >= self.max_pages:
            self.crawler.stats.inc_value("homeward/filtered/max_pages")
            return None
        self.requests_issued += 1
        return request

    def on_error(self, failure: Any) -> None:
        """Errback of every request: record the reason and go on."""
        request = getattr(failure, "request", None)
        url = request.url if request is not None else None
        reason = failure_reason(failure, self.crawler)
        record_error(self.crawler, reason, url, str(getattr(failure, "value", failure))[:300])


class SiteSpider(ListingSpider):
    """A spider whose pages are all handled by one parser module of :mod:`crawlers.parsers` exposing
    ``is_card_url(url)``, ``parse_card(text, url)``, ``parse_catalog(text, url) -> (cards, pages)`` and, when the
    catalog shows a tile per card, ``catalog_tiles(text, url) -> {card_url: tile_text}`` (the incremental-crawl
    fingerprint). A site needs only ``name``, ``default_base_url``, ``start_paths`` and ``parser``."""

    name = ""  # a base, not a spider: Scrapy's loader registers only classes with a name
    parser: ModuleType

    def is_card(self, url: str) -> bool:
        return self.parser.is_card_url(url)

    def parse_card(self, response: Response) -> Iterator[Any]:
        yield self.listing_item(self.parser.parse_card(response.text, response.url), response)

    def parse_listing_page(self, response: Response) -> Iterator[Any]:
        cards, pages = self.parser.parse_catalog(response.text, response.url)
        tiles_of = getattr(self.parser, "catalog_tiles", None)
        tiles = tiles_of(response.text, response.url) if tiles_of else {}
        for url in cards:
            yield self.card_request(response, url, fingerprint=tiles.get(url))
        for url in pages:
            yield self.page_request(response, url)
