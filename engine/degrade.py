"""Degrade a clean photo the way lost/found photos are degraded: seeded and reproducible.

Real posts show the animal off-centre, small, blurred by a moving phone, at dusk, re-compressed by a messenger and
tilted. :func:`degrade` applies all five, each with a random strength drawn from ``random.Random(seed)`` so one seed
always gives the same picture:

1. **off-centre crop**: keep 60–85 % of each side, placed at a random offset (the subject slides to an edge),
2. **tilt**: rotate by 5–20° either way (edges filled by stretching the border colour),
3. **blur**: Gaussian, radius 0.6–2.0 px at 224 px (scaled with the image),
4. **low light**: brightness × 0.35–0.75, gamma 1.2–1.8 (shadows crushed), a little colour noise,
5. **JPEG artefacts**: re-encoded at quality 8–30.
"""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

STEPS = ("crop", "tilt", "blur", "low_light", "jpeg")


def degrade(image: Image.Image, seed: int) -> Image.Image:
    rng = random.Random(seed)
    im = image.convert("RGB")
    w, h = im.size
    # 1. off-centre crop
    fw, fh = rng.uniform(0.6, 0.85), rng.uniform(0.6, 0.85)
    cw, ch = max(1, int(w * fw)), max(1, int(h * fh))
    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    im = im.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.Resampling.BILINEAR)
    # 2. tilt
    angle = rng.uniform(5, 20) * rng.choice((-1, 1))
    edge = tuple(int(c) for c in np.asarray(im).reshape(-1, 3).mean(0))
    im = im.rotate(angle, resample=Image.Resampling.BILINEAR, expand=False, fillcolor=edge)
    # 3. blur
    im = im.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.6, 2.0) * max(w, h) / 224))
    # 4. low light
    im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.35, 0.75))
    arr = np.asarray(im, dtype=np.float32) / 255.0
    arr = arr ** rng.uniform(1.2, 1.8)
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, 0.02, arr.shape)
    im = Image.fromarray((np.clip(arr + noise, 0, 1) * 255).astype(np.uint8))
    # 5. JPEG artefacts
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=rng.randint(8, 30))
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out.convert("RGB")
