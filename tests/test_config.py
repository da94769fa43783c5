from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest

from engine.config import ConfigError, Settings, load_settings

REPO = Path(__file__).resolve().parents[1]


def test_layers_override_in_order(tmp_path: Path) -> None:
    cfg = tmp_path / "homeward.yaml"
    cfg.write_text("data_dir: /from/file\nmatch:\n  top_k: 3\n  tile_size: 128\n")
    env = {"HOMEWARD_MATCH__TOP_K": "7", "HOMEWARD_RAY__NUM_CPUS": "1"}
    s = load_settings(cfg, overrides={"match": {"tile_size": "64"}}, environ=env)
    assert s.data_dir == "/from/file"
    assert s.match.top_k == 7  # env beats file
    assert s.match.tile_size == 64  # flags beat env and file
    assert s.ray.num_cpus == 1
    assert s.lance == "/from/file/lance"
    assert s.crawl == Settings().crawl  # untouched sections keep their defaults


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"match": {"topk": 1}}, "unknown config key 'match.topk'"),
        ({"match": {"top_k": "many"}}, "'match.top_k' expects int"),
        ({"ray": 3}, "'ray' is a section"),
        ({"crawl": {"obey_robots": "maybe"}}, "'crawl.obey_robots' expects bool"),
        ({"match": {"weights": {"image": "high"}}}, "'match.weights.image' expects float"),
    ],
)
def test_bad_values_name_the_key(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(overrides=overrides, environ={})


def test_bad_config_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_settings(bad, environ={})
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "missing.yaml", environ={})


def test_env_unknown_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="from environment"):
        load_settings(environ={"HOMEWARD_MATCH__NOPE": "1"})


def test_unwritable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="not writable"):
        Settings(data_dir=str(blocker / "sub")).ensure_writable()


def _is_environ(node: ast.expr) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ"
    )


def _environment_names_read() -> set[str]:
    """Every literal name the packages read from the environment (``os.environ.get("X")``, ``environ["X"]``,
    ``os.getenv("X")``)."""
    names = set()
    for pkg in ("engine", "crawlers", "dashboards", "ray_jobs"):
        for path in (REPO / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
                    owner, method = node.func.value, node.func.attr
                    if not ((method == "get" and _is_environ(owner)) or method == "getenv"):
                        continue
                    arg = node.args[0]
                elif isinstance(node, ast.Subscript) and _is_environ(node.value):
                    arg = node.slice
                else:
                    continue
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.isupper():
                    names.add(arg.value)
    return names


def _is_key(path: list[str]) -> bool:
    section: typing.Any = Settings
    for part in path:
        hints = typing.get_type_hints(section)
        if part not in hints:
            return False
        section = hints[part]
    return not dataclasses.is_dataclass(section)


def test_every_homeward_variable_read_is_a_config_key() -> None:
    """The loader turns each ``HOMEWARD_*`` variable into a key, so a switch that is not one must use ``HW_``."""
    read = _environment_names_read()
    assert {"HW_COMPILE", "HOMEWARD_MODELS_DIR"} <= read  # the scan sees the reads it judges
    special = {"HOMEWARD_CONFIG", "HOMEWARD_ONLINE"}  # skipped by the loader: the file, and hub downloads
    strays = sorted(
        name
        for name in read - special
        if name.startswith("HOMEWARD_") and not _is_key(name[len("HOMEWARD_") :].lower().split("__"))
    )
    assert not strays, f"HOMEWARD_ variables that are not config keys (use the HW_ prefix): {strays}"
