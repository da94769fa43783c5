"""pet911.ru spider: catalog pages → lost (``rl…``) and found (``rf…``) cards, every page design.

URL layout: catalog ``/catalog`` then ``/catalog/page-N`` (2024; ``/catalog?page=N`` in 2021–2022); cards
``/<city>/<lost|found>/<cat|dog>/<id>`` (2024; Cyrillic ``/Москва/пропала/кошка/<id>`` before). Parsing lives in
:mod:`crawlers.parsers.pet911`; ``-a start_paths=/catalog,/lost-cats`` replaces the start paths.

    cd crawlers && scrapy crawl pet911 -a start_urls=https://pet911.ru/moskva/lost/cat/rl784284 -O out.jsonl
"""

from __future__ import annotations

from crawlers.parsers import pet911
from crawlers.spiders.base import SiteSpider


class Pet911Spider(SiteSpider):
    name = "pet911"
    default_base_url = "https://pet911.ru"
    start_paths = ["/catalog"]  # noqa: RUF012
    parser = pet911
