"""Homeward's spiders: one per site (``<site>.py``), the config-driven ``configurable`` spider, and ``base``."""
