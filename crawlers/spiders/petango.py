"""Petango / 24Pet (PetPoint) spider: adoptable-animal search pages → detail pages (kind ``adoptable``).

URL layout under ``/webservices/adoptablesearch/``: ``wsAdoptableAnimalSearch.aspx?species=Dog|Cat`` (add the
shelter's key with ``-a authkey=KEY``) → ``wsAdoptableAnimalDetails.aspx?id=N``. Parsing lives in
:mod:`crawlers.parsers.petango`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from scrapy.http import Response

from crawlers.parsers import petango
from crawlers.spiders.base import ListingSpider, split_list

SEARCH = "/webservices/adoptablesearch/wsAdoptableAnimalSearch.aspx"


class PetangoSpider(ListingSpider):
    name = "petango"
    default_base_url = "https://ws.petango.com"
    start_paths = [f"{SEARCH}?species=Dog", f"{SEARCH}?species=Cat"]  # noqa: RUF012

    def __init__(
        self,
        *args: Any,
        start_paths: str | list[str] | None = None,
        authkey: str | None = None,
        **kwargs: Any,
    ) -> None:
        paths = split_list(start_paths) or type(self).start_paths
        if authkey:
            paths = [f"{p}{'&' if '?' in p else '?'}authkey={quote(authkey)}" for p in paths]
        super().__init__(*args, start_paths=paths, **kwargs)

    def is_card(self, url: str) -> bool:
        return petango.is_card_url(url)

    def parse_card(self, response: Response) -> Iterator[Any]:
        yield self.listing_item(petango.parse_card(response.text, response.url), response)

    def parse_listing_page(self, response: Response) -> Iterator[Any]:
        cards, pages = petango.parse_catalog(response.text, response.url)
        for url in cards:
            yield self.card_request(response, url)
        for url in pages:
            yield self.page_request(response, url)
