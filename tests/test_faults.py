"""Faults, each with a test: a Ray worker killed during enrich, readers during match publications, a full disk
(DuckDB publication and LanceDB write), an unwritable data dir (crawl, enrich, match).

The crawl fault of the scale-out issue — a crawl process killed and restarted ends with the same rows as an
uninterrupted crawl — is proved by ``tests/test_crawl_incremental.py::
test_killed_crawl_resumes_to_the_rows_of_an_uninterrupted_one`` (SIGKILL mid-crawl, resume, compare every listing
and photo row with a clean crawl); it is not repeated here.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from PIL import Image

from engine import ids, schema
from engine.config import Settings
from engine.models import profile
from engine.models.factory import embedder_id
from engine.storage import LanceStore, RunsDB, open_stores, upsert_listings, upsert_photos
from ray_jobs import match as match_job

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DIM, TEXT_DIM = 32, 8


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOMEWARD_", "RAY_"))}
    # progress lines every half second: the killed-worker test waits for a partly finished enrich in them
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1", HW_PROGRESS_EVERY_S="0.5")
    return env


# --------------------------------------------------------------------------------------------- synthetic matches
def _world(settings: Settings, n_lost: int, n_found: int, seed: int = 0, tag: str = "") -> None:
    """Lost and found listings around one city with one detection each (random unit vectors tagged with the
    configured profile's embedder, as enrich would write them: `homeward match` in a subprocess selects them too)."""
    rng = np.random.default_rng(seed)
    embed_model = embedder_id(profile(settings)["embedder"], settings)
    listings, dets = [], []
    base = dt.date(2026, 5, 1)
    for i in range(n_lost + n_found):
        kind = "lost" if i < n_lost else "found"
        sid = f"{kind}-{tag}{i}"
        lid = ids.listing_id("faults", sid)
        listings.append(dict(listing_id=lid, source="faults", source_id=sid, kind=kind, status="active",
                             species="dog", lat=47.6 + rng.normal(0, 0.03), lon=-122.3 + rng.normal(0, 0.03),
                             event_date=base + dt.timedelta(days=int(i % 5) + (2 if kind == "found" else 0)),
                             photo_ids=[f"p-{sid}"]))  # fmt: skip
        v = rng.normal(size=DIM)
        t = rng.normal(size=TEXT_DIM)
        dets.append(dict(detection_id=f"d-{sid}", photo_id=f"p-{sid}", listing_id=lid, species="dog",
                         confidence=0.9, embedding=(v / np.linalg.norm(v)).astype(np.float32).tolist(),
                         embed_model=embed_model, text_embedding=(t / np.linalg.norm(t)).tolist(),
                         text_model="faults-text/1", status="ok"))  # fmt: skip
    store = LanceStore(settings.lance)
    upsert_listings(store, listings)
    store.upsert("detections", dets, key="detection_id", table_schema=schema.detections_schema(DIM, TEXT_DIM))


READER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from engine.storage import RunsDB
    db, out, stop = RunsDB(sys.argv[1], busy_timeout_s=60), open(sys.argv[2], "w"), Path(sys.argv[3])
    while not stop.exists():
        with db.read() as con:  # what the dashboard and analysts do: a read-only connection per request
            row = con.execute(
                "SELECT (SELECT run_id FROM latest_match_run), (SELECT matches FROM latest_match_run),"
                " (SELECT count(*) FROM latest_matches), (SELECT count(DISTINCT run_id) FROM latest_matches),"
                " (SELECT count(*) FROM current_matches), (SELECT count(*) FROM listings)"
            ).fetchone()
        out.write(json.dumps(row) + "\\n")
        out.flush()
    """
)


@pytest.mark.slow
def test_readers_never_see_half_a_published_run(settings: Settings, tmp_path: Path) -> None:
    """A reader process loops on the dashboard's queries while match publishes run after run of different sizes:
    every read shows one complete run (its row count equals the count its run row declares), never a mix."""
    from engine.views import ensure_views

    _world(settings, 60, 90)
    first = match_job.match(settings, top_k=2)
    ensure_views(RunsDB(settings.duckdb))
    log, stop = tmp_path / "reads.jsonl", tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, settings.duckdb, str(log), str(stop)], cwd=REPO, env=_env(),
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    published = {first["run_id"]: first["matches"]}
    try:
        deadline = time.monotonic() + 60
        while (not log.exists() or not log.read_text().count("\n")) and time.monotonic() < deadline:
            time.sleep(0.1)
        for i, k in enumerate((5, 1, 4, 2, 6, 3)):
            _world(settings, 3, 3, seed=100 + i, tag=f"r{i}-")  # listings arrive between runs
            result = match_job.match(settings, top_k=k)
            published[result["run_id"]] = result["matches"]
            time.sleep(0.2)
    finally:
        stop.touch()
        _, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err[-2000:]
    reads = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(reads) >= 20, f"the reader should have read many times during the publications, read {len(reads)}"
    for run_id, declared, rows, runs_seen, current_rows, _listings in reads:
        assert run_id in published, run_id
        assert runs_seen == 1 and rows == declared == current_rows == published[run_id], (run_id, rows, declared)
    seen = [r[0] for r in reads]
    assert len(set(seen)) >= 3, f"reads should span several publications, saw {len(set(seen))}"
    order = list(published)
    assert [order.index(r) for r in seen] == sorted(order.index(r) for r in seen), "a reader never goes back"


# --------------------------------------------------------------------------------------------- full disk
LIMITED = textwrap.dedent(
    """
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    sys.argv = ["homeward", *sys.argv[2:]]
    from ray_jobs.cli import main
    sys.exit(main())
    """
)


def _limited(settings: Settings, limit: int, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", LIMITED, str(limit), "--data-dir", settings.data_dir, *args]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)


def _state(settings: Settings) -> dict[str, Any]:
    lance = LanceStore(settings.lance)
    db = RunsDB(settings.duckdb)
    return {
        "listings": sorted(lance.read("listings").column("listing_id").to_pylist()),
        "listings_version": lance.version("listings"),
        "detections": sorted(lance.read("detections").column("detection_id").to_pylist()),
        "detections_version": lance.version("detections"),
        "current_matches": db.query("SELECT * FROM current_matches ORDER BY lost_listing_id, found_listing_id"),
        "published": db.query("SELECT run_id FROM match_runs WHERE status = 'published' ORDER BY started"),
    }


def _published_world(settings: Settings) -> dict[str, Any]:
    _world(settings, 20, 30)
    match_job.match(settings, top_k=3)
    before = _state(settings)
    assert before["current_matches"] and len(before["published"]) == 1, "a published run to protect"
    return before


@pytest.mark.slow
def test_full_disk_during_match_publication_rolls_back_with_a_clear_error(
    settings: Settings,
) -> None:
    """A file-size limit on ``homeward match`` (EFBIG on any file growth past 4 KiB, like ENOSPC on a full disk):
    the DuckDB publication fails with one line naming the file; the previously published run stays the current one,
    with every row; the failed run is recorded as failed with the reason. Once space is back, match publishes."""
    before = _published_world(settings)
    runs = RunsDB(settings.duckdb)

    proc = _limited(settings, 4096, "match")
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"homeward: error: cannot write DuckDB file {settings.duckdb}"), last
    assert "File too large" in last and "rolled back" in last
    assert _state(settings) == before
    failed = runs.query("SELECT message FROM match_runs WHERE status = 'failed'")
    assert len(failed) == 1 and "File too large" in failed[0][0], failed

    after = match_job.match(settings, top_k=3)
    assert after["status"] == "published" and after["matches"] == len(before["current_matches"])


LANCE_WRITER = textwrap.dedent(
    """
    import json, resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    from engine.config import load_settings
    from engine.storage import LanceStore, StorageError, upsert_listings
    s = load_settings(overrides={"data_dir": sys.argv[1]}, environ={})
    rows = [{"listing_id": f"new-{i}", "source": "faults", "source_id": f"new-{i}", "kind": "lost",
             "description": "x" * 2000} for i in range(200)]
    try:
        upsert_listings(LanceStore(s.lance), rows)
    except StorageError as exc:
        print(json.dumps({"error": str(exc)}))
        sys.exit(3)
    """
)


@pytest.mark.slow
def test_full_disk_during_a_lance_write_keeps_the_previous_version(settings: Settings) -> None:
    """The crawl's LanceDB writer (``upsert_listings``) under the same limit: a ``StorageError`` naming the table
    and saying nothing was committed; every table keeps its rows and version. Once space is back the same write
    and a match build on the intact data."""
    before = _published_world(settings)
    proc = subprocess.run([sys.executable, "-c", LANCE_WRITER, settings.data_dir], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 3, (proc.stdout[-1000:], proc.stderr[-2000:])
    error = json.loads(proc.stdout.strip().splitlines()[-1])["error"]
    assert error.startswith(f"cannot write LanceDB table 'listings' at {settings.lance}"), error
    assert "previous version" in error
    assert _state(settings) == before

    _world(settings, 2, 2, seed=9, tag="later-")
    assert LanceStore(settings.lance).count("listings") == len(before["listings"]) + 4
    assert match_job.match(settings, top_k=3)["status"] == "published"


@pytest.mark.parametrize("job", [["crawl"], ["--set", "enrich.profile=tiny", "enrich"], ["match"]])
def test_unwritable_data_dir_is_refused_before_any_work(tmp_path: Path, job: list[str]) -> None:
    """A data dir that cannot be written (here a path through a regular file: refused even for root) stops every
    job with one line naming it, before Ray starts or anything is read."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    cmd = [str(BIN / "homeward"), "--data-dir", str(blocker / "data"), *job]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("homeward: error:") and str(blocker) in last, last
    assert blocker.read_text() == "x"


# --------------------------------------------------------------------------------------------- killed Ray worker
def _photo(rng: np.random.Generator) -> bytes:
    arr = rng.integers(0, 255, size=(24, 32, 3), dtype=np.uint8)
    img = Image.fromarray(arr).resize((1280, 960), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _seed_photos(settings: Settings, n: int) -> None:
    lance, _, store = open_stores(settings)
    rng = np.random.default_rng(5)
    listings, rows = [], []
    for i in range(n):
        lid = ids.listing_id("faults", f"l{i}")
        listings.append({"listing_id": lid, "source": "faults", "source_id": f"l{i}", "kind": "lost",
                         "description": f"dog number {i}"})  # fmt: skip
        pid, uri = store.put(_photo(rng), "jpg")
        rows.append({"photo_key": ids.content_hash(lid, i), "photo_id": pid, "listing_id": lid,
                     "source_url": f"http://faults/{i}.jpg", "uri": uri, "status": "ok"})  # fmt: skip
    upsert_listings(lance, listings)
    upsert_photos(lance, rows)


def _descendants_named(root_pid: int, needle: str) -> list[psutil.Process]:
    try:
        kids = psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        return []
    found = []
    for p in kids:
        try:
            if needle in " ".join(p.cmdline()) or needle in p.name():
                found.append(p)
        except psutil.Error:
            continue
    return found


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_enrich_survives_a_killed_ray_worker(settings: Settings, ray_local: None, tmp_path: Path) -> None:
    """SIGKILL the embedder actor's worker process while ``homeward enrich`` (its own local Ray, in a subprocess) has
    delivered some photos but not all: Ray restarts the actor, the lost batches run again, the job ends ``ok``
    with every photo enriched exactly once — the same detection rows as an uninterrupted run of the same data."""
    from ray_jobs.enrich import enrich

    n = 96
    _seed_photos(settings, n)
    clean = settings.with_overrides({"data_dir": str(tmp_path / "clean")})
    shutil.copytree(settings.data_dir, clean.data_dir)

    cmd = [str(BIN / "homeward"), "--data-dir", settings.data_dir, "--num-cpus", "2",
           "--set", "enrich.profile=tiny", "--set", "enrich.batch_size=4", "--set", "ray.object_store_mb=512",
           "enrich"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress: list[int] = []
    err_lines: list[str] = []

    def read_stderr() -> None:
        assert proc.stderr is not None
        buf = ""
        while chunk := proc.stderr.read(1):
            buf += chunk
            if chunk in "\r\n":
                err_lines.append(buf)
                m = re.search(r"enrich:.*?\|\s*(\d+)/(\d+)", buf)
                if m:
                    progress.append(int(m.group(1)))
                buf = ""

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    killed: psutil.Process | None = None
    killed_at_progress = None
    deadline = time.monotonic() + 400
    while proc.poll() is None and time.monotonic() < deadline and killed is None:
        done = progress[-1] if progress else 0
        if 0 < done < n // 2:
            workers = _descendants_named(proc.pid, "EmbedStage")
            if workers:
                killed, killed_at_progress = workers[0], done
                killed.kill()
        time.sleep(0.05)
    assert killed is not None, f"never saw a partly finished enrich to kill a worker in: {''.join(err_lines)[-2000:]}"
    restarted = False
    while proc.poll() is None and time.monotonic() < deadline:
        restarted = restarted or any(p.pid != killed.pid for p in _descendants_named(proc.pid, "EmbedStage"))
        time.sleep(0.1)
    out, _ = proc.communicate(timeout=60)
    reader.join(timeout=10)
    assert proc.returncode == 0, "".join(err_lines)[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] == "ok" and result["photos"] == n and result["failed"] == 0, result
    assert restarted, "Ray restarted the killed embedder actor"
    assert progress[-1] == n and killed_at_progress < n

    # nothing lost, nothing twice: compare with an uninterrupted run of the same data
    reference = enrich(clean.with_overrides({"enrich": {"profile": "tiny", "batch_size": 4}}))
    assert reference["photos"] == n and reference["detections"] == result["detections"]
    got = LanceStore(settings.lance).read("detections").to_pylist()
    want = LanceStore(clean.lance).read("detections").to_pylist()
    assert len(got) == len({d["detection_id"] for d in got}) == result["detections"]
    assert {d["detection_id"] for d in got} == {d["detection_id"] for d in want}
    assert {d["photo_key"] for d in got} == {d["photo_key"] for d in want}
    statuses = LanceStore(settings.lance).read("photos").column("enrich_status").to_pylist()
    assert len(statuses) == n and set(statuses) <= {"ok", "no_animal"}
    rows = RunsDB(settings.duckdb).query("SELECT status, photos, failed FROM enrich_runs")
    assert rows == [("ok", n, 0)]
    # a rerun finds nothing left to do
    assert enrich(settings.with_overrides({"enrich": {"profile": "tiny"}}))["photos"] == 0
