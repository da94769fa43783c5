"""A real two-node Ray cluster on this machine: crawl → enrich → match run across it, with work on both nodes.

The cluster is two ``ray start`` processes (a head and a worker node, one CPU each, the worker with a custom
``node_b`` resource), each with its own temp dir. The jobs are separate ``homeward --address HEAD …`` processes, just
as ``ray job submit -- homeward …`` runs them on a real cluster; this module never uses the session's in-process Ray
(``ray_local``), which cannot be re-pointed at another cluster.

How "work ran on both nodes" is proved: after the jobs, a fresh driver reads the cluster's GCS actor table (it keeps
dead actors) and the jobs table. The enrich job's model stages (``MapWorker(MapBatches(DetectStage))`` …) ask for
0.5 CPU each and a decode task for 0.25: 1.75 CPUs that one 1-CPU node cannot hold, so they must spread; the test
checks that they actually did (actor node ids cover the head *and* the ``node_b`` node) and that every job's driver
joined this cluster — a job that silently started its own local Ray leaves no trace here and fails the test.

Teardown never calls ``ray stop`` (it kills every Ray on the machine, other test sessions included): it ends the
processes whose command line names this cluster's temp dir, and their children, by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml

from crawlers.mirror import Mirror
from engine.storage import LanceStore, RunsDB
from ray_jobs.demo import demo_source
from ray_jobs.demo_site import build_demo_site

BIN = Path(sys.executable).parent
OBJECT_STORE_BYTES = 256 * 1024 * 1024


@dataclass
class Cluster:
    address: str
    root: Path
    env: dict[str, str]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOMEWARD_", "RAY_"))}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    return env


def _cluster_processes(root: Path) -> list[psutil.Process]:
    """Every process of this cluster: those naming its temp dir on their command line, and their children."""
    marker = str(root)
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in arg for arg in proc.info["cmdline"] or []):
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found[child.pid] = child
        except psutil.Error:
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def _stop(root: Path) -> None:
    procs = _cluster_processes(root)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=5)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


def _ray_start(args: list[str], env: dict[str, str], log: Path) -> None:
    cmd = [str(BIN / "ray"), "start", *args, "--disable-usage-stats", f"--object-store-memory={OBJECT_STORE_BYTES}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-1500:]}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if not (BIN / "ray").exists():
        pytest.skip(f"the ray CLI is not installed beside {sys.executable}")
    # Short paths: Ray's unix sockets live under the temp dir and socket paths are limited to 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="hwc-", dir="/tmp"))
    env = _env()
    port = _free_port()
    address = f"127.0.0.1:{port}"
    try:
        _ray_start(
            ["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false", f"--temp-dir={root}/h"],
            env,
            root / "head.log",
        )
        _ray_start(
            [f"--address={address}", "--num-cpus=1", '--resources={"node_b": 1}', f"--temp-dir={root}/w"],
            env,
            root / "worker.log",
        )
        yield Cluster(address, root, env)
    finally:
        _stop(root)
        shutil.rmtree(root, ignore_errors=True)


def _homeward(cluster: Cluster, data_dir: Path, sources: Path, *verb: str, timeout: int = 420) -> dict:
    cmd = [str(BIN / "homeward"), "--address", cluster.address, "--data-dir", str(data_dir)]
    cmd += ["--set", f"crawl.sources_file={sources}", "--set", "enrich.profile=tiny"]
    cmd += ["--set", "enrich.inline_max_photos=0", *verb]  # a run this small would otherwise enrich in the driver
    proc = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=timeout, cwd=data_dir)
    assert proc.returncode == 0, f"{' '.join(verb)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


INSPECT = textwrap.dedent(
    """
    import json, sys
    import ray
    from ray._private import state
    ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
    nodes = [{"id": n["NodeID"], "alive": n["Alive"], "resources": n["Resources"]} for n in ray.nodes()]
    actors = [{"job": a["JobID"], "cls": a["ActorClassName"], "node": a["Address"]["NodeID"], "state": a["State"]}
              for a in state.actors().values()]
    jobs = [{"job": j["JobID"], "entrypoint": j.get("Entrypoint", "")} for j in state.jobs()]
    print(json.dumps({"nodes": nodes, "actors": actors, "jobs": jobs}))
    """
)


def _inspect(cluster: Cluster) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", INSPECT, cluster.address], env=cluster.env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_crawl_enrich_match_across_two_nodes(cluster: Cluster, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    site = build_demo_site(tmp_path / "site", reunions=2, distractors=2, images_dir=None, seed=11)
    with Mirror(site.root) as mirror:
        # two sources (the same mirror under two names): several sources fan out as Ray tasks on the cluster
        second = {**demo_source(mirror.url), "name": "demo_b"}
        sources = tmp_path / "sources.yaml"
        sources.write_text(yaml.safe_dump({"sources": [demo_source(mirror.url), second]}))
        crawled = _homeward(cluster, data_dir, sources, "crawl", "--source", "demo", "demo_b")
    enriched = _homeward(cluster, data_dir, sources, "enrich")
    matched = _homeward(cluster, data_dir, sources, "match", "--use-ray")

    # the jobs did their work, through the shared data dir every node writes to
    assert crawled["status"] == "ok" and [r["status"] for r in crawled["runs"]] == ["ok", "ok"]
    assert crawled["items"] == 2 * site.posts
    lance = LanceStore(str(data_dir / "lance"))
    assert lance.count("listings") == 2 * site.posts
    assert enriched["status"] == "ok" and enriched["failed"] == 0 and enriched["photos"] == 2 * site.posts
    assert lance.count("photos", "enrich_status IN ('ok', 'no_animal')") == 2 * site.posts
    assert lance.count("detections") >= 2 * site.posts
    assert matched["status"] == "published" and matched["matches"] > 0
    db = RunsDB(str(data_dir / "homeward.duckdb"))
    assert db.query("SELECT count(*) FROM crawl_runs WHERE status = 'ok'")[0][0] == 2
    assert db.query("SELECT count(*) FROM enrich_runs WHERE status = 'ok'")[0][0] == 1
    assert db.query("SELECT count(*) FROM current_matches")[0][0] == matched["matches"]

    # ... and it ran on the cluster, on both of its nodes
    seen = _inspect(cluster)
    alive = [n for n in seen["nodes"] if n["alive"]]
    assert len(alive) == 2, seen["nodes"]
    node_b = next(n["id"] for n in alive if "node_b" in n["resources"])
    head = next(n["id"] for n in alive if n["id"] != node_b)
    # crawl (several sources fan out as Ray tasks) and enrich joined this cluster as drivers; match scores one
    # block here, on its driver, without starting Ray at all (it fans blocks out only when there are several)
    jobs = {verb: [j["job"] for j in seen["jobs"] if verb in j["entrypoint"].split()] for verb in ("crawl", "enrich")}
    assert all(len(ids) == 1 for ids in jobs.values()), f"each job's driver joined this cluster once: {jobs}"
    stages = [a for a in seen["actors"] if a["job"] == jobs["enrich"][0] and "Stage" in a["cls"]]
    assert {a["cls"] for a in stages} >= {
        "MapWorker(MapBatches(DetectStage))",
        "MapWorker(MapBatches(EmbedStage))",
        "MapWorker(MapBatches(TextStage))",
    }, stages
    nodes_used = {a["node"] for a in stages}
    assert nodes_used == {head, node_b}, f"enrich model actors ran on {nodes_used}, cluster nodes {head}, {node_b}"
