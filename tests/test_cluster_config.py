"""cluster.yaml is checked with Ray's own launcher validation (the JSON schema ``ray up`` applies)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_passes_ray_validation(raw: dict[str, Any]) -> None:
    cfg = prepare_config(copy.deepcopy(raw))
    validate_config(cfg)
    gpu = cfg["available_node_types"]["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 1
    assert gpu["max_workers"] > gpu["min_workers"] == 0, "the GPU group must autoscale from zero"
    assert cfg["available_node_types"][cfg["head_node_type"]]["resources"].get("GPU", 0) == 0
    assert any("pip install" in c and "homeward" in c for c in cfg["setup_commands"])


def test_validation_rejects_a_broken_config(raw: dict[str, Any]) -> None:
    broken = copy.deepcopy(raw)
    broken["available_node_types"]["gpu_worker"]["max_workers"] = "many"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))
