"""PetHarbor spider: stray-intake search results (``/results.asp?searchtype=LOST…``) → animal pages
(``/pet.asp?uaid=<SHELTER>.<ID>``, kind ``shelter``). Parsing lives in :mod:`crawlers.parsers.petharbor`.

The default start page lists the Austin Animal Center's strays; ``-a shelters=ASTN,XXXX`` picks other shelters,
``-a start_paths=`` any results pages.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from crawlers.parsers import petharbor
from crawlers.spiders.base import SiteSpider

RESULTS = (
    "/results.asp?searchtype=LOST&friends=1&samaritans=1&nosuccess=0&rows=100&imght=120&imgres=thumb"
    "&view=sysadm.v_animal&fontface=arial&fontsize=10&miles=20&atype=&where=type_ALL&shelterlist={shelters}"
)


class PetharborSpider(SiteSpider):
    name = "petharbor"
    default_base_url = "https://www.petharbor.com"
    start_paths = [RESULTS.format(shelters=quote("'ASTN'"))]  # noqa: RUF012
    parser = petharbor

    def __init__(
        self,
        *args: Any,
        start_paths: str | list[str] | None = None,
        shelters: str | None = None,
        **kwargs: Any,
    ) -> None:
        if not start_paths and shelters:
            codes = ",".join(f"'{c.strip().upper()}'" for c in shelters.split(",") if c.strip())
            start_paths = [RESULTS.format(shelters=quote(codes))]
        super().__init__(*args, start_paths=start_paths, **kwargs)
