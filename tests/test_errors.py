"""Broken stores and failed runs end in one line and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from engine.storage import LanceStore, RunsDB, StorageError, upsert_listings
from ray_jobs.cli import main


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], list[str]]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out.strip().splitlines(), err.strip().splitlines()


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database\n" * 200)


def _bad_checksum(path: Path) -> None:
    RunsDB(str(path))
    data = bytearray(path.read_bytes())
    data[8192:] = os.urandom(len(data) - 8192)  # a real DuckDB file whose blocks no longer match their checksums
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("corrupt", [_garbage, _bad_checksum])
@pytest.mark.parametrize("verb", ["sources", "match", "report"])
def test_corrupt_duckdb_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], corrupt, verb: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    corrupt(data / "homeward.duckdb")
    code, _, err = _run(capsys, "--data-dir", str(data), verb)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("homeward: error: cannot read DuckDB file"), err
    assert "Move it aside" in err[0]


@pytest.mark.parametrize("verb", ["sources", "match"])
def test_data_dir_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], verb: str) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("x")
    code, _, err = _run(capsys, "--data-dir", str(blocker), verb)
    assert code == 2
    assert len(err) == 1 and str(blocker) in err[0] and "file" in err[0], err
    assert blocker.read_text() == "x"


def test_lance_location_that_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "lance"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="is a file"):
        LanceStore(str(blocker))


def test_corrupt_lance_table_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = LanceStore(str(tmp_path / "data" / "lance"))
    upsert_listings(store, [{"listing_id": "a", "source": "s", "source_id": "1"}])
    for manifest in (tmp_path / "data" / "lance" / "listings.lance" / "_versions").iterdir():
        manifest.write_bytes(b"garbage")
    with pytest.raises(StorageError, match="cannot read LanceDB table 'listings'"):
        LanceStore(store.uri).read("listings")
    code, _, err = _run(capsys, "--data-dir", str(tmp_path / "data"), "match")
    assert code == 2
    assert len(err) == 1 and "cannot read LanceDB table 'listings'" in err[0], err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_lance_folder(tmp_path: Path) -> None:
    root = tmp_path / "lance"
    upsert_listings(LanceStore(str(root)), [{"listing_id": "a", "source": "s", "source_id": "1"}])
    root.chmod(0)
    try:
        with pytest.raises(StorageError, match="LanceDB"):
            LanceStore(str(root)).read("listings")
    finally:
        root.chmod(0o700)


def test_failed_crawl_exits_1_naming_the_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sources = tmp_path / "sources.yaml"
    sources.write_text("sources:\n  - {name: broken, spider: no_such_spider, base_url: 'http://127.0.0.1:9'}\n")
    args = ["--data-dir", str(tmp_path / "data"), "--set", f"crawl.sources_file={sources}"]
    code, out, err = _run(capsys, *args, "crawl", "--source", "broken")
    assert code == 1
    assert err[-1] == "homeward: error: crawl of source 'broken' failed: KeyError: 'Spider not found: no_such_spider'"
    result = json.loads(out[-1])
    assert result["status"] == "failed" and result["runs"][0]["status"] == "failed"
    (status, message) = RunsDB(str(tmp_path / "data" / "homeward.duckdb")).query(
        "SELECT status, message FROM crawl_runs"
    )[0]
    assert status == "failed" and "no_such_spider" in message
