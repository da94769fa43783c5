"""Petfinder API v2 spider: organizations → shelters, animals → adoptable listings.

Flow: ``POST /v2/oauth2/token`` (client credentials) → the organizations pages (``/v2/organizations?limit=100``,
following ``pagination._links.next``), which fill the shelter directory → the animals pages (``/v2/animals?limit=100``),
each animal a listing of kind ``adoptable`` with ``shelter_id`` = its ``organization_id`` and ``shelter_name`` from the
directory. ``-a organizations=0`` skips the directory; ``-a start_paths=…`` or ``-a start_urls=…`` (any API URLs,
fetched at once, after the token) replace the default paths.

Credentials: ``settings.crawl.petfinder_key`` / ``petfinder_secret`` (config file or ``HOMEWARD_CRAWL__PETFINDER_KEY``
/ ``HOMEWARD_CRAWL__PETFINDER_SECRET``), else ``PETFINDER_KEY`` / ``PETFINDER_SECRET``. The secret goes only into the
token request's body: it is never logged, never put in a URL, an item or an error message.

Rate limits: a ``429`` is retried after the server's ``Retry-After`` (seconds or an HTTP date; capped at
``max_retry_after_s``), at most ``max_throttle_retries`` times per request, without holding up other requests. A
``401`` (expired token) fetches a new token once and retries the request. Other failures are recorded with their
reason like any page.

In a writing crawl (``homeward crawl``) the shelter directory is also saved to ``<data_dir>/shelters/<source>.json``,
its free text (shelter name, place) redacted as listings are (:mod:`engine.redact`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from scrapy.http import FormRequest, Request, Response

from crawlers.parsers import ParseError, petfinder
from crawlers.spiders.base import ListingSpider, record_error
from engine import phones
from engine.redact import redact_text

ORGANIZATIONS = "/v2/organizations?limit=100&page=1"
ANIMALS = "/v2/animals?limit=100&page=1"


def retry_after_seconds(value: bytes | str | None, default: float = 5.0, cap: float = 120.0) -> float:
    """A ``Retry-After`` header (delta-seconds or an HTTP date) as seconds to wait, within ``[0, cap]``."""
    if value is None:
        return min(default, cap)
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(text).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            seconds = default
    return max(0.0, min(seconds, cap))


async def _sleep(seconds: float) -> None:
    """Wait without blocking the crawl (other requests keep flowing)."""
    from scrapy.utils.defer import maybe_deferred_to_future
    from twisted.internet import reactor, task

    await maybe_deferred_to_future(task.deferLater(reactor, seconds, lambda: None))


class PetfinderSpider(ListingSpider):
    name = "petfinder"
    default_base_url = "https://api.petfinder.com"
    start_paths = [ORGANIZATIONS, ANIMALS]  # noqa: RUF012
    #: 429 is answered by :meth:`api_response` (Retry-After), not by Scrapy's immediate retry.
    custom_settings = {"RETRY_HTTP_CODES": [500, 502, 503, 504, 522, 524, 408]}  # noqa: RUF012
    max_retry_after_s = 120.0
    max_throttle_retries = 5

    def __init__(
        self,
        *args: Any,
        organizations: str | bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.with_organizations = str(organizations).lower() not in ("0", "false", "no", "off")
        self.token: str | None = None
        self.token_expires_at = 0.0
        self.shelters: dict[str, dict[str, Any]] = {}
        self._after_token: list[Request] = []
        self._after_organizations: list[str] = []
        self._organizations_done = False
        self._token_pending = False

    # -- credentials and token ------------------------------------------------------------------------------------

    def _credentials(self) -> tuple[str | None, str | None]:
        if getattr(self, "crawler", None) is None:
            return None, None
        return self.settings.get("HOMEWARD_PETFINDER_KEY"), self.settings.get("HOMEWARD_PETFINDER_SECRET")

    def _token_request(self) -> Request | None:
        key, secret = self._credentials()
        if not (key and secret):
            hint = "set crawl.petfinder_key and crawl.petfinder_secret (or PETFINDER_KEY / PETFINDER_SECRET)"
            record_error(self.crawler, "missing_credentials", self.url(petfinder.TOKEN_PATH), hint)
            return None
        self._token_pending = True
        return FormRequest(
            self.url(petfinder.TOKEN_PATH),
            formdata={"grant_type": "client_credentials", "client_id": key, "client_secret": secret},
            callback=self.got_token,
            errback=self.token_failed,
            dont_filter=True,
            meta={"handle_httpstatus_list": [429], "hw_token": True},
        )

    async def got_token(self, response: Response) -> AsyncIterator[Any]:
        if response.status == 429:
            retry = await self._after_retry_after(response)
            if retry is not None:
                yield retry
            return
        self._token_pending = False
        try:
            self.token, expires = petfinder.parse_token(response.text)
        except ParseError as exc:
            record_error(self.crawler, "auth_failed", response.url, str(exc))
            return
        self.token_expires_at = time.time() + expires
        self.crawler.stats.inc_value("homeward/petfinder/tokens")
        pending, self._after_token = self._after_token, []
        for request in pending:
            yield self._authorized(request)

    def token_failed(self, failure: Any) -> None:
        self._token_pending = False
        self.on_error(failure)
        record_error(self.crawler, "auth_failed", self.url(petfinder.TOKEN_PATH), "no token: nothing fetched")

    def _authorized(self, request: Request) -> Request:
        headers = dict(request.headers.to_unicode_dict())
        headers["Authorization"] = f"Bearer {self.token}"
        headers.setdefault("Accept", "application/json")
        return request.replace(headers=headers)

    # -- requests -------------------------------------------------------------------------------------------------

    def api_request(self, url: str, **meta: Any) -> Request:
        request = Request(
            url,
            callback=self.api_response,
            errback=self.api_error,
            meta={"handle_httpstatus_list": [401, 429], **meta},
        )
        return self._authorized(request) if self.token else request

    def initial_requests(self) -> Iterator[Request]:
        urls = list(self.start_urls)
        if not self.operator_urls and self.with_organizations:
            orgs = [u for u in urls if urlsplit(u).path.rstrip("/").endswith("/organizations")]
            self._after_organizations = [u for u in urls if u not in orgs]
            urls = orgs or urls
            self._organizations_done = not orgs
        elif not self.operator_urls:
            urls = [u for u in urls if not urlsplit(u).path.rstrip("/").endswith("/organizations")]
        self._after_token = [self.api_request(u, hw_chain=self._chain(u)) for u in urls]
        token = self._token_request()
        if token is not None:
            self.requests_issued += 1
            yield token

    @staticmethod
    def _chain(url: str) -> str:
        return "organizations" if "/organizations" in urlsplit(url).path else "animals"

    def _start_animals(self) -> Iterator[Request]:
        if self._organizations_done:
            return
        self._organizations_done = True
        self.crawler.stats.set_value("homeward/petfinder/shelters", len(self.shelters))
        for url in self._after_organizations:
            yield self.api_request(url, hw_chain="animals")

    # -- responses ------------------------------------------------------------------------------------------------

    async def _after_retry_after(self, response: Response) -> Request | None:
        """Wait out a 429's ``Retry-After`` (without blocking other requests); the request to send again, or
        ``None`` when it was throttled too often (recorded as ``http_429``)."""
        tries = int(response.meta.get("hw_throttled", 0))
        if tries >= self.max_throttle_retries:
            record_error(self.crawler, "http_429", response.url, f"still throttled after {tries} waits")
            return None
        delay = retry_after_seconds(response.headers.get(b"Retry-After"), cap=self.max_retry_after_s)
        self.crawler.stats.inc_value("homeward/petfinder/throttled")
        await _sleep(delay)
        request = response.request.replace(dont_filter=True, meta={**response.meta, "hw_throttled": tries + 1})
        return self._authorized(request) if self.token and not response.meta.get("hw_token") else request

    async def api_response(self, response: Response) -> AsyncIterator[Any]:
        if response.status == 429:
            retry = await self._after_retry_after(response)
            for request in [retry] if retry is not None else self._chain_end(response.request):
                yield request
            return
        if response.status == 401:
            if response.meta.get("hw_reauth"):
                record_error(self.crawler, "http_401", response.url, "refused with a fresh token")
                for request in self._chain_end(response.request):
                    yield request
                return
            retry = response.request.replace(dont_filter=True, meta={**response.meta, "hw_reauth": True})
            self._after_token.append(retry)
            if not self._token_pending:  # one token request for every request refused meanwhile
                self.token = None
                token = self._token_request()
                if token is not None:
                    yield token
            return
        for obj in self.parse(response):
            yield obj

    def _chain_end(self, request: Request) -> Iterator[Request]:
        if request.meta.get("hw_chain") == "organizations":
            yield from self._start_animals()

    def api_error(self, failure: Any) -> Iterator[Request]:
        self.on_error(failure)
        request = getattr(failure, "request", None)
        if request is not None:
            yield from self._chain_end(request)

    # -- ListingSpider API ----------------------------------------------------------------------------------------

    def is_card(self, url: str) -> bool:
        return petfinder.is_animal_url(url)

    def _listing(self, raw: dict[str, Any], response: Response) -> Any:
        shelter = self.shelters.get(str(raw.get("shelter_id") or "").upper())
        if shelter and not raw.get("shelter_name"):
            raw["shelter_name"] = shelter["shelter_name"]
        return self.listing_item(raw, response)

    def parse_card(self, response: Response) -> Iterator[Any]:
        yield self._listing(petfinder.parse_card(response.text, response.url), response)

    def parse_listing_page(self, response: Response) -> Iterator[Any]:
        path = urlsplit(response.url).path.rstrip("/")
        if path.endswith("/organizations") or "/organizations/" in path:
            records, pages = petfinder.parse_organizations(response.text, response.url)
            for rec in records:
                self.shelters[rec["shelter_id"].upper()] = rec
            for url in pages:
                yield self.api_request(self.rebase(url), hw_chain="organizations")
            if not pages and response.meta.get("hw_chain") == "organizations":
                yield from self._start_animals()
            return
        if path.endswith("/animals"):
            listings, pages = petfinder.parse_animals(response.text, response.url)
            for raw in listings:
                yield self._listing(raw, response)
            for url in pages:
                yield self.api_request(self.rebase(url), hw_chain="animals")
            return
        raise ParseError(f"not a Petfinder API list page: {path}")

    # -- shelter directory ----------------------------------------------------------------------------------------

    def closed(self, reason: str) -> None:
        self.crawler.stats.set_value("homeward/petfinder/shelters", len(self.shelters))
        data_dir = self.settings.get("HOMEWARD_DATA_DIR")
        if not (self.shelters and data_dir and self.settings.getbool("HOMEWARD_INCREMENTAL")):
            return
        if "://" in str(data_dir):  # object storage: the directory file is a local convenience only
            return
        target = Path(data_dir) / "shelters" / f"{self.source}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        regions = phones.regions(self.settings.get("HOMEWARD_PHONE_REGION"))
        shelters = [
            {**rec, **{key: redact_text(rec.get(key), regions) for key in ("shelter_name", "location_text")}}
            for rec in sorted(self.shelters.values(), key=lambda s: s["shelter_id"])
        ]
        tmp.write_text(json.dumps({"source": self.source, "shelters": shelters}, ensure_ascii=False, indent=1))
        tmp.replace(target)
