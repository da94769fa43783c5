"""poiskzoo.ru spider: the catalog (``/poteryashka``, ``/poteryashka/page-N``) → cards
(``/<city>/<propala|najdena>-<animal>/<id>``). Parsing lives in :mod:`crawlers.parsers.poiskzoo`.

Cards show relative dates ("Вчера в 22:27"); the normaliser resolves them against the crawl time.
"""

from __future__ import annotations

from crawlers.parsers import poiskzoo
from crawlers.spiders.base import SiteSpider


class PoiskzooSpider(SiteSpider):
    name = "poiskzoo"
    default_base_url = "https://poiskzoo.ru"
    start_paths = ["/poteryashka"]  # noqa: RUF012
    parser = poiskzoo
