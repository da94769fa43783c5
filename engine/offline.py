"""Offline switches for the model libraries, set before any of them is imported.

Homeward must never fetch weights, fonts or update checks at run time: this machine (and most shelter servers) has
no route to the model hubs, and an unanswered hub lookup blocks for 26-52 s before failing. ``engine/__init__``
imports this module first, so every entry point (CLI, Ray workers, Scrapy) gets the switches.
Set ``HOMEWARD_ONLINE=1`` to allow hub downloads on a machine that is online.
"""

from __future__ import annotations

import os
from pathlib import Path


def apply_offline_switches() -> None:
    online = os.environ.get("HOMEWARD_ONLINE", "") == "1"
    if not online:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    default_dir = Path.home() / ".cache" / "homeward" / "ultralytics"
    config_dir = Path(os.environ.setdefault("YOLO_CONFIG_DIR", str(default_dir)))
    _install_font(config_dir)


def _install_font(config_dir: Path) -> None:
    """Ultralytics downloads Arial.ttf when it first draws; give it matplotlib's DejaVuSans instead."""
    target = config_dir / "Ultralytics" / "Arial.ttf"
    if target.exists():
        return
    try:
        import matplotlib

        source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    except (ImportError, OSError):
        pass  # drawing is optional; detection itself never needs the font
