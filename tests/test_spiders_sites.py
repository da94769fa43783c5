"""Real crawls of the five site spiders against tests/mock_site.py serving the saved pages under each site's own URL
layout (catalog pages with pagination, cards, API pages, photos). Each crawl runs Scrapy in a subprocess (the Twisted
reactor cannot restart) through the operator's read-only pipeline (validate → normalise → redact → dedupe), except
the PetHarbor crawl, which runs ``python -m crawlers.run`` with the full pipeline into LanceDB."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from w3lib.url import safe_url_string

from crawlers.parsers import pet911, petango, petfinder, poiskzoo
from crawlers.spiders.petango import SEARCH
from crawlers.spiders.petharbor import PetharborSpider
from tests.mock_site import Logged, MockSite

REPO = Path(__file__).resolve().parents[1]
SECRET = "s3cr3t-never-logged-7f1d"

RUNNER = r"""
import json, sys
args = json.loads(sys.argv[1])
import engine  # offline switches
from scrapy.crawler import CrawlerProcess
from crawlers.settings import scrapy_settings
from engine.config import load_settings
hw = load_settings(overrides=args["hw"], environ={})
s = scrapy_settings(hw, write=False)
s.update({"FEEDS": {args["out"]: {"format": "jsonlines", "encoding": "utf-8"}}, "LOG_FILE": args["log"],
          "LOG_LEVEL": "DEBUG"})
process = CrawlerProcess(s, install_root_handler=True)
crawler = process.create_crawler(args["spider"])
process.crawl(crawler, **args["kwargs"])
process.start()
with open(args["stats"], "w") as f:
    json.dump(crawler.stats.get_stats(), f, default=str)
"""


def hw_overrides(tmp_path: Path, **crawl: Any) -> dict[str, Any]:
    return {
        "data_dir": str(tmp_path / "data"),
        "crawl": {"download_delay_s": 0, "autothrottle": False, "timeout_s": 5, "retry_times": 0, **crawl},
    }


def run_spider(tmp_path: Path, spider: str, timeout: float = 180, **kwargs: Any) -> dict[str, Any]:
    """Crawl in a subprocess; returns items (the feed), stats, errors by reason and the full DEBUG log."""
    crawl = kwargs.pop("crawl", {})
    args = {
        "hw": hw_overrides(tmp_path, **crawl),
        "spider": spider,
        "kwargs": kwargs,
        "out": str(tmp_path / f"{spider}.jsonl"),
        "log": str(tmp_path / f"{spider}.log"),
        "stats": str(tmp_path / f"{spider}.stats.json"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    log = Path(args["log"]).read_text(encoding="utf-8") if Path(args["log"]).exists() else ""
    assert proc.returncode == 0, proc.stderr[-3000:] + log[-3000:]
    stats = json.loads(Path(args["stats"]).read_text())
    out = Path(args["out"])
    items = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] if out.exists() else []
    errors = {k.split("/", 2)[2]: v for k, v in stats.items() if k.startswith("homeward/errors/")}
    return {"items": items, "stats": stats, "errors": errors, "log": log + proc.stderr}


def fixtures(shared_dir: Path) -> Path:
    return shared_dir / "data" / "fixtures"


def request_path(url: str) -> str:
    """The path (and query) Scrapy sends for ``url``: percent-encoded as on the wire."""
    parts = urlsplit(safe_url_string(url))
    return parts.path + (f"?{parts.query}" if parts.query else "")


def retarget(html: str, card_hrefs: list[str], targets: list[str]) -> str:
    """Point the first ``len(targets)`` distinct card links of a real catalog page at the saved cards' paths."""
    for old, new in zip(card_hrefs, targets, strict=False):
        html = html.replace(f'href="{old}"', f'href="{new}"')
    return html


def raw_hrefs(html: str, is_card: Any) -> list[str]:
    out: list[str] = []
    for href in re.findall(r'href="([^"]+)"', html):
        if is_card("https://example.org" + href if href.startswith("/") else href) and href not in out:
            out.append(href)
    return out


# --------------------------------------------------------------------------------------------------- pet911


