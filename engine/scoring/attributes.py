"""Attribute agreement: colour, sex, size and breed, as evidence in [-1, 1] per pair.

Each listing's attributes are encoded once into small arrays (codes, multi-hot colour and breed-token vectors);
pairs are then compared with broadcasting tensor ops, so a whole tile costs two tiny matrix products. An attribute
missing on either side contributes nothing (it neither helps nor hurts). Words in English and Russian are
understood (the real posts are both).

Evidence per attribute (then a weighted sum over all four, unknowns counting zero):
* colour: overlap coefficient |A∩B| / min(|A|, |B|) mapped to [-1, 1]; "black" vs "black and white" agrees.
* sex: equal +0.3 (half of all pairs agree by chance), different -1 (rarely misreported).
* size: equal +0.5, one step apart 0, further -1 (size is often misjudged by one step).
* breed: same +1, sharing a word ("labrador retriever" / "labrador mix") +0.4, else -0.3 (mixed-breed and
  unknown labels count as missing: finders guess breeds badly).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

COLOURS = (
    "black", "white", "grey", "brown", "tan", "cream", "red",
    "brindle", "merle", "tabby", "tortoiseshell", "spotted",
)  # fmt: skip
_SYNONYMS = {
    "gray": "grey", "silver": "grey", "blue": "grey", "slate": "grey", "smoke": "grey",
    "chocolate": "brown", "liver": "brown", "chestnut": "brown", "mahogany": "brown",
    "ginger": "red", "orange": "red", "rust": "red", "rufous": "red", "copper": "red",
    "fawn": "cream", "beige": "cream", "yellow": "cream", "gold": "cream", "golden": "cream",
    "apricot": "cream", "buff": "cream", "wheaten": "cream", "blonde": "cream", "blond": "cream",
    "sable": "tan", "caramel": "tan", "tawny": "tan",
    "tiger": "brindle", "marble": "merle", "dapple": "merle", "striped": "tabby",
    "tortie": "tortoiseshell", "torbie": "tortoiseshell", "spots": "spotted", "dalmatian": "spotted",
}  # fmt: skip
_MULTI = {
    "tricolor": ("black", "white", "tan"),
    "tricolour": ("black", "white", "tan"),
    "calico": ("white", "red", "black"),
}
_RU_STEMS = (
    ("черн", "black"), ("чёрн", "black"), ("бел", "white"), ("сер", "grey"), ("голуб", "grey"),
    ("дымч", "grey"), ("корич", "brown"), ("шокол", "brown"), ("рыж", "red"), ("палев", "cream"),
    ("беж", "cream"), ("крем", "cream"), ("желт", "cream"), ("жёлт", "cream"), ("золот", "cream"),
    ("абрикос", "cream"), ("песоч", "tan"), ("подпал", "tan"), ("тигр", "brindle"), ("мрамор", "merle"),
    ("полосат", "tabby"), ("черепах", "tortoiseshell"), ("пятнист", "spotted"), ("трехцвет", "calico"),
    ("трёхцвет", "calico"),
)  # fmt: skip
SEX_CODES = {"male": 1, "m": 1, "кобель": 1, "мальчик": 1, "female": 2, "f": 2, "сука": 2, "девочка": 2}
SIZE_CODES = {"small": 0, "medium": 1, "large": 2, "xlarge": 3, "extra large": 3, "xl": 3}
_BREED_STOP = {
    "mix", "mixed", "mixes", "cross", "crossbreed", "breed", "dog", "cat", "unknown", "none", "n/a", "na", "other",
    "mongrel", "mutt", "метис", "дворняга", "дворняжка", "беспородная", "беспородный", "помесь", "порода", "and",
    "with", "x", "unsure", "probably", "maybe", "like", "type", "looks",
}  # fmt: skip
BREED_BUCKETS = 64
SUB_WEIGHTS = {"colour": 1.0, "sex": 1.0, "size": 0.5, "breed": 0.7}


def canonical_colours(values: Sequence[str] | str | None) -> set[str]:
    """Map free-form colour words ("Chocolate/White", "рыжий с белым") to the canonical palette."""
    if not values:
        return set()
    if isinstance(values, str):
        values = [values]
    out: set[str] = set()
    for value in values:
        for word in re.findall(r"[^\W\d_]+", str(value).lower()):
            if word in COLOURS:
                out.add(word)
            elif word in _SYNONYMS:
                out.add(_SYNONYMS[word])
            elif word in _MULTI:
                out.update(_MULTI[word])
            else:
                for stem, colour in _RU_STEMS:
                    if word.startswith(stem):
                        out.update(_MULTI.get(colour, (colour,)))
                        break
    return out


def breed_tokens(breed: str | None) -> list[str]:
    words = re.findall(r"[^\W\d_]+", (breed or "").lower())
    return [w for w in words if w not in _BREED_STOP and len(w) > 1]


@dataclass
class AttributeCodes:
    sex: torch.Tensor  # (n,) int64: 0 unknown, 1 male, 2 female
    size: torch.Tensor  # (n,) int64: -1 unknown, 0 small .. 3 xlarge
    colours: torch.Tensor  # (n, C) float32 multi-hot
    n_colours: torch.Tensor  # (n,) float32
    breed_id: torch.Tensor  # (n,) int64, -1 unknown/mixed
    breed_tok: torch.Tensor  # (n, BREED_BUCKETS) float32 multi-hot of hashed words

    def take(self, idx: torch.Tensor | np.ndarray) -> AttributeCodes:
        i = torch.as_tensor(idx, dtype=torch.int64)
        return AttributeCodes(*(getattr(self, f)[i] for f in self.__dataclass_fields__))

    def to(self, device: torch.device) -> AttributeCodes:
        return AttributeCodes(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def _hashable(value: Sequence[str] | str | None) -> tuple[str, ...] | str | None:
    return value if value is None or isinstance(value, str) else tuple(value)


def encode(
    sexes: Sequence[str | None],
    sizes: Sequence[str | None],
    colours: Sequence[Sequence[str] | str | None],
    breeds: Sequence[str | None],
) -> AttributeCodes:
    n = len(sexes)
    sex = np.array([SEX_CODES.get((s or "").strip().lower(), 0) for s in sexes], dtype=np.int64)
    size = np.array([SIZE_CODES.get((s or "").strip().lower(), -1) for s in sizes], dtype=np.int64)
    # each distinct colour list and breed is parsed once: a region repeats a few hundred of them
    col_rows: dict[Any, int] = {}
    col_of = np.array([col_rows.setdefault(_hashable(v), len(col_rows)) for v in colours], dtype=np.int64)
    col_codes = np.zeros((len(col_rows), len(COLOURS)), dtype=np.float32)
    for value, row in col_rows.items():
        for c in canonical_colours(value):
            col_codes[row, COLOURS.index(c)] = 1.0
    breed_rows: dict[str | None, int] = {}
    breed_of = np.array([breed_rows.setdefault(b, len(breed_rows)) for b in breeds], dtype=np.int64)
    breed_ids = np.full(len(breed_rows), -1, dtype=np.int64)
    breed_codes = np.zeros((len(breed_rows), BREED_BUCKETS), dtype=np.float32)
    for breed, row in breed_rows.items():
        toks = breed_tokens(breed)
        if toks:
            breed_ids[row] = zlib.crc32(" ".join(sorted(toks)).encode()) & 0x7FFFFFFF
            for t in toks:
                breed_codes[row, zlib.crc32(t.encode()) % BREED_BUCKETS] = 1.0
    col = col_codes[col_of].reshape(n, len(COLOURS))
    bid = breed_ids[breed_of].reshape(n)
    btok = breed_codes[breed_of].reshape(n, BREED_BUCKETS)
    return AttributeCodes(
        torch.from_numpy(sex),
        torch.from_numpy(size),
        torch.from_numpy(col),
        torch.from_numpy(col.sum(1)),
        torch.from_numpy(bid),
        torch.from_numpy(btok),
    )


def _pair(a: torch.Tensor, b: torch.Tensor, outer: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return (a[:, None], b[None, :]) if outer else (a, b)


def _inner(a: torch.Tensor, b: torch.Tensor, outer: bool) -> torch.Tensor:
    return a @ b.T if outer else (a * b).sum(-1)


def sub_terms(sa, sb, za, zb, inter, ca, cb, ba, bb, shared) -> dict[str, torch.Tensor]:
    """Per-attribute evidence from broadcastable codes: the definition, which ``kernel`` folds into lookup tables
    (tests hold the two equal)."""
    nan = float("nan")
    sex = torch.where((sa > 0) & (sb > 0), torch.where(sa == sb, 0.3, -1.0), nan)
    gap = (za - zb).abs()
    size = torch.where(gap == 0, 0.5, torch.where(gap == 1, 0.0, -1.0))
    size = torch.where((za >= 0) & (zb >= 0), size, nan)
    smaller = torch.minimum(ca, cb)
    colour = torch.where(smaller > 0, 2.0 * inter / smaller.clamp(min=1.0) - 1.0, nan)
    breed = torch.where(ba == bb, 1.0, torch.where(shared > 0, 0.4, -0.3))
    breed = torch.where((ba >= 0) & (bb >= 0), breed, nan)
    return {"colour": colour.float(), "sex": sex.float(), "size": size.float(), "breed": breed.float()}


def evidence_of(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """Weighted sum of the sub-terms over all four weights: an unknown attribute counts as zero evidence."""
    total = sum(SUB_WEIGHTS.values())
    out = SUB_WEIGHTS["colour"] * torch.nan_to_num(terms["colour"], nan=0.0)
    for k in ("sex", "size", "breed"):
        out = out + SUB_WEIGHTS[k] * torch.nan_to_num(terms[k], nan=0.0)
    return out / total


def attribute_terms(a: AttributeCodes, b: AttributeCodes, outer: bool) -> dict[str, torch.Tensor]:
    """Per-attribute evidence (NaN = unknown on a side) plus ``evidence`` (weighted, unknowns as 0) and ``known``
    (how many attributes both sides state). ``outer``: all pairs of a × b; else element-wise pairs."""
    sa, sb = _pair(a.sex, b.sex, outer)
    za, zb = _pair(a.size, b.size, outer)
    ca, cb = _pair(a.n_colours, b.n_colours, outer)
    ba, bb = _pair(a.breed_id, b.breed_id, outer)
    terms = sub_terms(sa, sb, za, zb, _inner(a.colours, b.colours, outer), ca, cb, ba, bb,
                      _inner(a.breed_tok, b.breed_tok, outer))  # fmt: skip
    known = sum((~torch.isnan(v)).to(torch.int32) for v in terms.values())
    terms["evidence"] = evidence_of(terms)
    terms["known"] = known
    return terms
