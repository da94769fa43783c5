"""Starting and joining Ray with bounded resources.

A local Ray gets an explicit CPU count, a capped object store, no dashboard and its temp files under the data dir:
Ray's own defaults (every core, 30% of RAM for objects, token auth files in ~) are wrong for a laptop or a 2-core
CI box. ``ray.address`` joins a running cluster instead; nothing else in the jobs changes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from urllib.parse import urlparse

from engine.config import ConfigError, Settings

log = logging.getLogger(__name__)


def _check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """Fail in seconds with a clear message instead of letting ``ray.init`` retry for minutes."""
    if address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    host, port = parsed.hostname, parsed.port or (10001 if parsed.scheme == "ray" else 6379)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ConfigError(f"Ray address {address!r} is unreachable ({host}:{port}: {exc.strerror or exc})") from exc


@contextlib.contextmanager
def ray_session(settings: Settings) -> Iterator[None]:
    """Use the Ray already initialised in this process, else start/join one for the block and shut it down after."""
    import ray

    if ray.is_initialized():
        yield
        return
    cfg = settings.ray
    if cfg.address:
        _check_reachable(cfg.address)
        ray.init(address=cfg.address, log_to_driver=True, logging_level=logging.WARNING)
    else:
        # Unix socket paths are limited to 107 bytes, so Ray's temp dir must stay short.
        temp_dir = tempfile.mkdtemp(prefix="hw-ray-")
        ray.init(
            num_cpus=cfg.num_cpus or os.cpu_count() or 1,
            num_gpus=cfg.num_gpus,
            object_store_memory=cfg.object_store_mb * 1024 * 1024,
            include_dashboard=False,
            _temp_dir=temp_dir,
            logging_level=logging.WARNING,
            log_to_driver=True,
        )
    try:
        yield
    finally:
        ray.shutdown()


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0)) if ray.is_initialized() else 0.0
