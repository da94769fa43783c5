"""``homeward crops IMAGES_DIR OUT``: identity folders cut the way enrichment cuts photos, for training on them.

Re-identification trains best on what it will see: enrichment embeds the detector's crop of the animal
(:mod:`engine.models.crops`), not the whole photo with its feeder, sofa or street. This runs the profile's detector
once over every photo of ``IMAGES_DIR/<identity>/`` and writes ``OUT/images/<identity>/<photo>.jpg`` — the most
confident animal's crop, or the whole photo where none was detected — plus ``OUT/manifest.csv`` (a copy of the
source's, so species stay known) and ``OUT/crops.json`` (detector, counts, the photos with no animal). The output is
an identity folder like any other: ``homeward train DOGFACES:OUT/images``. A rerun skips photos already cut.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tqdm import tqdm

from engine.config import Settings
from engine.errors import HomewardError


def crop_folders(settings: Settings, images_dir: str, out: str, *, batch_size: int = 8) -> dict[str, Any]:
    """Cut every photo of IMAGES_DIR's identity folders as enrichment does, into OUT/images (JSON last line).

    Args:
        images_dir: folder of identity folders (<identity>/<photo>.jpg), e.g. ../shared/data/realpets/images
        out: folder to write (OUT/images/<identity>/..., OUT/manifest.csv, OUT/crops.json)
        batch_size: photos per detector batch
    """
    from engine.eval import list_identity_images, load_photo
    from engine.models import load_detector
    from engine.models.crops import detect_crops

    src = Path(images_dir)
    paths, _, _ = list_identity_images(src)
    dest = Path(out) / "images"
    if dest.resolve() == src.resolve():
        raise HomewardError("crops: OUT/images must not be IMAGES_DIR itself")
    todo = [p for p in paths if not (dest / p.parent.name / f"{p.stem}.jpg").is_file()]
    detector = load_detector(settings)
    undetected: list[str] = []
    with tqdm(total=len(todo), desc="cropping", unit="img") as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            for path, crops in zip(batch, detect_crops(detector, [load_photo(p) for p in batch]), strict=True):
                det, crop = crops[0]  # most confident first; the whole photo when nothing was detected
                if det.full_frame:
                    undetected.append(f"{path.parent.name}/{path.name}")
                target = dest / path.parent.name / f"{path.stem}.jpg"
                target.parent.mkdir(parents=True, exist_ok=True)
                crop.convert("RGB").save(target, quality=95)
            bar.update(len(batch))
    for manifest in (src / "manifest.csv", src.parent / "manifest.csv"):
        if manifest.is_file():
            shutil.copyfile(manifest, Path(out) / "manifest.csv")
            break
    summary = {
        "images_dir": str(src),
        "out": str(dest),
        "detector": detector.model_id,
        "photos": len(paths),
        "cut_now": len(todo),
        "undetected_now": len(undetected),
        "undetected": undetected,
    }
    (Path(out) / "crops.json").write_text(json.dumps(summary, indent=1))
    return {k: v for k, v in summary.items() if k != "undetected"}
