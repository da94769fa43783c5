"""The ``homeward`` command as a user meets it: help, and one clear line for every bad configuration."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ray_jobs.cli import VERBS


def _homeward(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ray_jobs.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def test_help_lists_every_verb_with_its_purpose() -> None:
    out = _homeward("--help")
    assert out.returncode == 0
    flat = " ".join(out.stdout.split())
    for verb, entry in VERBS.items():
        assert verb in flat
        if isinstance(entry, tuple):
            assert " ".join(entry[1].split()) in flat


def test_only_the_verb_that_runs_is_imported() -> None:
    # `bench match` must not import the `match` job (and its DuckDB/Lance stack): a GPU box may have torch only.
    code = (
        "import sys, ray_jobs.cli as c; c.build_parser(['--data-dir', 'x', 'bench', 'match']); "
        "print(sorted(m for m in sys.modules if m in ('ray_jobs.bench.match', 'ray_jobs.match', 'duckdb')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['ray_jobs.bench.match']"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--set", "match.topk=3", "demo"], {}, "unknown config key 'match.topk'"),
        (["--set", "match.top_k=lots", "demo"], {}, "'match.top_k' expects int"),
        (["demo"], {"HOMEWARD_RAY__NUM_CPUS": "two"}, "'ray.num_cpus' expects int"),
        (["--config", "/nonexistent/homeward.yaml", "demo"], {}, "cannot read config file"),
    ],
)
def test_bad_configuration_is_one_clear_line(args: list[str], env: dict[str, str], message: str) -> None:
    out = _homeward(*args, env=env)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr


def test_unwritable_data_dir_writes_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    out = _homeward("--data-dir", str(blocker / "data"), "demo")
    assert out.returncode == 2
    assert "not writable" in out.stderr.strip().splitlines()[-1]
    assert blocker.read_text() == ""


def test_unreachable_ray_address(tmp_path: Path) -> None:
    out = _homeward("--data-dir", str(tmp_path / "d"), "--address", "127.0.0.1:1", "demo")
    assert out.returncode == 2
    assert "Ray address '127.0.0.1:1' is unreachable" in out.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "d" / "homeward.duckdb").exists(), "nothing may be half-written"
