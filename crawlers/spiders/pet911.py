"""pet911.ru spider: catalog pages → lost (``rl…``) and found (``rf…``) cards, every page design.

URL layout: catalog ``/catalog`` then ``/catalog/page-N`` (2024; ``/catalog?page=N`` in 2021–2022); cards
``/<city>/<lost|found>/<cat|dog>/<id>`` (2024; Cyrillic ``/Москва/пропала/кошка/<id>`` before). Parsing lives in
:mod:`crawlers.parsers.pet911`; ``-a start_paths=/catalog,/lost-cats`` replaces the start paths.

    cd crawlers && scrapy crawl pet911 -a start_urls=https://pet911.ru/moskva/lost/cat/rl784284 -O out.jsonl
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from scrapy.http import Response

from crawlers.parsers import pet911
from crawlers.spiders.base import ListingSpider


class Pet911Spider(ListingSpider):
    name = "pet911"
    default_base_url = "https://pet911.ru"
    start_paths = ["/catalog"]  # noqa: RUF012

    def is_card(self, url: str) -> bool:
        return pet911.is_card_url(url)

    def parse_card(self, response: Response) -> Iterator[Any]:
        yield self.listing_item(pet911.parse_card(response.text, response.url), response)

    def parse_listing_page(self, response: Response) -> Iterator[Any]:
        cards, pages = pet911.parse_catalog(response.text, response.url)
        tiles = pet911.catalog_tiles(response.text, response.url)
        for url in cards:
            yield self.card_request(response, url, fingerprint=tiles.get(url))
        for url in pages:
            yield self.page_request(response, url)
