"""The address guard (crawlers/addresses.py, crawlers.middlewares.AddressGuard): which hosts a crawl may reach."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from scrapy import Request
from scrapy.settings import Settings
from scrapy.statscollectors import MemoryStatsCollector
from twisted.internet.error import DNSLookupError

from crawlers.addresses import Allowance, blocked_because, host_port, literal_verdict, normalize_host, parse_ip
from crawlers.middlewares import AddressGuard, BlockedAddress
from crawlers.spiders.base import failure_reason

# host as written in a URL -> why it is refused (None: a public address, allowed)
LITERALS = {
    "127.0.0.1": "loopback",
    "127.255.0.9": "loopback",
    "2130706433": "loopback",  # decimal
    "0x7f000001": "loopback",  # hex
    "0x7f.1": "loopback",
    "0177.0.0.1": "loopback",  # octal
    "127.1": "loopback",
    "0": "unspecified",
    "0.0.0.0": "unspecified",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "169.254.169.254": "link-local",  # cloud metadata
    "100.64.0.1": "not globally routable",  # carrier-grade NAT
    "224.0.0.1": "multicast",
    "[::1]": "loopback",
    "[::]": "unspecified",
    "[::ffff:127.0.0.1]": "loopback",  # IPv4-mapped
    "[::ffff:7f00:1]": "loopback",
    "[::ffff:169.254.169.254]": "link-local",
    "[::127.0.0.1]": "loopback",  # IPv4-compatible
    "[64:ff9b::a00:1]": "private",  # NAT64 of 10.0.0.1
    "[2002:c0a8:101::1]": "private",  # 6to4 of 192.168.1.1
    "[fe80::1%25eth0]": "link-local",
    "[fd12:3456::1]": "private",
    "[ff02::1]": "multicast",
    "127.0.0.1.": "loopback",  # trailing dot
    "localhost": "localhost name",
    "LOCALHOST.": "localhost name",
    "admin.localhost": "localhost name",
    "8.8.8.8": None,
    "93.184.216.34": None,
    "[2606:4700:4700::1111]": None,
    "[::ffff:8.8.8.8]": None,
}


@pytest.mark.parametrize(("host", "why"), LITERALS.items())
def test_literal_hosts(host: str, why: str | None) -> None:
    name, _ = host_port(f"http://{host}/x")
    assert literal_verdict(name) == (True, why)


def test_names_need_resolution_and_spellings_normalise() -> None:
    assert literal_verdict("pet911.ru") == (False, None)
    assert literal_verdict("127.0.0.1.nip.io") == (False, None)  # a name (its DNS answer is checked)
    assert literal_verdict("08.0.0.1") == (False, None)  # not inet_aton syntax: the resolver gets to say
    assert normalize_host("0x7F.0.0.1") == "127.0.0.1" and normalize_host("[::FFFF:7F00:1]") == "::ffff:7f00:1"
    assert host_port("http://evil.example@0x7f.1:8080/") == ("127.0.0.1", 8080)  # userinfo is not the host
    assert host_port("https://Example.ORG./a") == ("example.org", 443)
    assert parse_ip("example.org") is None
    assert blocked_because(parse_ip("192.0.2.7")) is not None  # documentation range
    with pytest.raises(ValueError):
        host_port("http:///no-host")


def test_allowance_entries() -> None:
    allow = Allowance.parse(["mirror.lan", "127.0.0.1:8000", "[::1]:9000", "http://10.0.0.5", " "])
    assert allow.allows("mirror.lan", 1234)
    assert allow.allows("127.0.0.1", 8000) and not allow.allows("127.0.0.1", 8265)
    assert allow.allows("::1", 9000)
    assert allow.allows("10.0.0.5", 80) and not allow.allows("10.0.0.5", 443)
    assert Allowance.parse(["0x7f.1:8000"]).allows("127.0.0.1", 8000)
    for bad in ("127.0.0.1:notaport", "host/path", "user@host"):
        with pytest.raises(ValueError, match="allowed host"):
            Allowance.parse([bad])


class _Guard(AddressGuard):
    """The guard with a fixed DNS answer per name (the real lookup goes through the reactor's resolver)."""

    answers: dict[str, list[str]]

    async def _resolve(self, host: str, port: int) -> list[str]:
        return self.answers.get(host, [])


def guard(allow: list[str], answers: dict[str, list[str]] | None = None, **spider: Any) -> _Guard:
    crawler = SimpleNamespace(stats=MemoryStatsCollector(SimpleNamespace(settings=Settings())))
    g = _Guard(crawler, Allowance.parse(allow))
    g.answers = answers or {}
    g.opened(SimpleNamespace(**spider))
    return g


def check(g: AddressGuard, url: str) -> None:
    asyncio.run(g.process_request(Request(url)))


def test_guard_allows_what_the_operator_named_and_nothing_else() -> None:
    g = guard(["lan-cdn.example:8443"], base_url="http://127.0.0.1:8000")
    check(g, "http://127.0.0.1:8000/catalog")  # the source's own mirror
    check(g, "https://lan-cdn.example:8443/p.jpg")  # crawl.allow_hosts
    check(g, "http://93.184.216.34/")  # public
    for url in ("http://127.0.0.1:8265/", "http://localhost:8000/", "http://2130706433:8265/", "http://[::1]:8000/"):
        with pytest.raises(BlockedAddress) as info:
            check(g, url)
        assert failure_reason(info.value) == "blocked_address"
    assert g.crawler.stats.get_value("homeward/filtered/address") == 4

    op = guard([], base_url="https://pet911.ru", operator_urls=True, start_urls=["http://127.0.0.1:9000/card/1"])
    check(op, "http://127.0.0.1:9000/card/2")
    with pytest.raises(BlockedAddress):
        check(op, "http://127.0.0.1:9001/card/2")


def test_guard_checks_every_resolved_address() -> None:
    answers = {
        "good.example": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"],
        "internal.example": ["10.0.0.7"],
        "rebind.example": ["93.184.216.34", "127.0.0.1"],  # one bad address is enough: a connection may take it
        "mapped.example": ["::ffff:169.254.169.254"],
    }
    g = guard([], answers)
    check(g, "http://good.example/")
    for name in ("internal.example", "rebind.example", "mapped.example"):
        with pytest.raises(BlockedAddress, match=name):
            check(g, f"http://{name}/")
    with pytest.raises(DNSLookupError):  # no answer now: refused, not left for the connection to look up again
        check(g, "http://nxdomain.example/")
