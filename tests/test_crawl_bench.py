"""`homeward bench crawl`: runs both crawls in one invocation and reports a ratio (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_crawl_prints_figures_as_json_last_line(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "ray_jobs.cli", "bench", "crawl", "--cards", "30", "--per-page", "10"]
    cmd += ["--bench-seconds", "3", "--data-dir", str(tmp_path / "data")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (figures["cards"], figures["pages"], figures["items"], figures["photos"]) == (30, 33, 30, 30)
    assert figures["errors"] == 0 and figures["requests"] >= 63  # pages + photos + robots.txt
    assert figures["pages_per_s"] > 0 and figures["items_per_s"] > 0 and figures["scrapy_bench_pages_per_s"] > 0
    assert figures["ratio_pages"] == pytest.approx(
        figures["pages_per_s"] / figures["scrapy_bench_pages_per_s"], rel=0.01
    )
    assert not (tmp_path / "data" / "lance").exists()  # the benchmark crawls into its own throw-away data dir
