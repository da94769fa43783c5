"""Captions and attributes of an animal crop: what a person would write in a listing.

Two kinds:

* ``attributes`` (default; needs no captioning weights): the detector's species, an ImageNet classifier's breed
  label (dog classes 151-268, cat classes 281-285) when an ImageNet head is available — by default the embedder's own
  head, so one forward pass gives both vector and breed — and the dominant coat colours measured in the crop, named
  with the listing colour vocabulary (:data:`COLORS`).
* ``vlm``: a transformers image-to-text model (local folder or hub name) asked a structured question (species,
  breed, age group baby/adult/senior, colours, markings); its answer is parsed into the same attributes.

``caption(crops, detections)``: ``crops[i]`` is the image region of ``detections[i]`` (the whole photo for a
full-frame detection). Returns ``[(caption, attributes), ...]``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine.models.detector import Detection
from engine.models.registry import ModelError, online, pick_device, resolve, torch_dtype, weights_hash

#: Coat colour words measured in crops: the base colours of the listing vocabulary (``engine.normalize.COLORS``;
#: patterns such as tabby or brindle are not measured).
COLORS = ("black", "white", "grey", "brown", "red", "cream")

DOG_CLASSES = range(151, 269)
CAT_CLASSES = range(281, 286)


def _imagenet_names() -> list[str]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i).split(",")[0].strip() for i in range(1000)]


def coat_colors(crop: Image.Image, *, min_fraction: float = 0.12, max_colors: int = 3) -> dict[str, float]:
    """Share of the crop's central area taken by each colour word (only words above ``min_fraction``).

    The central 70 % of the box is used (corners of a box are mostly background); pixels of strongly saturated
    non-coat hues (blue, green, purple: sky, grass, clothes) are ignored.
    """
    im = crop.convert("RGB")
    w, h = im.size
    box = (int(w * 0.15), int(h * 0.15), max(int(w * 0.85), int(w * 0.15) + 1), max(int(h * 0.85), int(h * 0.15) + 1))
    small = im.crop(box).resize((32, 32), Image.Resampling.BILINEAR)
    hsv = np.asarray(small.convert("HSV"), np.float32).reshape(-1, 3) / 255.0
    hue, sat, val = hsv[:, 0] * 360.0, hsv[:, 1], hsv[:, 2]
    labels = np.full(len(hsv), "", dtype=object)
    achromatic = sat < 0.18
    labels[(val < 0.22)] = "black"
    labels[achromatic & (val >= 0.22) & (val < 0.78)] = "grey"
    labels[achromatic & (val >= 0.78)] = "white"
    warm = ~achromatic & (val >= 0.22) & ((hue < 50) | (hue >= 340))
    labels[warm & (val < 0.5)] = "brown"
    labels[warm & (val >= 0.5) & (sat >= 0.5) & ((hue < 28) | (hue >= 340))] = "red"
    labels[warm & (val >= 0.5) & ~((sat >= 0.5) & ((hue < 28) | (hue >= 340)))] = "cream"  # tan, fawn, gold
    labels[~achromatic & (val >= 0.5) & (hue >= 50) & (hue < 65)] = "cream"  # yellowish
    counted = labels[labels != ""]
    if counted.size == 0:
        return {}
    words, counts = np.unique(counted, return_counts=True)
    fractions = {str(wd): float(c) / len(labels) for wd, c in zip(words, counts, strict=True)}
    kept = sorted(((f, wd) for wd, f in fractions.items() if f >= min_fraction), reverse=True)[:max_colors]
    return {wd: round(f, 3) for f, wd in kept}


def describe(attrs: dict[str, Any]) -> str:
    """Attributes → a short English caption, e.g. ``"a brown and white dog, beagle"``."""
    species = attrs.get("species") or "animal"
    if species == "unknown":
        species = attrs.get("species_guess") or "animal"
    colors = list(attrs.get("colors") or [])
    color_text = " and ".join(colors) if len(colors) <= 2 else ", ".join(colors[:-1]) + " and " + colors[-1]
    age = attrs.get("age_group") if attrs.get("age_group") not in (None, "unknown") else None
    phrase = " ".join(p for p in (color_text, age, species) if p)
    text = ("an " if phrase[:1] in ("a", "e", "i", "o", "u") else "a ") + phrase
    if attrs.get("breed"):
        text += f", {attrs['breed']}"
    if attrs.get("markings"):
        text += f", {attrs['markings']}"
    return text


class Captioner:
    model_id: str
    kind: str
    batch_size: int = 16
    #: True when :meth:`caption` can use ImageNet logits computed by the embedder (``logits=`` argument).
    uses_embedder_logits: bool = False

    def caption(
        self, images: list[Image.Image], detections: list[Detection | None], logits: np.ndarray | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        raise NotImplementedError


class AttributeCaptioner(Captioner):
    kind = "attributes"

    def __init__(self, spec: dict[str, Any], settings: Any, embedder: Any = None) -> None:
        self.batch_size = int(spec.get("batch_size", 32))
        self.breed_min = float(spec.get("breed_min_probability", 0.15))
        classifier = spec.get("classifier", "embedder")
        self.classifier: Any = None
        self.uses_embedder_logits = False
        names = None
        if classifier == "embedder":
            if embedder is not None and getattr(embedder, "has_imagenet_head", False):
                self.classifier = embedder
                self.uses_embedder_logits = True
                names = "imagenet"
            elif embedder is None:
                from engine.models import load_embedder

                emb = load_embedder(settings, profile_name=spec.get("_profile"))
                if emb.has_imagenet_head:
                    self.classifier = emb
                    self.uses_embedder_logits = True
                    names = "imagenet"
        elif isinstance(classifier, dict):
            from engine.models.timm_embedder import TimmEmbedder

            emb = TimmEmbedder({"kind": "timm", **classifier}, settings)
            if not emb.has_imagenet_head:
                raise ModelError("the captioner's classifier must be a timm model with an ImageNet-1k head")
            self.classifier = emb
            names = "imagenet"
        self.labels = _imagenet_names() if names else None
        cls_id = getattr(self.classifier, "model_id", "none")
        self.model_id = f"attributes:colors-v1+{cls_id}"

    def caption(
        self, images: list[Image.Image], detections: list[Detection | None], logits: np.ndarray | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        if logits is None and self.classifier is not None and images:
            _, logits = self.classifier.embed_and_classify(images)
        out = []
        for i, (im, det) in enumerate(zip(images, detections, strict=True)):
            attrs: dict[str, Any] = {"source": "attributes"}
            species = det.species if det is not None else "unknown"
            attrs["species"] = species
            if det is not None:
                attrs["species_confidence"] = round(float(det.confidence), 4)
            if logits is not None and self.labels is not None:
                attrs.update(self._breed(np.asarray(logits[i], np.float64), species))
            colors = coat_colors(im)
            attrs["colors"] = list(colors)
            attrs["color_fractions"] = colors
            out.append((describe(attrs), attrs))
        return out

    def _breed(self, logit: np.ndarray, species: str) -> dict[str, Any]:
        p = np.exp(logit - logit.max())
        p /= p.sum()
        dog_mass, cat_mass = (
            float(p[DOG_CLASSES.start : DOG_CLASSES.stop].sum()),
            float(p[CAT_CLASSES.start : CAT_CLASSES.stop].sum()),
        )
        res: dict[str, Any] = {"imagenet_dog": round(dog_mass, 4), "imagenet_cat": round(cat_mass, 4)}
        group = species
        if species not in ("dog", "cat"):
            group = "dog" if dog_mass >= cat_mass else "cat"
            if max(dog_mass, cat_mass) >= 0.5:
                res["species_guess"] = group
        rng = DOG_CLASSES if group == "dog" else CAT_CLASSES
        idx = rng.start + int(np.argmax(p[rng.start : rng.stop]))
        if p[idx] >= self.breed_min and (species in ("dog", "cat") or "species_guess" in res):
            res["breed"] = self.labels[idx].replace("_", " ")
            res["breed_confidence"] = round(float(p[idx]), 4)
        return res


DEFAULT_PROMPT = (
    "Describe the animal in this photo for a lost-and-found pet listing. Answer on one line exactly as "
    "species: <dog|cat|other>; breed: <breed or mixed>; age: <baby|adult|senior>; colors: <coat colours>; "
    "markings: <distinctive markings, collar>."
)

_AGE_WORDS = {
    "baby": "baby",
    "puppy": "baby",
    "kitten": "baby",
    "young": "baby",
    "adult": "adult",
    "senior": "senior",
    "old": "senior",
    "elderly": "senior",
}


def parse_vlm_answer(text: str) -> dict[str, Any]:
    """A structured (or free) VLM answer → attributes with the listing vocabularies."""
    low = text.lower()
    attrs: dict[str, Any] = {"source": "vlm"}

    def field(name: str) -> str | None:
        m = re.search(rf"{name}\s*[:=]\s*([^;\n]+)", low)
        return m.group(1).strip().strip(".") if m else None

    species = field("species") or low
    if re.search(r"\b(dog|puppy|canine)\b", species):
        attrs["species"] = "dog"
    elif re.search(r"\b(cat|kitten|feline)\b", species):
        attrs["species"] = "cat"
    else:
        attrs["species"] = "unknown"
    breed = field("breed")
    if breed and breed not in ("unknown", "none", "n/a", "<breed or mixed>"):
        attrs["breed"] = breed
    age = field("age") or low
    attrs["age_group"] = next((v for k, v in _AGE_WORDS.items() if re.search(rf"\b{k}\b", age)), "unknown")
    from engine.normalize import normalize_colors

    attrs["colors"] = normalize_colors(field("colou?rs?") or "", [], species=attrs["species"])
    markings = field("markings")
    if markings and markings not in ("none", "unknown", "n/a"):
        attrs["markings"] = markings
    return attrs


class VlmCaptioner(Captioner):
    """A transformers image-to-text model. Chat models (with a chat template) get the structured prompt as a user
    message; plain captioners (BLIP, GIT) get ``prompt`` as a text prefix. The raw answer is kept as the caption."""

    kind = "vlm"

    def __init__(self, spec: dict[str, Any], settings: Any) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        ref = spec.get("model") or spec.get("path")
        if not ref:
            raise ModelError("vlm captioner spec needs `model` (a local folder or a hub name)")
        path = resolve(str(ref), settings, what="captioning model")
        local_only = not online()
        self.device = pick_device(spec)
        self.dtype = torch_dtype(spec, self.device)
        self.batch_size = int(spec.get("batch_size", 8))
        self.max_new_tokens = int(spec.get("max_new_tokens", 48))
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=local_only)
        self.model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=local_only, dtype=self.dtype)
        self.model.eval().to(self.device)
        self.chat = spec.get("chat", "auto")
        if self.chat == "auto":
            self.chat = bool(getattr(self.processor, "chat_template", None))
        self.prompt = str(spec.get("prompt") or (DEFAULT_PROMPT if self.chat else "a photo of"))
        name = Path(path).name if Path(path).exists() else str(path)
        self.model_id = f"vlm:{name}:{weights_hash(path) if Path(path).exists() else 'hub'}"
        tok = getattr(self.processor, "tokenizer", None)
        if tok is not None and getattr(tok, "padding_side", None):
            tok.padding_side = "left"  # decoder-only generation needs left padding

    def _generate(self, images: list[Image.Image]) -> list[str]:
        import torch

        if self.chat:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
            texts = [text] * len(images)
            inputs = self.processor(images=[[im] for im in images], text=texts, return_tensors="pt", padding=True)
        else:
            inputs = self.processor(images=images, text=[self.prompt] * len(images), return_tensors="pt", padding=True)
        inputs = {
            k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
            for k, v in inputs.items()
        }
        with torch.inference_mode():
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        if self.chat and "input_ids" in inputs and ids.shape[1] > inputs["input_ids"].shape[1]:
            ids = ids[:, inputs["input_ids"].shape[1] :]
        return [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]

    def caption(
        self, images: list[Image.Image], detections: list[Detection | None], logits: np.ndarray | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        for start in range(0, len(images), self.batch_size):
            chunk = [im.convert("RGB") for im in images[start : start + self.batch_size]]
            for answer, det in zip(self._generate(chunk), detections[start : start + self.batch_size], strict=True):
                attrs = parse_vlm_answer(answer)
                if det is not None and det.species in ("dog", "cat"):
                    if attrs["species"] not in ("dog", "cat"):
                        attrs["species"] = det.species
                    attrs["species_confidence"] = round(float(det.confidence), 4)
                if not attrs.get("colors"):
                    attrs["colors"] = []
                out.append((answer or describe(attrs), attrs))
        return out


def build_captioner(spec: dict[str, Any], settings: Any, embedder: Any = None) -> Captioner:
    kind = spec.get("kind")
    if kind == "attributes":
        return AttributeCaptioner(spec, settings, embedder=embedder)
    if kind == "vlm":
        return VlmCaptioner(spec, settings)
    raise ModelError(f"unknown captioner kind {kind!r} (known: attributes, vlm)")
