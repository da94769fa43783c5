from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import ConfigError, Settings, load_settings


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
