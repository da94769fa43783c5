"""``homeward bench crawl``: crawl throughput through Homeward's full item pipeline, as a ratio to ``scrapy bench``.

What runs, in one invocation on one machine:

1. a local mirror (a real HTTP server on 127.0.0.1) of a generated lost-and-found site: ``cards`` JSON-LD card
   pages behind catalog pages of ``per_page`` links, each card with one real JPEG;
2. **Homeward**: ``crawlers/run.py`` crawls it with the configurable spider through the whole pipeline —
   validate, normalise, redact, deduplicate, photo download + check + EXIF strip + content-addressed store,
   LanceDB bulk writes — into a throw-away data dir;
3. **reference**: ``scrapy bench`` (Scrapy's own local link-following benchmark: no parsing, no pipeline) for
   ``bench_seconds``.

Both get the same concurrency (``concurrency``; politeness delays off — this measures the machinery, not the
manners). Figures: pages/s and items/s of the Homeward crawl (card and catalog pages, excluding photo downloads),
requests/s including photos, ``scrapy bench`` pages/s, and ``ratio_pages`` = Homeward pages/s ÷ ``scrapy bench``
pages/s. A ratio well below 1 is expected (every card costs a second request for its photo, a JSON-LD parse,
Pillow decoding and a LanceDB write); a drop between commits is what to watch.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from engine.config import Settings

REPO = Path(__file__).resolve().parents[2]


def build_site(root: Path, cards: int, per_page: int, seed: int = 3) -> None:
    """Write the benchmark site under ``root``."""
    from PIL import Image

    rng = random.Random(seed)
    for sub in ("pets", "catalog", "photos"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "robots.txt").write_text("User-agent: *\nAllow: /\n")
    ids = [f"{'l' if i % 2 else 'f'}{i:06d}" for i in range(cards)]
    for i, sid in enumerate(ids):
        buf = io.BytesIO()
        colour = tuple(rng.randrange(256) for _ in range(3))
        Image.new("RGB", (320, 240), colour).save(buf, "JPEG", quality=85)
        (root / "photos" / f"{sid}.jpg").write_bytes(buf.getvalue())
        post = {
            "@context": "https://schema.org",
            "@type": "homeward:Listing",
            "identifier": sid,
            "kind": "lost" if sid[0] == "l" else "found",
            "name": f"Pet {i}",
            "species": rng.choice(["dog", "cat"]),
            "breed": rng.choice(["mixed", "husky", "beagle", "siamese"]),
            "color": [rng.choice(["black", "white", "brown", "grey"])],
            "gender": rng.choice(["male", "female"]),
            "description": f"Seen near the market on day {i % 30}; very friendly. Phone +1 (206) 555-{i % 10000:04d}.",
            "eventDate": f"2026-10-{i % 28 + 1:02d}",
            "address": {"addressLocality": "Springfield"},
            "geo": {"latitude": 47.6 + rng.uniform(-0.1, 0.1), "longitude": -122.3 + rng.uniform(-0.1, 0.1)},
            "image": [f"/photos/{sid}.jpg"],
        }
        ld = json.dumps(post).replace("</", "<\\/")
        (root / "pets" / f"{sid}.html").write_text(
            f'<html><head><script type="application/ld+json">{ld}</script></head><body><h1>{post["name"]}</h1>'
            + "<p>"
            + "filler text " * 200
            + "</p></body></html>"
        )
    pages = max(1, -(-cards // per_page))
    for n in range(1, pages + 1):
        chunk = ids[(n - 1) * per_page : n * per_page]
        links = "".join(f'<li><a class="card" href="/pets/{s}.html">{s}</a></li>' for s in chunk)
        nxt = f'<link rel="next" href="/catalog/{n + 1}.html">' if n < pages else ""
        (root / "catalog" / f"{n}.html").write_text(f"<html><head>{nxt}</head><body><ul>{links}</ul></body></html>")


_STAT = re.compile(r"'(response_received_count|elapsed_time_seconds|item_scraped_count)':\s*([0-9.]+)")


def scrapy_bench(seconds: float, concurrency: int) -> dict[str, float]:
    """Run ``scrapy bench`` for ``seconds`` and read pages/s from its final stats."""
    workdir = tempfile.mkdtemp(prefix="hw-scrapy-bench-")
    cmd = [sys.executable, "-m", "scrapy", "bench", "-s", f"CLOSESPIDER_TIMEOUT={seconds:g}"]
    for key, value in {
        "LOG_LEVEL": "INFO",
        "REMOTE_CONTROL_ENABLED": "False",
        "TELNETCONSOLE_ENABLED": "False",
        "CONCURRENT_REQUESTS": str(concurrency),
        "CONCURRENT_REQUESTS_PER_DOMAIN": str(concurrency),
    }.items():
        cmd += ["-s", f"{key}={value}"]
    env = {k: v for k, v in os.environ.items() if k != "SCRAPY_SETTINGS_MODULE"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, env=env, timeout=seconds + 120)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    stats = {m.group(1): float(m.group(2)) for m in _STAT.finditer(proc.stderr + proc.stdout)}
    pages = stats.get("response_received_count", 0.0)
    elapsed = stats.get("elapsed_time_seconds", 0.0)
    if proc.returncode != 0 or not pages or not elapsed:
        raise RuntimeError(f"scrapy bench gave no figures (exit {proc.returncode}): {proc.stderr[-800:]}")
    return {"pages": pages, "seconds": elapsed, "pages_per_s": pages / elapsed}


def bench_crawl(
    settings: Settings,
    *,
    cards: int = 400,
    per_page: int = 20,
    concurrency: int = 16,
    bench_seconds: float = 10.0,
) -> dict[str, Any]:
    """Crawl a local mirror through the full pipeline and compare with `scrapy bench` (JSON last line).

    Args:
        cards: card pages (one photo each) on the generated mirror.
        per_page: card links per catalog page.
        concurrency: concurrent requests for both crawls (politeness delays are off for the measurement).
        bench_seconds: how long `scrapy bench` runs.
    """
    from crawlers.mirror import Mirror

    work = Path(tempfile.mkdtemp(prefix="hw-bench-crawl-"))
    try:
        site = work / "site"
        build_site(site, cards, per_page)
        with Mirror(site) as mirror:
            sources = work / "sources.yaml"
            source = {"name": "bench", "spider": "configurable", "base_url": mirror.url,
                      "start_paths": ["/catalog/1.html"], "concurrency_per_domain": concurrency}  # fmt: skip
            sources.write_text(yaml.safe_dump({"sources": [source]}))
            hw = settings.with_overrides(
                {
                    "data_dir": str(work / "data"),
                    "lance_uri": None,
                    "duckdb_path": None,
                    "photo_store": None,
                    "crawl": {"sources_file": str(sources), "download_delay_s": 0, "autothrottle": False},
                },
                "bench crawl",
            )
            settings_file = work / "settings.json"
            settings_file.write_text(json.dumps(hw.to_dict(), default=str))
            cmd = [sys.executable, "-m", "crawlers.run", "--source", "bench", "--settings-json", str(settings_file)]
            cmd += ["--set", f"CONCURRENT_REQUESTS={concurrency}", "--set", 'LOG_LEVEL="WARNING"']
            started = time.monotonic()
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=3600)
            wall = time.monotonic() - started
            result = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
            if result.get("status") != "ok":
                raise RuntimeError(f"benchmark crawl failed: {result or proc.stderr[-800:]}")
        reference = scrapy_bench(bench_seconds, concurrency)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = float(result["duration_s"])
    pages_per_s = result["pages"] / seconds
    return {
        "cards": cards,
        "concurrency": concurrency,
        "pages": result["pages"],
        "items": result["items"],
        "photos": result["photos"],
        "requests": result["requests"],
        "errors": result["errors"],
        "seconds": round(seconds, 3),
        "process_seconds": round(wall, 3),
        "pages_per_s": round(pages_per_s, 2),
        "items_per_s": round(result["items"] / seconds, 2),
        "requests_per_s": round(result["requests"] / seconds, 2),
        "scrapy_bench_pages_per_s": round(reference["pages_per_s"], 2),
        "scrapy_bench_pages": int(reference["pages"]),
        "ratio_pages": round(pages_per_s / reference["pages_per_s"], 4),
        "ratio_requests": round((result["requests"] / seconds) / reference["pages_per_s"], 4),
    }
