"""Animal detection with ultralytics YOLO: every cat and dog box above the confidence threshold."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine.models.registry import ModelError, pick_device, resolve, seeded, weights_hash


@dataclass(frozen=True)
class Detection:
    """One animal: species (``dog``/``cat``, or ``unknown`` for a whole-frame stand-in), confidence, pixel box
    ``(x1, y1, x2, y2)`` in the coordinates of the image given to :meth:`Detector.detect`."""

    species: str
    confidence: float
    bbox: tuple[float, float, float, float]
    full_frame: bool = False


def full_frame(image: Image.Image) -> Detection:
    """The whole image as one detection of unknown species (a close-up the detector missed still gets a vector)."""
    return Detection("unknown", 0.0, (0.0, 0.0, float(image.width), float(image.height)), full_frame=True)


class Detector:
    """Base: ``detect(images) -> list[list[Detection]]``; ``model_id`` names the weights."""

    model_id: str
    batch_size: int = 8
    device: str = "cpu"

    def detect(self, images: list[Image.Image]) -> list[list[Detection]]:
        raise NotImplementedError


class YoloDetector(Detector):
    """Ultralytics YOLO from a weight file (resolved through the models folder) or a bundled model YAML (random
    weights, for tests). Class ids map to species through ``classes`` (COCO: 15 cat, 16 dog). NMS is class-agnostic
    among the kept classes, so one animal is one box even when the model hesitates between cat and dog."""

    def __init__(self, spec: dict[str, Any], settings: Any) -> None:
        import torch

        threads = torch.get_num_threads()
        try:
            from ultralytics import YOLO
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise ModelError("the yolo detector needs the ultralytics package") from exc
        self.device = pick_device(spec)
        self.imgsz = int(spec.get("imgsz", 640))
        self.batch_size = int(spec.get("batch_size", 8))
        self.confidence = float(spec.get("confidence", settings.enrich.detect_confidence))
        self.iou = float(spec.get("iou", 0.6))
        self.max_det = int(spec.get("max_det", 20))
        self.quantize = "fp16" if self.device.startswith("cuda") and spec.get("precision") == "fp16" else None
        self.classes = {int(k): str(v) for k, v in (spec.get("classes") or {15: "cat", 16: "dog"}).items()}
        if spec.get("weights"):
            path = resolve(str(spec["weights"]), settings, what="YOLO weights")
            if not Path(path).exists():  # a hub name, online: ultralytics downloads it by name
                self.model = YOLO(path)
                self.model_id = f"yolo:{path}"
            else:
                self.model = YOLO(path)
                self.model_id = f"yolo:{Path(path).stem}:{weights_hash(path)}"
        elif spec.get("config"):
            seed = int(spec.get("seed", 0))
            with seeded(seed):
                self.model = YOLO(str(spec["config"]))
            self.model_id = f"yolo:{Path(str(spec['config'])).stem}:random-seed{seed}"
        else:
            raise ModelError("detector spec needs `weights` (a file) or `config` (a model YAML)")
        # The first predict builds ultralytics' predictor, which resets torch's thread count: do it now, then restore.
        self.model.predict(
            np.zeros((64, 64, 3), np.uint8), imgsz=self.imgsz, device=self.device, verbose=False, quantize=self.quantize
        )
        torch.set_num_threads(threads)

    def detect(self, images: list[Image.Image]) -> list[list[Detection]]:
        out: list[list[Detection]] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            arrays = [np.asarray(im.convert("RGB"))[:, :, ::-1] for im in chunk]  # ultralytics takes BGR arrays
            results = self.model.predict(
                arrays,
                imgsz=self.imgsz,
                conf=self.confidence,
                iou=self.iou,
                classes=sorted(self.classes),
                agnostic_nms=True,
                max_det=self.max_det,
                device=self.device,
                quantize=self.quantize,
                verbose=False,
            )
            for im, res in zip(chunk, results, strict=True):
                dets = []
                boxes = res.boxes
                if boxes is not None and len(boxes):
                    xyxy = boxes.xyxy.float().cpu().numpy()
                    conf = boxes.conf.float().cpu().numpy()
                    cls = boxes.cls.int().cpu().numpy()
                    for (x1, y1, x2, y2), c, k in zip(xyxy, conf, cls, strict=True):
                        x1, x2 = float(np.clip(x1, 0, im.width)), float(np.clip(x2, 0, im.width))
                        y1, y2 = float(np.clip(y1, 0, im.height)), float(np.clip(y2, 0, im.height))
                        if x2 - x1 < 2 or y2 - y1 < 2 or int(k) not in self.classes:
                            continue
                        dets.append(Detection(self.classes[int(k)], float(c), (x1, y1, x2, y2)))
                dets.sort(key=lambda d: -d.confidence)
                out.append(dets)
        return out


def build_detector(spec: dict[str, Any], settings: Any) -> Detector:
    kind = spec.get("kind")
    if kind == "yolo":
        return YoloDetector(spec, settings)
    raise ModelError(f"unknown detector kind {kind!r} (known: yolo)")
