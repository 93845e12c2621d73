"""cluster.yaml (AWS) and cluster_onprem.yaml pass Ray's own cluster launcher checks, as `ray up` runs them.

`ray up` fills in the provider's defaults (`prepare_config`), then validates against ray-schema.json
(`validate_config`); the provider bootstrap after that needs cloud credentials or ssh, so it is not run.
"""

import copy

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from lmforge import REPO_DIR as REPO  # the checkout


def _load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def _checked(raw: dict) -> dict:
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


def test_cloud_cluster_has_a_cpu_head_and_8_gpu_workers_that_autoscale():
    config = _checked(_load("cluster.yaml"))
    assert config["provider"]["type"] == "aws"
    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["resources"] == {"CPU": 0}
    gpu = nodes["gpu_8x"]
    assert gpu["resources"]["GPU"] == 8 and gpu["min_workers"] < gpu["max_workers"] <= config["max_workers"]


def test_onprem_cluster_lists_its_machines():
    config = _checked(_load("cluster_onprem.yaml"))
    assert config["provider"]["type"] == "local" and config["provider"]["head_ip"]
    assert config["max_workers"] == len(config["provider"]["worker_ips"])


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster_onprem.yaml"])
def test_every_node_installs_the_mounted_checkout_with_the_gpu_extra(name):
    config = _load(name)
    (repo_on_node, local), = config["file_mounts"].items()
    assert local == "."  # `ray up` runs from the repo root
    assert any(f'pip install -q -e "{repo_on_node}[gpu]"' in command for command in config["setup_commands"])
    assert any("/mnt/shared" in command for command in config["setup_commands"])


def test_a_misspelled_key_is_caught_by_the_schema():
    config = _load("cluster.yaml")
    config["available_node_types"]["gpu_8x"]["min_worker"] = 1
    with pytest.raises(jsonschema.ValidationError, match="'min_worker' was unexpected"):
        _checked(config)
