"""The crop rule: which pixels of a photo an embedder sees. One rule for enrich, search, eval and bench.

A stored vector and a query vector are only comparable when both were cut from their photos the same way: a wider
margin shows more background, a tighter one cuts ears and tails. Before this module, enrichment, search and the
benchmark each cut their own (margins 0.04, 0.1 and none), so a search photo was framed unlike every stored photo and
``homeward eval`` measured a framing no user got.

* :func:`crop_box` widens a detector box by ``CROP_MARGIN`` of its width/height on each side (clipped to the
  image): detector boxes hug the fur and cut ears and tails; a little context also keeps the coat's edge.
* :func:`animal_crops` turns one photo's detections into crops, the whole photo standing in (a ``full_frame``
  detection, species ``unknown``) when the detector saw no animal: a close-up it missed can still match.
* Crops are downscaled to ``CROP_MAX_SIDE`` (embedders take 224-260 px; rows travel between Ray actors).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image

from engine.models.detector import Detection, Detector, full_frame

CROP_MARGIN = 0.04
"""Margin around each detected box, as a share of the box's width (left/right) and height (top/bottom)."""
CROP_MAX_SIDE = 512


def crop_box(bbox: Sequence[float], width: int, height: int, margin: float = CROP_MARGIN) -> tuple[int, int, int, int]:
    """``bbox`` (x1, y1, x2, y2) widened by ``margin`` and clipped to a ``width`` × ``height`` image."""
    x1, y1, x2, y2 = (float(v) for v in bbox)
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    return (
        max(0, int(x1 - mx)),
        max(0, int(y1 - my)),
        min(width, math.ceil(x2 + mx)),
        min(height, math.ceil(y2 + my)),
    )


def crop_animal(image: Image.Image, detection: Detection, max_side: int | None = CROP_MAX_SIDE) -> Image.Image:
    """The crop the embedder sees for ``detection`` (the whole image for a ``full_frame`` one)."""
    crop = image if detection.full_frame else image.crop(crop_box(detection.bbox, image.width, image.height))
    if max_side and max(crop.size) > max_side:
        crop = crop.copy()
        crop.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return crop


def animal_crops(
    image: Image.Image, detections: Sequence[Detection], max_side: int | None = CROP_MAX_SIDE
) -> list[tuple[Detection, Image.Image]]:
    """Every detection with its crop; one ``full_frame`` stand-in when ``detections`` is empty."""
    dets = list(detections) or [full_frame(image)]
    return [(d, crop_animal(image, d, max_side)) for d in dets]


def detect_crops(
    detector: Detector, images: Sequence[Image.Image], max_side: int | None = CROP_MAX_SIDE
) -> list[list[tuple[Detection, Image.Image]]]:
    """:func:`animal_crops` of every image, detected in the detector's batches."""
    found = detector.detect(list(images))
    return [animal_crops(im, dets, max_side) for im, dets in zip(images, found, strict=True)]
