"""``homeward bench enrich``: the enrich pipeline's throughput against each of its models run alone.

What runs, in one invocation, on the same ``images`` photos:

1. **Each stage alone**, in this process, one after the other: decode (bytes → RGB, EXIF, resize), detector,
   embedder (+ the attribute captioner when it shares the embedder's forward pass), captioner, text embedder. Each
   runs with the torch thread count a pipeline actor of that stage gets (``enrich.actor_cpus`` → threads), so the
   comparison is like for like; the detector is also timed with every core, for reference.
2. **End to end**: ``homeward enrich`` on a throw-away data dir holding the same photos, as Ray Data with actors.
   Its rate is the steady state — images after the first result over the time they took — so actor start-up
   (seconds of imports and weight loading, paid once per job) does not count; the wall-clock rate including it is
   reported beside.

``efficiency`` = end-to-end images/s ÷ the slowest stage's standalone images/s: 1.0 means the pipeline runs as fast
as its bottleneck model alone; the bar is 0.8. Peak memory: this process's peak RSS after the standalone runs, and
the peak summed RSS of the driver and every Ray worker during the end-to-end run. With a CUDA device the same
figures are taken on the GPU too (``gpu`` block); ``--device cuda`` skips the CPU, and ``--no-pipeline`` times the
models alone without Ray (a GPU box that has the models' libraries but not the cluster's). The last line printed is
one JSON object.
"""

from __future__ import annotations

import contextlib
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from engine.config import Settings
from engine.errors import HomewardError
from ray_jobs.memory import PeakRss

REPO = Path(__file__).resolve().parents[2]
BAR = 0.8


def _default_images_dir() -> Path | None:
    shared = Path(os.environ.get("HW_SHARED_DIR", REPO.parent / "shared"))
    for cand in (shared / "data" / "dogfacenet" / "images",):
        if cand.is_dir():
            return cand
    return None


def _collect(n: int, images_dir: str | None) -> tuple[list[bytes], str]:
    """``n`` distinct image files (spread over the folder's sub-folders), or synthetic photos when none is given."""
    folder = Path(images_dir) if images_dir else _default_images_dir()
    out: list[bytes] = []
    seen: set[bytes] = set()
    if folder is not None:
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
        step = max(1, len(files) // max(1, n))
        for p in files[::step] + files:
            if len(out) >= n:
                break
            data = p.read_bytes()
            if data not in seen:
                seen.add(data)
                out.append(data)
        if out:
            return out, str(folder)
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    while len(out) < n:
        arr = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out, "synthetic 640x480 noise"


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 3) if seconds > 0 else float("inf")


