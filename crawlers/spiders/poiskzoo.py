"""poiskzoo.ru spider: the catalog (``/poteryashka``, ``/poteryashka/page-N``) → cards
(``/<city>/<propala|najdena>-<animal>/<id>``). Parsing lives in :mod:`crawlers.parsers.poiskzoo`.

Cards show relative dates ("Вчера в 22:27"); the normaliser resolves them against the crawl time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from scrapy.http import Response

from crawlers.parsers import poiskzoo
from crawlers.spiders.base import ListingSpider


class PoiskzooSpider(ListingSpider):
    name = "poiskzoo"
    default_base_url = "https://poiskzoo.ru"
    start_paths = ["/poteryashka"]  # noqa: RUF012

    def is_card(self, url: str) -> bool:
        return poiskzoo.is_card_url(url)

    def parse_card(self, response: Response) -> Iterator[Any]:
        yield self.listing_item(poiskzoo.parse_card(response.text, response.url), response)

    def parse_listing_page(self, response: Response) -> Iterator[Any]:
        cards, pages = poiskzoo.parse_catalog(response.text, response.url)
        tiles = poiskzoo.catalog_tiles(response.text, response.url)
        for url in cards:
            yield self.card_request(response, url, fingerprint=tiles.get(url))
        for url in pages:
            yield self.page_request(response, url)
