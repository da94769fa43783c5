"""Identity folders → an identity-disjoint, seeded train/validation split, and P×K batches.

``images_dir/<identity>/<file>.jpg`` (DogFaceNet's layout): every folder is one animal. Validation identities never
appear in training, so validation measures what matters in production — telling apart animals the model never saw.

Several data sets train together when ``images_dir`` names several folders separated by ``os.pathsep`` (``:`` on
Linux, as in ``PATH``), e.g. dog faces and real lost/found photos. Each set is split on its own with the same seed
(so a set's held-out animals do not change when another set joins), and validation is reported per **group**: the
set, and within it each species its ``manifest.csv`` names. A model chosen on the pooled figure would be chosen for
whichever set has the most photos; :func:`group_of` lets the loop weigh every group alike.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import HomewardError
from engine.eval import identity_species

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass(frozen=True)
class Split:
    train: dict[str, list[Path]]
    val: dict[str, list[Path]]
    seed: int
    groups: dict[str, str] = field(default_factory=dict)
    """Identity → validation group (data set, and species where known); empty for one set without species."""

    def items(self, part: str) -> tuple[list[Path], list[int], list[str]]:
        """Flattened ``(paths, integer labels, identity names)`` of ``part`` (``train`` or ``val``)."""
        groups = self.train if part == "train" else self.val
        names = sorted(groups)
        paths: list[Path] = []
        labels: list[int] = []
        for label, name in enumerate(names):
            paths.extend(groups[name])
            labels.extend([label] * len(groups[name]))
        return paths, labels, names


def list_identities(images_dir: str | Path, min_images: int = 2) -> dict[str, list[Path]]:
    """``{identity: sorted image paths}`` for every sub-folder holding at least ``min_images`` images."""
    root = Path(images_dir)
    if not root.is_dir():
        raise HomewardError(f"images dir {str(root)!r} does not exist or is not a folder")
    out: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if len(files) >= min_images:
            out[folder.name] = files
    if len(out) < 4:
        raise HomewardError(f"{root} holds {len(out)} identity folders with >= {min_images} images; need at least 4")
    return out


def dataset_dirs(images_dir: str | Path) -> list[Path]:
    """The folders ``images_dir`` names (one, or several separated by ``os.pathsep``)."""
    dirs = [Path(p) for p in str(images_dir).split(os.pathsep) if p]
    if not dirs:
        raise HomewardError("no images folder given")
    return dirs


def dataset_name(folder: Path) -> str:
    """``../shared/data/realpets/images`` → ``realpets``: a folder called ``images`` is named by its parent."""
    folder = folder.resolve()
    return folder.parent.name if folder.name == "images" else folder.name


def split_datasets(images_dir: str | Path, val_fraction: float, seed: int, min_images: int = 2) -> Split:
    """Every data set of ``images_dir`` listed and split on its own (:func:`split_identities`, the same seed), then
    joined. With several sets, identities are named ``<set>-<identity>``; groups name the set and species."""
    dirs = dataset_dirs(images_dir)
    names = [dataset_name(d) for d in dirs]
    if len(set(names)) != len(names):
        raise HomewardError(f"two training sets share a name ({', '.join(names)}): give each its own folder name")
    train: dict[str, list[Path]] = {}
    val: dict[str, list[Path]] = {}
    groups: dict[str, str] = {}
    for folder, name in zip(dirs, names, strict=True):
        part = split_identities(list_identities(folder, min_images), val_fraction, seed)
        species = identity_species(folder)
        for joined, own in ((train, part.train), (val, part.val)):
            for ident, files in own.items():
                key = f"{name}-{ident}" if len(dirs) > 1 else ident
                joined[key] = files
                if len(dirs) > 1 or species:
                    groups[key] = f"{name}/{species[ident]}" if ident in species else name
    return Split(train=train, val=val, seed=seed, groups=groups)


def split_identities(identities: dict[str, list[Path]], val_fraction: float, seed: int) -> Split:
    """Shuffle identity names with ``seed`` and hold out ``val_fraction`` of them (at least 2 each side)."""
    if not 0.0 < val_fraction < 1.0:
        raise HomewardError(f"val_fraction must be in (0, 1), got {val_fraction}")
    names = sorted(identities)
    random.Random(seed).shuffle(names)
    n_val = min(max(2, round(len(names) * val_fraction)), len(names) - 2)
    val = set(names[:n_val])
    return Split(
        train={n: identities[n] for n in sorted(identities) if n not in val},
        val={n: identities[n] for n in sorted(val)},
        seed=seed,
    )


def link_identities(groups: dict[str, list[Path]], dest: str | Path) -> Path:
    """A folder of symlinks, one per identity, to the identities' own folders: ``homeward eval DEST`` then scores
    exactly these identities (e.g. a checkpoint's held-out ones) without copying a photo."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name, files in sorted(groups.items()):
        folders = {f.parent.resolve() for f in files}
        if len(folders) != 1:
            raise HomewardError(f"identity {name!r} spans {len(folders)} folders; expected one folder per identity")
        (dest / name).symlink_to(folders.pop(), target_is_directory=True)
    return dest


def data_fingerprint(images_dir: str | Path, identities: dict[str, list[Path]]) -> str:
    """sha256 of ``manifest.csv`` beside (or inside) the images folder, else of the sorted relative paths + sizes;
    several data sets: of their fingerprints."""
    dirs = dataset_dirs(images_dir)
    if len(dirs) > 1:
        parts = [data_fingerprint(d, list_identities(d)) for d in dirs]
        return "sets:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()
    root = dirs[0]
    for manifest in (root / "manifest.csv", root.parent / "manifest.csv"):
        if manifest.is_file():
            return "manifest:" + hashlib.sha256(manifest.read_bytes()).hexdigest()
    h = hashlib.sha256()
    for name in sorted(identities):
        for p in identities[name]:
            h.update(f"{name}/{p.name}:{p.stat().st_size}\n".encode())
    return "listing:" + h.hexdigest()


class PKSampler:
    """Batches of ``p`` identities × ``k`` images each (sampled with replacement for identities with fewer than
    ``k``), so every batch holds positives and hard negatives. One epoch ≈ one pass over the images."""

    def __init__(
        self, labels: Sequence[int], p: int, k: int, *, seed: int = 0, batches: int | None = None, rank: int = 0
    ) -> None:
        self.by_label: dict[int, list[int]] = {}
        for i, lab in enumerate(labels):
            self.by_label.setdefault(int(lab), []).append(i)
        if len(self.by_label) < 2:
            raise HomewardError("PK sampling needs at least 2 identities")
        self.p = min(p, len(self.by_label))
        self.k = k
        self.seed = seed
        self.rank = rank
        self.epoch = 0
        self.batches = batches or max(1, len(labels) // (self.p * self.k))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch * 1_009 + self.rank)
        labels = sorted(self.by_label)
        for _ in range(self.batches):
            batch: list[int] = []
            for lab in rng.sample(labels, self.p):
                pool = self.by_label[lab]
                picks = rng.sample(pool, self.k) if len(pool) >= self.k else [rng.choice(pool) for _ in range(self.k)]
                batch.extend(picks)
            yield batch