@pytest.mark.slow
def test_pet911_crawl_every_design(tmp_path: Path, shared_dir: Path) -> None:
    data = fixtures(shared_dir) / "pet911" / "data"
    read = lambda rel: (data / rel).read_bytes().decode("utf-8")  # noqa: E731
    design_2024 = [f"20240114/{p.name}" for p in sorted((data / "20240114").glob("petCard_*"))]
    pages = {
        # catalog path: (catalog design, saved cards it links to)
        "/catalog": ("20240114/catalog.html.dump", design_2024),
        "/catalog/page-2": (
            "20220628/catalog.html.dump",
            ["20220628/petCard__lost_male_cat.html.dump", "20220628/petCard_rl527005_lost_author_name.html.dump",
             "20220628/petCard_rl537200_lost_is_found.html.dump", "20220430/petCard_rf494611_no_photo.html.dump",
             "20220430/petCard_rl476712_lost_is_found.html.dump"],
        ),
        "/catalog?page=2": (
            "2021/catalog.html.dump",
            ["2021/petCard_rf492825.html.dump", "2021/petCard_rf494610_no_author.html.dump"],
        ),
    }  # fmt: skip
    expected_ids: set[str] = set()
    unsaved: set[str] = set()
    with MockSite() as site:
        for path, (catalog, cards) in pages.items():
            html = read(catalog)
            targets = []
            for rel in cards:
                text = read(rel)
                try:
                    card_url = pet911.parse_card(text, "https://pet911.ru/")["url"]
                    expected_ids.add(pet911.card_id_from_url(card_url) or "")
                except Exception:  # the tag-stripped 2021 page: served at its catalog link, must fail to parse
                    card_url = "https://pet911.ru/%D0%91%D0%B8%D0%B9%D1%81%D0%BA/найдена/собака/rf494610"
                target = request_path(card_url)
                site.page(target, text)
                targets.append(target)
            hrefs = raw_hrefs(html, pet911.is_card_url)
            site.page(path, retarget(html, hrefs, targets))
            unsaved |= {request_path("https://pet911.ru" + h) for h in hrefs[len(targets) :]} - set(targets)
        result = run_spider(tmp_path, "pet911", base_url=site.url)

    items = {i["source_id"]: i for i in result["items"]}
    assert set(items) == expected_ids and len(items) == 13
    for sid, item in items.items():
        assert item["kind"] == ("lost" if sid.startswith("rl") else "found")
        assert item["species"] in ("dog", "cat")
        assert item["event_date"] and item["posted_at"]
        assert item["url"].startswith("https://pet911.ru/")  # the original post, not the mirror
        assert "author_name" not in item or not item["author_name"]  # never leaves the pipeline
    assert items["rl537200"]["status"] == "resolved" and items["rl476712"]["status"] == "resolved"
    assert items["rl518787"]["status"] == "active" and len(items["rl518787"]["photo_urls"]) == 7
    assert items["rf494611"]["photo_urls"] == []
    assert items["rf494618"]["sex"] == "unknown"
    assert "89100000000" not in (items["rf492825"]["description"] or "")  # phone redacted from stored text
    # the three catalog designs were all walked (pagination), and every failure has its reason
    assert site.hits("/catalog") == 1 and site.hits("/catalog/page-2") == 1 and site.hits("/catalog?page=2") == 1
    assert result["errors"].get("parse_error:ParseError") == 1  # the tag-stripped page
    assert result["errors"].get("http_404") == len(unsaved) > 40  # catalog links to cards that were not saved


# ------------------------------------------------------------------------------------------------- poiskzoo


