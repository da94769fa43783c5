"""LanceDB tables and the photo store on S3-compatible object storage, by configuration only.

A real S3 server (moto's standalone server, a separate process speaking the S3 REST protocol over HTTP) runs on
127.0.0.1; Homeward is pointed at it with ``lance_uri``/``photo_store`` as ``s3://`` URIs plus ``storage_options``
and nothing else. The end-to-end test runs the normal crawl → enrich → match code paths (Scrapy subprocess, Ray
Data workers, the match job) and then checks the objects in the bucket, not just the job summaries.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.config import Settings, load_settings
from engine.storage import LanceStore, PhotoStore, RunsDB, fsspec_options, open_stores, upsert_listings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3-compatible server (``python -m moto.server``) on a free local port, for this module."""
    pytest.importorskip("moto.server", reason="moto[server] is a dev dependency (pip install -e '.[dev]')")
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).read()
                break
            except urllib.error.HTTPError:
                break  # the server answers (with an S3 error document): it is up
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto server did not start: {log.read_text(errors='replace')[-800:]}")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _bucket(endpoint: str) -> str:
    name = f"homeward-{uuid.uuid4().hex[:10]}"
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{name}", method="PUT"), timeout=10).read()
    return name


def _options(endpoint: str) -> dict[str, str]:
    return {
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "aws_endpoint": endpoint,
        "aws_region": "us-east-1",
        "allow_http": "true",
    }


def _s3_settings(tmp_path: Path, endpoint: str, bucket: str) -> Settings:
    """Local data dir (DuckDB, crawl logs), LanceDB and photos in the bucket: configuration only."""
    return load_settings(
        overrides={
            "data_dir": str(tmp_path / "data"),
            "lance_uri": f"s3://{bucket}/lance",
            "photo_store": f"s3://{bucket}/photos",
            "storage_options": _options(endpoint),
            "ray": {"num_cpus": 2, "object_store_mb": 512},
        },
        environ={},
    )


def _objects(settings: Settings, prefix: str) -> list[str]:
    fs = PhotoStore(f"s3://{prefix}", settings.storage_options).fs
    fs.invalidate_cache()
    return fs.find(prefix)


def test_storage_options_come_from_config_file_and_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "homeward.yaml"
    cfg.write_text("lance_uri: s3://b/lance\nstorage_options: {aws_region: eu-west-1, allow_http: 'true'}\n")
    s = load_settings(cfg, environ={"HOMEWARD_STORAGE_OPTIONS__AWS_ENDPOINT": "http://minio:9000"})
    # the environment layer replaces the mapping as a whole (like every other key), it does not merge into it
    assert s.storage_options == {"aws_endpoint": "http://minio:9000"}
    s = load_settings(cfg, environ={})
    assert s.storage_options == {"aws_region": "eu-west-1", "allow_http": "true"}
    assert Settings().storage_options == {}
    # the photo store (s3fs) gets the same credentials, endpoint and region; local paths get nothing
    opts = fsspec_options("s3://b/photos", {**_options("http://h:1"), "allow_http": "true"})
    assert opts == {"key": "testing", "secret": "testing", "endpoint_url": "http://h:1",
                    "client_kwargs": {"region_name": "us-east-1"}}  # fmt: skip
    assert fsspec_options("/srv/photos", _options("http://h:1")) == {}


