"""Per-source settings that jobs outside the crawl need, read from the same sources files the crawl reads.

The sources config (``crawlers/sources.yaml``, then ``settings.crawl.sources_file`` over it, key by key) is the
crawl's, and :mod:`crawlers.sources` validates every key of it. A few of its keys describe the people behind a source
rather than how to crawl it — ``language``: the language its shelters read — and the report, a sibling of the
crawlers that may not import them, needs those. So this module reads the same files for one key at a time, with the
same precedence, and leaves validation to the crawl (a key this module reads is declared in ``crawlers.sources.KEYS``).

The built-in file is found beside this package (``<site-packages>/crawlers/sources.yaml``): the two packages are
installed together from one distribution, and reading a data file is not importing the crawl.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from engine.config import Settings
from engine.errors import HomewardError

BUILTIN_SOURCES = Path(__file__).resolve().parents[1] / "crawlers" / "sources.yaml"

#: The language of a source that names none.
DEFAULT_LANGUAGE = "en"


def _entries(path: Path | str) -> list[dict[str, Any]]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise HomewardError(f"cannot read sources file {str(path)!r}: {exc}") from exc
    entries = data.get("sources") if isinstance(data, dict) else data
    return [e for e in entries or [] if isinstance(e, dict) and e.get("name")]


def source_values(settings: Settings, key: str) -> dict[str, Any]:
    """Source name → its value of ``key``, for every source that sets it (the sources file wins over the built-in)."""
    values: dict[str, Any] = {}
    files: list[Path | str] = [BUILTIN_SOURCES] if BUILTIN_SOURCES.is_file() else []
    if settings.crawl.sources_file:
        files.append(settings.crawl.sources_file)
    for path in files:
        for entry in _entries(path):
            if key in entry:
                values[str(entry["name"])] = entry[key]
    return values


def source_languages(settings: Settings) -> dict[str, str]:
    """Source name → the language code its shelters read (``ru``); sources not listed read :data:`DEFAULT_LANGUAGE`."""
    return {name: str(lang) for name, lang in source_values(settings, "language").items() if lang}
