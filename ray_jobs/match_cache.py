"""The vectors a match run placed, kept on local disk for the next run: an incremental run copies the vectors of
every listing whose fingerprint is unchanged instead of reading them from LanceDB again.

An incremental run at 50k listings with 500 new reads the vectors of ~85 % of the region (the listings the new ones
may pair with); LanceDB's takes and normalising them were 1.0-1.4 s of its 4 s. The cache holds each side as the run
left it: every listing's normalised image vectors (``det_emb``, grouped by listing) and its finished text vector,
under the listing's fingerprint (:func:`engine.scoring.incremental.side_fingerprints`). A fingerprint covers the keys
of the listing's usable detection rows in read order (id, write stamp, models, species, confidence), so equal
fingerprints mean the same rows in the same order, and the copied bits are what reading them again would give: the
publication stays identical to a full rematch's.

Trade-offs: the cache is a copy of the sides on the match driver's disk (at 50k listings / 125k photos of 512 + 384
dimensions, 0.3 GB; the files are memory-mapped, so reading costs page cache, not heap). A full run — ``--full``, a
model or scoring change — reads every vector from LanceDB (the source of truth) and rewrites the cache; an
incremental run rewrites it only when it read more than :data:`REFRESH_SHARE` of its rows from LanceDB, so small
rounds pay no write. Anything unexpected in the files (another model or width, torn or foreign files) makes the
run ignore the cache with a warning and read from LanceDB. ``match.vector_cache: false`` turns it off.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from engine.scoring.fuse import Side

log = logging.getLogger(__name__)

FORMAT = 1
REFRESH_SHARE = 0.1
"""An incremental run rewrites the cache when more than this share of the detection rows it placed came from
LanceDB (the listings changed since the cache was written): later runs then copy them too."""
_FINGERPRINT = "S32"  # side_fingerprints: 16-byte blake2b digests as hex


@dataclass(frozen=True)
class CacheKey:
    """What the cached vectors depend on beyond each listing's fingerprint."""

    embed_model: str | None
    text_model: str | None
    image_dim: int
    text_dim: int

    def as_dict(self) -> dict[str, object]:
        return {"format": FORMAT, "embed_model": self.embed_model, "text_model": self.text_model,
                "image_dim": self.image_dim, "text_dim": self.text_dim}  # fmt: skip