def _standalone(settings: Settings, datas: list[bytes], device: str, threads: int) -> dict[str, Any]:
    """Each model alone on the same photos, with ``threads`` torch threads; rates in photos/s."""
    import torch

    from engine.images import ImageError, decode_image
    from engine.models import clear_cache, load_profile
    from engine.models.captioner import build_captioner
    from engine.models.crops import animal_crops
    from engine.models.detector import build_detector
    from engine.models.factory import build_embedder
    from engine.models.text import build_text_embedder

    prof = load_profile(settings)
    specs = {k: dict(prof[k], device=device) for k in ("detector", "embedder", "captioner", "text")}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t = time.perf_counter()
        images = []
        for d in datas:
            with contextlib.suppress(ImageError):
                images.append(decode_image(d, max_side=settings.enrich.max_side))
        decode_s = time.perf_counter() - t
        n = len(images)

        detector = build_detector(specs["detector"], settings)
        torch.set_num_threads(threads)  # ultralytics resets it on its first predict
        detector.detect(images[: min(2, n)])  # warm-up
        t = time.perf_counter()
        found = detector.detect(images)
        detect_s = time.perf_counter() - t

        pairs = [pair for im, ds in zip(images, found, strict=True) for pair in animal_crops(im, ds)]
        dets, crops = [d for d, _ in pairs], [c for _, c in pairs]

        embedder = build_embedder(specs["embedder"], settings)
        embedder.embed_and_classify(crops[:2])
        t = time.perf_counter()
        _, logits = embedder.embed_and_classify(crops)
        embed_s = time.perf_counter() - t

        captioner = build_captioner(specs["captioner"], settings, embedder=embedder)
        captioner.caption(crops[:2], dets[:2], logits=logits[:2] if logits is not None else None)
        t = time.perf_counter()
        use = logits if captioner.uses_embedder_logits else None
        captions = captioner.caption(crops, dets, logits=use)
        caption_s = time.perf_counter() - t

        text = build_text_embedder(specs["text"], settings)
        texts = [f"{c}. Lost dog, brown with a white chest, last seen near the park." for c, _ in captions]
        text.embed(texts[:2])
        t = time.perf_counter()
        text.embed(texts)
        text_s = time.perf_counter() - t

        rates = {
            "decode": _rate(len(datas), decode_s),
            "detect": _rate(n, detect_s),
            "embed": _rate(n, embed_s),
            "caption": _rate(n, caption_s),
            "text": _rate(n, text_s),
        }
        # in the pipeline an attribute captioner runs inside the embed actor (it reuses that forward pass)
        if captioner.uses_embedder_logits or specs["captioner"].get("kind") == "attributes":
            rates["embed+caption"] = _rate(n, embed_s + caption_s)
        torch.set_num_threads(max(threads, os.cpu_count() or 1))
        t = time.perf_counter()
        if device == "cpu":
            detector.detect(images)
        all_cores = _rate(n, time.perf_counter() - t) if device == "cpu" else None
        return {
            "rates": rates,
            "decoded": n,
            "detections": len(dets),
            "animals": sum(len(x) for x in found),
            "detector_all_cores": all_cores,
            "models": {
                "detector": detector.model_id,
                "embedder": embedder.model_id,
                "captioner": captioner.model_id,
                "text": text.model_id,
            },
        }
    finally:
        torch.set_num_threads(before)
        clear_cache()


def _pipeline_stages(rates: dict[str, float], captioner_kind: str) -> dict[str, float]:
    """The rates of the stages as the pipeline runs them (an attribute captioner shares the embed actor)."""
    stages = {"decode": rates["decode"], "detect": rates["detect"], "text": rates["text"]}
    if captioner_kind == "attributes":
        stages["embed+caption"] = rates["embed+caption"]
    else:
        stages["embed"], stages["caption"] = rates["embed"], rates["caption"]
    return stages


def _end_to_end(settings: Settings, datas: list[bytes]) -> dict[str, Any]:
    from engine import ids
    from engine.runtime import ray_session
    from engine.storage import open_stores, upsert_listings, upsert_photos
    from ray_jobs.enrich import enrich

    lance, _, store = open_stores(settings)
    listings, photos = [], []
    for i, data in enumerate(datas):
        lid = ids.listing_id("bench", str(i))
        listings.append(
            {"listing_id": lid, "source": "bench", "source_id": str(i), "description": "Lost dog near the park."}
        )
        pid, uri = store.put(data, "jpg")
        photos.append(
            {"photo_key": ids.content_hash(lid, i), "photo_id": pid, "listing_id": lid, "uri": uri, "status": "ok"}
        )
    upsert_listings(lance, listings)
    upsert_photos(lance, photos)
    with ray_session(settings), PeakRss(interval=0.2, tree=True) as rss:
        t = time.perf_counter()
        result = enrich(settings)
        wall = time.perf_counter() - t
    return {
        "result": result,
        "wall_images_per_s": _rate(result["photos"], wall),
        "steady_images_per_s": result.get("steady_images_per_s"),
        "first_result_s": result.get("first_result_s"),
        "peak_rss_mb": round(rss.peak, 1),
    }


