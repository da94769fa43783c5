"""Shared fixtures: one local Ray per test session, per-test data dirs, and ../shared with a clear skip."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import engine  # noqa: F401  (sets the offline switches before any model library is imported)
from engine.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HW_SHARED_DIR", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` (real pages, photos, weights); tests that need it skip on a user's clone without it."""
    if not (SHARED / "data").is_dir():
        pytest.skip(f"needs the real data folder {SHARED} (present in the team's CI, absent in a user's clone)")
    return SHARED


@pytest.fixture(scope="session")
def models_dir(shared_dir: Path) -> Path:
    return shared_dir / "models"


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    """Settings rooted in a fresh temp data dir, with Ray sized for this 2-core machine."""
    return load_settings(
        overrides={"data_dir": str(tmp_path / "data"), "ray": {"num_cpus": 2, "object_store_mb": 512}},
        environ={},
    )


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """One local Ray for the whole session: ``ray.init`` costs ~5 s and ``shutdown`` ~1.5 s."""
    import ray

    from engine.runtime import ray_session

    cfg = load_settings(overrides={"ray": {"num_cpus": 2, "object_store_mb": 512}}, environ={})
    with ray_session(cfg):
        yield
    assert not ray.is_initialized()