class VectorCache:
    """One folder per side (``lost``, ``found``) under ``root``: ``meta.json``, ``listing_ids.npy`` (in the side's
    order: ascending), ``fingerprints.npy`` (per listing; empty: not cached), ``offsets.npy`` (each listing's first
    ``det_emb`` row), ``det_emb.npy``, ``text.npy``."""

    def __init__(self, root: str | os.PathLike[str], key: CacheKey) -> None:
        self.root = Path(root)
        self.key = key

    def fill(self, name: str, side: Side, fingerprints: np.ndarray) -> np.ndarray:
        """Copy the cached vectors of every listing of ``side`` whose fingerprint (``fingerprints``, per listing)
        is the one cached for it; → mask of the listings filled. A missing or unusable cache fills none.

        Both the side and the cache are in listing-id order, so listings are paired by a binary search, and the
        unchanged listings between two changed ones are one run of rows in both: each run is read from the files
        straight into the side's arrays (at 50k listings with 500 new, ~1,000 reads instead of gathering 125k
        rows one by one)."""
        filled = np.zeros(side.n, bool)
        if not side.n:
            return filled
        try:
            cached = self._open(name)
            if cached is None:
                return filled
            try:
                dst, src = self._pair(cached, side, fingerprints)
                self._copy(cached, side, dst, src)
            except BaseException:
                side.text.numpy()[:] = 0  # vectors read from LanceDB are added onto these rows: none half-copied
                raise
            finally:
                cached.close()
        except (OSError, ValueError) as exc:
            log.warning("match: ignoring the vector cache of the %s side (%s); reading from LanceDB", name, exc)
            return filled
        filled[dst] = True
        return filled

    def write(self, name: str, side: Side, fingerprints: np.ndarray, filled: np.ndarray) -> None:
        """Replace the ``name`` side's cache by ``side``'s vectors of the listings in mask ``filled`` (the others are
        stored without a fingerprint, so no run copies them). Written beside the old folder and swapped in by
        renames: a run reading meanwhile sees the old cache, none, or the new one."""
        fps = np.where(filled & np.not_equal(fingerprints, None), fingerprints, "").astype(_FINGERPRINT)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        np.save(tmp / "listing_ids.npy", side.listing_ids.astype(str))
        np.save(tmp / "fingerprints.npy", fps)
        np.save(tmp / "offsets.npy", side.det_offsets.numpy())
        np.save(tmp / "det_emb.npy", side.det_emb.numpy())
        np.save(tmp / "text.npy", side.text.numpy())
        (tmp / "meta.json").write_text(json.dumps({**self.key.as_dict(), "listings": side.n}))
        final, old = self.root / name, self.root / f".{name}.{os.getpid()}.old"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)

    def _open(self, name: str) -> _Cached | None:
        """The ``name`` side's cache, every file opened through one handle on its folder: a run swapping in a new
        cache meanwhile renames the folder away, so the files read are all of one cache (or opening fails)."""
        try:
            folder = os.open(self.root / name, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return None

        def opener(path: str, flags: int) -> int:
            return os.open(path, flags, dir_fd=folder)

        files: list[BinaryIO] = []
        try:
            with open("meta.json", "rb", opener=opener) as f:
                meta = json.loads(f.read())
            if not isinstance(meta, dict) or not isinstance(meta.get("listings"), int):
                raise ValueError("meta.json does not describe a cache")
            if {k: meta.get(k) for k in self.key.as_dict()} != self.key.as_dict():
                return None  # written for another model or width: the run rewrites it if it reads enough
            small = []
            for part in ("listing_ids", "fingerprints", "offsets"):
                with open(f"{part}.npy", "rb", opener=opener) as f:
                    small.append(np.load(f, allow_pickle=False))
            files = [open(f"{part}.npy", "rb", buffering=0, opener=opener) for part in ("det_emb", "text")]  # noqa: SIM115
            (emb_shape, emb_at), (text_shape, text_at) = (_float32_header(f) for f in files)
            ids, fps, offsets = small
            n = meta["listings"]
            if not (
                ids.shape == (n,) and ids.dtype.kind == "U" and fps.shape == (n,)
                and fps.dtype == np.dtype(_FINGERPRINT) and offsets.shape == (n + 1,) and offsets.dtype == np.int64
                and text_shape == (n, self.key.text_dim) and len(emb_shape) == 2
                and emb_shape[1] == self.key.image_dim and int(offsets[0]) == 0 and int(offsets[-1]) == emb_shape[0]
                and bool((np.diff(offsets) >= 0).all()) and bool((ids[1:] > ids[:-1]).all())
            ):  # fmt: skip
                raise ValueError(f"{self.root / name} does not hold consistent vector files")
        except BaseException:
            for f in files:
                f.close()
            raise
        finally:
            os.close(folder)
        return _Cached(ids, fps, offsets, files[0], emb_at, files[1], text_at)

    @staticmethod
    def _pair(cached: _Cached, side: Side, fingerprints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(side listings, their cache rows) whose listing id and fingerprint are both the cached ones."""
        if not len(cached.ids):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        ids = side.listing_ids.astype(str)
        at = np.minimum(np.searchsorted(cached.ids, ids), len(cached.ids) - 1)
        current = np.where(np.not_equal(fingerprints, None), fingerprints, "").astype(_FINGERPRINT)
        counts = side.det_counts.numpy()
        # equal fingerprints mean equal rows; a count that differs anyway means foreign files: not trusted
        hit = ((cached.ids[at] == ids) & (cached.fingerprints[at] == current) & (current != b"")
               & (np.diff(cached.offsets)[at] == counts))  # fmt: skip
        return np.flatnonzero(hit), at[hit]

    @staticmethod
    def _copy(cached: _Cached, side: Side, dst: np.ndarray, src: np.ndarray) -> None:
        """Copy listings ``src`` of the cache into listings ``dst`` of the side, a run of neighbours at a time."""
        if not len(dst):
            return
        breaks = np.flatnonzero((np.diff(dst) != 1) | (np.diff(src) != 1)) + 1
        starts, ends = np.r_[0, breaks], np.r_[breaks, len(dst)]
        first, last, from_first = dst[starts], dst[ends - 1] + 1, src[starts]
        text = side.text.numpy()
        det_emb = side.det_emb.numpy()
        offsets = side.det_offsets.numpy()
        for a, b, c in zip(first.tolist(), last.tolist(), from_first.tolist(), strict=True):
            _read_rows(cached.text, cached.text_at, c, text[a:b])
            if offsets[b] > offsets[a]:
                _read_rows(cached.det_emb, cached.det_emb_at, int(cached.offsets[c]), det_emb[offsets[a] : offsets[b]])


@dataclass(frozen=True)
class _Cached:
    ids: np.ndarray
    fingerprints: np.ndarray
    offsets: np.ndarray
    det_emb: BinaryIO
    det_emb_at: int  # byte offset of the first row
    text: BinaryIO
    text_at: int

    def close(self) -> None:
        self.det_emb.close()
        self.text.close()


def _float32_header(f: BinaryIO) -> tuple[tuple[int, ...], int]:
    """(shape, byte offset of the data) of a C-ordered float32 ``.npy`` file whose data is all there."""
    major, _ = np.lib.format.read_magic(f)
    if major not in (1, 2):
        raise ValueError(f"{f.name}: .npy format {major} not written by this cache")
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(f)
    at = f.tell()
    if fortran or dtype != np.float32 or os.fstat(f.fileno()).st_size < at + math.prod(shape) * 4:
        raise ValueError(f"{f.name} is not a complete C-ordered float32 array")
    return shape, at


def _read_rows(f: BinaryIO, data_at: int, first_row: int, out: np.ndarray) -> None:
    """Rows ``first_row …`` of a C-ordered float32 ``.npy`` whose data starts at byte ``data_at``, into ``out``."""
    view = memoryview(out).cast("B")
    f.seek(data_at + first_row * out[0].nbytes)
    if f.readinto(view) != len(view):
        raise ValueError(f"{f.name} is shorter than its header says")