def bench_enrich(
    settings: Settings,
    *,
    images: int = 64,
    images_dir: str | None = None,
    profile: str | None = None,
    device: str | None = None,
    pipeline: bool = True,
) -> dict:
    """Enrich pipeline images/s against each model alone on the same images; efficiency = pipeline / slowest stage.

    Args:
        images: how many photos to run (distinct files)
        images_dir: folder of photos (default: ../shared/data/dogfacenet/images, else synthetic photos)
        profile: model profile (default: enrich.profile)
        device: cpu or cuda (default: cpu, then cuda too when a GPU is visible)
        pipeline: also run the Ray pipeline end to end; false times each model alone only (a GPU box without Ray)
    """
    import torch

    from engine.models import load_profile

    if profile:
        settings = settings.with_overrides({"enrich": {"profile": profile}})
    prof = load_profile(settings)
    datas, source = _collect(images, images_dir)
    threads = max(1, int(settings.enrich.actor_cpus))
    out: dict[str, Any] = {
        "bench": "enrich",
        "profile": prof["name"],
        "images": len(datas),
        "images_source": source,
        "cpu_count": os.cpu_count(),
        "actor_cpus": settings.enrich.actor_cpus,
        "threads_per_actor": threads,
        "bar": BAR,
    }

    def one(device: str) -> dict[str, Any]:
        alone = _standalone(settings, datas, device, threads if device == "cpu" else 1)
        stages = _pipeline_stages(alone["rates"], prof["captioner"].get("kind"))
        slowest = min(stages, key=stages.get)  # type: ignore[arg-type]
        result: dict[str, Any] = {
            "device": device,
            "standalone_images_per_s": alone["rates"],
            "pipeline_stages_images_per_s": stages,
            "slowest_stage": slowest,
            "slowest_stage_images_per_s": stages[slowest],
            "detector_all_cores_images_per_s": alone["detector_all_cores"],
            "animals_found_standalone": alone["animals"],
            "models": alone["models"],
        }
        if not pipeline:
            return result
        with tempfile.TemporaryDirectory(prefix="hw-bench-enrich-") as tmp:
            s = settings.with_overrides(
                {"data_dir": tmp, "lance_uri": None, "duckdb_path": None, "photo_store": None},
                origin="bench",
            )
            if device == "cpu":
                s = s.with_overrides({"enrich": {"actor_gpus": 0.0}, "ray": {"num_gpus": 0}}, origin="bench")
            e2e = _end_to_end(s, datas)
        rate = e2e["steady_images_per_s"] or e2e["wall_images_per_s"]
        return {
            **result,
            "end_to_end_images_per_s": rate,
            "end_to_end_wall_images_per_s": e2e["wall_images_per_s"],
            "first_result_s": e2e["first_result_s"],
            "efficiency": round(rate / stages[slowest], 3) if stages[slowest] else None,
            "efficiency_vs_all_core_detector": (
                round(rate / alone["detector_all_cores"], 3) if alone["detector_all_cores"] else None
            ),
            "detections": e2e["result"]["detections"],
            "enrich_counts": {k: e2e["result"][k] for k in ("ok", "no_animal", "failed")},
            "pipeline_peak_rss_mb": e2e["peak_rss_mb"],
        }

    if device not in (None, "cpu", "cuda"):
        raise HomewardError(f"bench enrich --device {device!r}: use cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise HomewardError("bench enrich --device cuda: no CUDA device is visible")
    if device != "cuda":
        cpu = one("cpu")
        out.update(cpu)
        out["standalone_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        if pipeline:
            out["passes_bar"] = bool(cpu["efficiency"] is not None and cpu["efficiency"] >= BAR)
    if device == "cuda" or (device is None and torch.cuda.is_available()):
        gpu = one("cuda")
        out["gpu"] = gpu
        if pipeline:
            out["gpu_images_per_s"] = gpu["end_to_end_images_per_s"]
    return out
