"""cluster.yaml against Ray's own cluster-launcher schema, offline (private API of the pinned Ray)."""

import copy
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[1] / "cluster.yaml"


def load() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_is_valid_for_the_ray_launcher():
    config = prepare_config(load())
    validate_config(config)
    assert config["available_node_types"]["gpu_worker"]["max_workers"] >= 1
    assert "bootembed[gpu]" in " ".join(config["setup_commands"])


def test_the_validation_catches_a_broken_file():
    broken = copy.deepcopy(load())
    broken["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError, match="`head_node_type` must be one of `available_node_types`"):
        validate_config(prepare_config(broken))
