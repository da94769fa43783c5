"""Petango / 24Pet (PetPoint) spider: adoptable-animal search pages → detail pages (kind ``adoptable``).

URL layout under ``/webservices/adoptablesearch/``: ``wsAdoptableAnimalSearch.aspx?species=Dog|Cat`` (add the
shelter's key with ``-a authkey=KEY``) → ``wsAdoptableAnimalDetails.aspx?id=N``. Parsing lives in
:mod:`crawlers.parsers.petango`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from crawlers.parsers import petango
from crawlers.spiders.base import SiteSpider, split_list

SEARCH = "/webservices/adoptablesearch/wsAdoptableAnimalSearch.aspx"


class PetangoSpider(SiteSpider):
    name = "petango"
    default_base_url = "https://ws.petango.com"
    start_paths = [f"{SEARCH}?species=Dog", f"{SEARCH}?species=Cat"]  # noqa: RUF012
    parser = petango

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