def test_lance_tables_and_photos_live_in_the_bucket(tmp_path: Path, s3_endpoint: str) -> None:
    from datetime import UTC, datetime

    from engine import ids, schema

    bucket = _bucket(s3_endpoint)
    settings = _s3_settings(tmp_path, s3_endpoint, bucket)
    lance, runs, photos = open_stores(settings)
    rows = []
    for i in range(5):
        row = schema.empty_row(schema.LISTINGS)
        row.update(listing_id=ids.listing_id("t", str(i)), source="t", source_id=str(i), kind="lost",
                   species="dog", scraped_at=datetime(2026, 1, 1, tzinfo=UTC), photo_ids=[])  # fmt: skip
        rows.append(row)
    assert upsert_listings(lance, rows) == 5
    v1 = lance.version("listings")
    rows[0]["name"] = "Rex"
    upsert_listings(lance, rows[:1])
    assert lance.count("listings") == 5 and lance.version("listings") > v1
    # old versions stay readable (what the match job pins)
    assert "Rex" not in (lance.read("listings", version=v1).column("name").to_pylist())
    # a fresh connection (another process would do the same) sees the data: it is in the bucket, not in memory
    again = LanceStore(settings.lance, settings.storage_options)
    assert again.read("listings", where="name = 'Rex'").num_rows == 1
    pid, uri = photos.put(b"\xff\xd8 not really a jpeg", "jpg")
    assert uri.startswith(f"s3://{bucket}/photos/") and photos.get(uri) == b"\xff\xd8 not really a jpeg"
    assert photos.put(b"\xff\xd8 not really a jpeg", "jpg") == (pid, uri)  # content-addressed: stored once
    assert any(k.startswith(f"{bucket}/lance/listings.lance/") for k in _objects(settings, f"{bucket}/lance"))
    assert _objects(settings, f"{bucket}/photos") == [uri.removeprefix("s3://")]
    # nothing of LanceDB or the photos landed on local disk
    data_dir = Path(settings.data_dir)
    assert not (data_dir / "lance").exists() and not (data_dir / "photos").exists()
    assert isinstance(runs, RunsDB) and Path(settings.duckdb).is_file()  # DuckDB stays a local file
    # a bucket that does not exist fails loudly instead of writing elsewhere
    with pytest.raises(Exception, match=r"(?i)bucket|404|not found|nosuchbucket"):
        LanceStore(f"s3://no-such-bucket-{uuid.uuid4().hex[:6]}/lance", settings.storage_options).db.create_table(
            "x", data=[{"a": 1}]
        )


@pytest.mark.slow
def test_crawl_enrich_match_on_object_storage(tmp_path: Path, s3_endpoint: str, ray_local: None) -> None:
    """The demo's whole pipeline with LanceDB and the photo store in the bucket (tiny models, synthetic photos)."""
    from ray_jobs.demo import demo

    bucket = _bucket(s3_endpoint)
    settings = _s3_settings(tmp_path, s3_endpoint, bucket)
    summary = demo(settings, reunions=3, distractors=3, shared_dir=str(tmp_path / "no-shared"))

    posts = summary["crawl"]["items"]
    assert summary["crawl"]["status"] == "ok" and posts == 2 * 3 + 3
    assert summary["enrich"]["status"] == "ok" and summary["enrich"]["failed"] == 0
    assert summary["match"]["status"] == "published" and summary["matches"] > 0
    lance = LanceStore(settings.lance, settings.storage_options)
    assert lance.count("listings") == posts
    photos = lance.read("photos").to_pylist()
    assert len(photos) == posts and {p["status"] for p in photos} == {"ok"}
    assert {p["enrich_status"] for p in photos} <= {"ok", "no_animal"}
    assert all(p["uri"].startswith(f"s3://{bucket}/photos/") for p in photos)
    assert lance.count("detections") >= posts
    # the objects really are in the bucket: one per distinct photo, and the three Lance tables
    keys = _objects(settings, bucket)
    stored = {k for k in keys if k.startswith(f"{bucket}/photos/")}
    assert stored == {p["uri"].removeprefix("s3://") for p in photos}
    for table in ("listings", "photos", "detections"):
        assert any(k.startswith(f"{bucket}/lance/{table}.lance/_versions/") for k in keys), table
    # the match run pinned the table versions it read, and those versions exist in the bucket
    (versions,) = RunsDB(settings.duckdb).query("SELECT lance_versions FROM match_runs WHERE status = 'published'")[0]
    import json

    for table, version in json.loads(versions).items():
        assert version is not None and lance.open(table, version=version).count_rows() > 0
    data_dir = Path(settings.data_dir)
    assert not (data_dir / "lance").exists() and not (data_dir / "photos").exists()