@pytest.mark.slow
def test_poiskzoo_crawl(tmp_path: Path, shared_dir: Path) -> None:
    testdata = fixtures(shared_dir) / "poiskzoo" / "pkg" / "crawler" / "testdata"
    catalog = (testdata / "catalog.html.dump").read_text(encoding="utf-8")
    cards = sorted(p.name for p in testdata.glob("1*.html.dump"))
    from parsel import Selector

    tiles = "//div[contains(@class,'pzplitkadiv')]//div[contains(@class,'pzplitkalink')]/a/@href"
    hrefs = list(dict.fromkeys(Selector(text=catalog).xpath(tiles).getall()))
    assert len(hrefs) == 52
    with MockSite() as site:
        targets = []
        for name in cards:
            text = (testdata / name).read_text(encoding="utf-8")
            path = request_path(poiskzoo.parse_card(text, "https://poiskzoo.ru/")["url"])
            site.page(path, text)
            targets.append(path)
        # page 1 links the first four saved cards, page 2 the other four; the other tiles' cards were not saved
        site.page("/poteryashka", retarget(catalog, hrefs, targets[:4]))
        site.page("/poteryashka/page-2", retarget(catalog, hrefs, targets[4:]))
        result = run_spider(tmp_path, "poiskzoo", base_url=site.url)

    items = {i["source_id"]: i for i in result["items"]}
    assert set(items) == {n.split(".")[0] for n in cards}
    assert items["164921"]["species"] == "cat" and items["164921"]["sex"] == "male"
    assert items["164921"]["colors"] == ["grey", "spotted"]
    assert items["164978"]["sex"] == "unknown"
    assert items["168308"]["species"] == "other"
    assert any("'bird'" in w for w in items["168308"]["parse_warnings"])
    assert all(i["event_date"] and i["photo_urls"] for i in items.values())
    assert site.hits("/poteryashka/page-2") == 1
    assert result["errors"].get("http_404") == 52 - 4  # page 2 links the same unsaved cards: fetched once


# -------------------------------------------------------------------------------------------------- petango


@pytest.mark.slow
def test_petango_crawl(tmp_path: Path, shared_dir: Path) -> None:
    root = fixtures(shared_dir) / "petango"
    listed = saved = 0
    with MockSite() as site:
        for species in ("Dog", "Cat"):
            fragment = (root / f"{species.lower()}_name_id_subURL_list.txt").read_text()
            site.page(f"{SEARCH}?species={species}", fragment)
            listed += fragment.count("wsAdoptableAnimalDetails.aspx?id=")
            for page in (root / species / "AttributeHTML").glob("*.html"):
                saved += 1
                animal_id = page.name.split("_")[0]
                site.page(
                    f"/webservices/adoptablesearch/wsAdoptableAnimalDetails.aspx?id={animal_id}&css=",
                    page.read_bytes(),
                    content_type="text/html; charset=utf-8",
                )
        result = run_spider(tmp_path, "petango", base_url=site.url)

    items = result["items"]
    assert len(items) == 32
    assert {i["species"] for i in items} == {"dog", "cat"}
    assert all(i["kind"] == "adoptable" and i["shelter_name"] == "Seattle Animal Shelter" for i in items)
    assert all(i["name"] and i["breed"] and i["sex"] in ("male", "female") for i in items)
    assert sum(bool(i["photo_urls"]) for i in items) == 31
    assert (listed, saved) == (37, 32)
    assert result["errors"] == {"http_404": listed - saved}  # listed animals whose pages were not saved
    mojo = next(i for i in items if i["source_id"] == "36636186")
    assert mojo["age_group"] == "adult" and mojo["colors"] == ["brindle", "white"]
    assert "adoptionreview@gmail.com" not in mojo["description"]  # e-mail redacted from stored text


# ------------------------------------------------------------------------------------------------ petfinder


