"""The ``homeward`` command as a user meets it: help, and one clear line for every bad configuration."""

from __future__ import annotations

import importlib.metadata
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ray_jobs import cli
from ray_jobs.cli import VERBS
from ray_jobs.schedule import human_minutes


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


def _leaves(table: dict = VERBS, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    out = []
    for verb, entry in table.items():
        if isinstance(entry, dict):
            out += _leaves(entry, (*prefix, verb))
        else:
            out.append(((*prefix, verb), entry[0]))
    return out


def test_help_of_every_verb_imports_no_job() -> None:
    # `--help` reads the verbs' signatures from source: no torch, Ray, Scrapy, LanceDB or DuckDB until a verb runs.
    code = (
        "import sys, ray_jobs.cli as c\n"
        f"for words in {[w for w, _ in _leaves()]!r}: c.build_parser(['--data-dir', 'x', *words])\n"
        "heavy = ('torch', 'ray', 'scrapy', 'lancedb', 'duckdb', 'ray_jobs.match', 'ray_jobs.bench.match')\n"
        "print(sorted(m for m in sys.modules if m in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_flags_read_from_source_match_the_real_signatures() -> None:
    for _, target in _leaves():
        real = list(inspect.signature(cli._resolve(target)).parameters.values())[1:]
        params, doc = cli.verb_signature(target)
        assert [p.name for p in params] == [p.name for p in real], target
        for p, r in zip(params, real, strict=True):
            assert p.keyword_only == (r.kind is inspect.Parameter.KEYWORD_ONLY), (target, p.name)
            assert p.default == r.default or p.default is cli._NOT_LITERAL, (target, p.name)
        assert doc == inspect.getdoc(cli._resolve(target))


def _parse(*argv: str):
    return cli.build_parser(argv).parse_args(argv)


def test_repeated_list_options_accumulate() -> None:
    assert _parse("crawl", "--source", "pet911", "--source", "poiskzoo").source == ["pet911", "poiskzoo"]
    assert _parse("schedule", "--source", "a", "b", "--source", "c").source == ["a", "b", "c"]
    assert _parse("bench", "match", "--n", "10", "--n", "20").n == [10, 20]
    assert "source" not in _parse("crawl")  # absent: the function's own default (every enabled source)


def test_required_options_are_marked_and_enforced() -> None:
    out = _homeward("search")
    assert out.returncode == 2 and "the following arguments are required: --photo" in out.stderr
    usage = " ".join(_homeward("search", "--help").stdout.split())
    assert " --photo PHOTO " in usage and "[--photo" not in usage
    assert _parse("export", "--parquet", "bi").parquet == "bi"


@pytest.mark.parametrize(
    ("verb", "present", "absent"),
    [
        (["schedule"], ["--once"], ["--no-once"]),
        (["report"], ["--all", "--email"], ["--no-all", "--no-email"]),
        (["enrich"], ["--no-retry-failed"], ["--retry-failed "]),
        (["bench", "enrich"], ["--no-pipeline"], ["--pipeline "]),
        (["match"], ["--use-ray", "--no-use-ray"], []),  # default None: both forms mean something
    ],
)
def test_boolean_flags_only_in_forms_that_mean_something(verb, present, absent) -> None:
    text = _homeward(*verb, "--help").stdout
    for flag in present:
        assert flag in text, (verb, flag)
    for flag in absent:
        assert flag not in text, (verb, flag)


def test_boolean_flags_set_the_value_and_absent_ones_keep_the_default() -> None:
    assert _parse("schedule", "--once").once is True and "once" not in _parse("schedule")
    assert _parse("enrich", "--no-retry-failed").retry_failed is False
    assert _parse("match", "--no-use-ray").use_ray is False


def test_version_comes_from_the_package_metadata() -> None:
    out = _homeward("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"homeward {importlib.metadata.version('homeward')}"


def test_bash_completion_completes_verbs_and_their_flags(tmp_path: Path) -> None:
    out = _homeward("completion", "bash")
    assert out.returncode == 0, out.stderr
    script = tmp_path / "homeward.bash"
    script.write_text(out.stdout)
    probe = (
        f'source {script}; COMP_WORDS=(homeward wat); COMP_CWORD=1; _shtab_homeward; echo "[${{COMPREPLY[*]}}]"; '
        'COMP_WORDS=(homeward watch add --rad); COMP_CWORD=3; _shtab_homeward; echo "[${COMPREPLY[*]}]"'
    )
    got = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=60)
    assert got.stdout.split() == ["[watch]", "[--radius-km]"], got.stderr
    assert _homeward("completion", "fish").returncode == 2  # argparse: not one of the choices


@pytest.mark.parametrize(
    ("minutes", "text"), [(None, "-"), (0.2, "0m"), (45, "45m"), (200, "3h 20m"), (28_799, "19d 23h"), (60, "1h 0m")]
)
def test_lag_reads_in_human_units(minutes, text) -> None:
    assert human_minutes(minutes) == text


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
