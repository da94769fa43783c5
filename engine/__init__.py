"""Homeward's domain core: configuration, schema, storage, models, scoring and the ``homeward`` CLI."""

from engine.offline import apply_offline_switches

apply_offline_switches()

__version__ = "0.1.0"