class ApiSite(MockSite):
    """MockSite plus what an OAuth API needs: POST (bodies recorded), a bearer token required on ``/v2/`` GETs
    (401 otherwise), and one-shot answers (``once(path, status, headers)``) such as a 429 with Retry-After or a 401
    for an expired token."""

    def __init__(self, token: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.token = token
        self.bodies: list[tuple[str, bytes]] = []
        self.once_rules: dict[str, list[tuple[int, dict[str, str]]]] = {}
        site = self
        base = self.server.RequestHandlerClass

        class Handler(base):  # type: ignore[misc, valid-type]
            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                site.bodies.append((self.path, self.rfile.read(n) if n else b""))
                site._handle(self)

            def do_GET(self) -> None:
                if not site._intercept(self):
                    site._handle(self)

        self.server.RequestHandlerClass = Handler

    def once(self, path: str, status: int, headers: dict[str, str] | None = None) -> None:
        self.once_rules.setdefault(path, []).append((status, headers or {}))

    def _intercept(self, h: Any) -> bool:
        with self._lock:
            rule = self.once_rules.get(h.path, [None]).pop(0) if self.once_rules.get(h.path) else None
        authorized = h.headers.get("Authorization") == f"Bearer {self.token}"
        if rule is None and (authorized or not h.path.startswith("/v2/")):
            return False
        status, headers = rule if rule is not None else (401, {})
        with self._lock:
            self.requests.append(Logged(h.command, h.path, dict(h.headers.items()), time.time()))
        self._send(h, status, b'{"status": %d}' % status, "application/json", headers=headers)
        return True


@pytest.mark.slow
def test_petfinder_crawl_token_paging_429_and_shelters(tmp_path: Path, shared_dir: Path) -> None:
    bodies = fixtures(shared_dir) / "petfinder_api" / "bodies"
    index = json.loads((bodies / "INDEX.json").read_text())
    served = {"animals": [], "organizations": []}
    with ApiSite(token="TEST-TOKEN") as site:
        site.page("/v2/oauth2/token", '{"token_type":"Bearer","expires_in":3600,"access_token":"TEST-TOKEN"}',
                  content_type="application/json")  # fmt: skip
        for entry in index:
            kind = entry["file"].split("_")[0]
            if kind not in served or entry["status"] != 200 or "limit=50" not in entry["uri"]:
                continue
            parts = urlsplit(entry["uri"])
            path = parts.path.rstrip("/") + "?" + parts.query
            if any(p == path for p, _ in served[kind]):
                continue  # the same page recorded twice: serve the first
            body = (bodies / entry["file"]).read_text(encoding="utf-8")
            served[kind].append((path, body))
        animals = [a for _, b in served["animals"] for a in json.loads(b)["animals"]]
        # join check: give one recorded organisation the id of the first animal's organisation
        joined_org = animals[0]["organization_id"]
        path0, body0 = served["organizations"][-1]
        orgs = json.loads(body0)
        orgs["organizations"][0]["id"] = joined_org
        served["organizations"][-1] = (path0, json.dumps(orgs))
        for kind in served:
            for path, body in served[kind]:
                site.page(path, body, content_type="application/json")
        site.once("/v2/animals?limit=50&page=2", 429, {"Retry-After": "1"})
        site.once("/v2/animals?limit=50&page=3", 401)  # the token "expired"
        result = run_spider(
            tmp_path,
            "petfinder",
            base_url=site.url,
            start_paths="/v2/organizations?limit=50&page=1,/v2/animals?limit=50&page=1",
            crawl={"petfinder_key": "test-key", "petfinder_secret": SECRET},
        )
        log = list(site.requests)
        token_posts = [b for p, b in site.bodies if p == "/v2/oauth2/token"]

    items = {i["source_id"]: i for i in result["items"]}
    assert set(items) == {str(a["id"]) for a in animals}
    for item in items.values():
        assert item["kind"] == "adoptable" and item["species"] in ("dog", "cat")
        assert item["shelter_id"]
    assert items[str(animals[0]["id"])]["shelter_name"] == orgs["organizations"][0]["name"]
    assert result["stats"]["homeward/petfinder/shelters"] == 150
    # OAuth: the secret went in the token request's body (twice: start, then after the 401) and nowhere in the log
    assert len(token_posts) == 2 and all(SECRET.encode() in b and b"client_credentials" in b for b in token_posts)
    assert result["stats"]["homeward/petfinder/tokens"] == 2
    assert SECRET not in result["log"]
    # organisations first, then animals; the 429 was retried after its Retry-After, not before
    paths = [r.path for r in log if r.path.startswith("/v2/") and r.method == "GET"]
    assert max(i for i, p in enumerate(paths) if p.startswith("/v2/organizations")) < min(
        i for i, p in enumerate(paths) if p.startswith("/v2/animals")
    )
    throttled = [r.at for r in log if r.path == "/v2/animals?limit=50&page=2"]
    assert len(throttled) == 2 and throttled[1] - throttled[0] >= 0.95
    assert result["stats"]["homeward/petfinder/throttled"] == 1
    assert len([r for r in log if r.path == "/v2/animals?limit=50&page=3"]) == 2
    # the recordings end at page 3: page 4 of each list is a 404, recorded, and the crawl went on
    assert result["errors"] == {"http_404": 2}


@pytest.mark.slow
def test_petfinder_without_credentials_fetches_nothing(tmp_path: Path) -> None:
    with ApiSite(token="TEST-TOKEN") as site:
        result = run_spider(tmp_path, "petfinder", base_url=site.url, crawl={"petfinder_key": None})
        assert not [r for r in site.requests if r.path.startswith("/v2/")]
    assert result["errors"] == {"missing_credentials": 1} and result["items"] == []


def test_retry_after_values() -> None:
    from email.utils import formatdate

    from crawlers.spiders.petfinder import retry_after_seconds

    assert retry_after_seconds(b"3") == 3
    assert retry_after_seconds("1000", cap=120) == 120
    assert 8 <= retry_after_seconds(formatdate(time.time() + 10, usegmt=True)) <= 10
    assert retry_after_seconds(None, default=5) == 5
    assert retry_after_seconds("soon", default=2) == 2


# ------------------------------------------------------------------------------------------------ petharbor


@pytest.mark.slow
def test_petharbor_full_crawl_into_lancedb(tmp_path: Path, shared_dir: Path) -> None:
    """``python -m crawlers.run --source petharbor --base-url MIRROR``: the full pipeline, photo included."""
    from engine.config import Settings
    from engine.storage import LanceStore

    root = fixtures(shared_dir) / "petharbor"
    start = PetharborSpider.start_paths[0]
    results = """<html><body><table class="ResultsTable">
        <tr><td><a href="pet.asp?uaid=ASTN.A726220">A726220</a></td></tr>
        <tr><td><a href="pet.asp?uaid=ASTN.A999999">A999999</a></td></tr></table></body></html>"""
    with MockSite() as site:
        site.page(start, results)
        site.page("/pet.asp?uaid=ASTN.A726220", (root / "petharbor.html").read_bytes(), content_type="text/html")
        site.page("/get_image.asp?RES=Detail&ID=A726220&LOCATION=ASTN", (root / "image.jpg").read_bytes(),
                  content_type="image/jpeg")  # fmt: skip
        settings_file = tmp_path / "settings.json"
        settings_file.write_text(json.dumps(hw_overrides(tmp_path)))
        proc = subprocess.run(
            [sys.executable, "-m", "crawlers.run", "--source", "petharbor", "--base-url", site.url,
             "--settings-json", str(settings_file)],
            cwd=REPO, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == "ok" and result["items"] == 1 and result["new"] == 1
    assert result["errors_by_reason"].get("http_404") == 1
    hw = Settings().with_overrides(hw_overrides(tmp_path), "test")
    (row,) = LanceStore(hw.lance).read("listings").to_pylist()
    assert (row["source"], row["source_id"], row["kind"], row["species"], row["sex"]) == (
        "petharbor", "ASTN.A726220", "shelter", "cat", "female"
    )  # fmt: skip
    assert row["colors"] == ["brown", "tabby"] and str(row["event_date"]) == "2016-05-08"
    assert row["shelter_id"] == "ASTN" and row["age_group"] == "young"
    assert row["contact_hash"] and "(512)" not in (row["description"] or "")
    (photo,) = LanceStore(hw.lance).read("photos").to_pylist()
    assert photo["status"] == "ok" and photo["photo_id"] == row["photo_ids"][0]


# ------------------------------------------------------------------------------------ operator single page


@pytest.mark.slow
def test_operator_start_urls_recheck_one_card(tmp_path: Path, shared_dir: Path) -> None:
    """``scrapy crawl pet911 -a start_urls=URL``: one card page on any host, parsed, nothing else fetched."""
    text = (fixtures(shared_dir) / "pet911/data/20240114/petCard_rl518787.html.dump").read_bytes()
    with MockSite() as site:
        site.page("/anything/rl518787", text, content_type="text/html; charset=utf-8")
        result = run_spider(tmp_path, "pet911", start_urls=f"{site.url}/anything/rl518787")
        assert [p for p in site.paths() if p != "/robots.txt"] == ["/anything/rl518787"]
    (item,) = result["items"]
    assert item["source_id"] == "rl518787" and item["species"] == "cat" and len(item["photo_urls"]) == 7


def test_spiders_are_registered_with_their_sources() -> None:
    from scrapy.settings import Settings as ScrapySettings
    from scrapy.spiderloader import SpiderLoader

    loader = SpiderLoader.from_settings(ScrapySettings({"SPIDER_MODULES": ["crawlers.spiders"]}))
    names = set(loader.list())
    assert {"pet911", "poiskzoo", "petfinder", "petango", "petharbor"} <= names
    for name, parser in (("pet911", pet911), ("poiskzoo", poiskzoo), ("petango", petango), ("petfinder", petfinder)):
        spider = loader.load(name)
        assert spider.default_base_url.startswith("https://")
        assert parser.__name__.endswith(name)
