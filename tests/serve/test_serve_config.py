"""ServeConfig, the `serve deploy` file and the `serve run` target, without starting Ray."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lmforge import REPO_DIR as REPO  # the checkout
from lmforge.config import ConfigError, ServeConfig, load_config
from lmforge.serve.run import CONFIG_ENV, write_deploy_config


def test_demo_config_loads_with_cpu_defaults():
    cfg = load_config(ServeConfig, REPO / "configs/demo/serve.yaml")
    assert cfg.accelerator == "cpu" and cfg.env["VLLM_CPU_KVCACHE_SPACE"] == "1" and cfg.ray.num_cpus == 8


def test_cluster_config_asks_for_gpus_with_tensor_parallelism():
    cfg = load_config(ServeConfig, REPO / "configs/cluster/serve_tp2.yaml")
    assert (
        cfg.accelerator == "gpu" and cfg.tensor_parallel_size == 2 and "VLLM_CPU_KVCACHE_SPACE" not in cfg.env
    )


def test_tensor_parallelism_on_cpu_is_refused():
    with pytest.raises(ConfigError, match="need accelerator: gpu"):
        load_config(ServeConfig, None, ["model_dir=m", "tensor_parallel_size=2"])


def test_min_replicas_above_max_is_an_error_naming_the_field():
    with pytest.raises(ConfigError, match="autoscaling: .*min_replicas 3 is above max_replicas 2"):
        load_config(
            ServeConfig, None, ["model_dir=m", "autoscaling.min_replicas=3", "autoscaling.max_replicas=2"]
        )


def test_api_keys_come_from_the_list_and_the_named_env_var(monkeypatch):
    monkeypatch.setenv("MY_KEYS", " a, b ,")
    assert ServeConfig(model_dir="m", api_keys=["x"], api_keys_env="MY_KEYS").resolved_api_keys() == [
        "x",
        "a",
        "b",
    ]


def test_deploy_file_imports_the_chat_app_with_this_config(tmp_path):
    cfg = ServeConfig(model_dir="m", output_dir=str(tmp_path), port=8123)
    deploy = yaml.safe_load(write_deploy_config(cfg).read_text())
    app = deploy["applications"][0]
    assert app["import_path"] == "serve_apps.chat:app" and deploy["http_options"]["port"] == 8123
    assert app["runtime_env"]["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert (
        ServeConfig.model_validate(
            yaml.safe_load(Path(app["runtime_env"]["env_vars"][CONFIG_ENV]).read_text())
        )
        == cfg
    )


def test_serve_run_target_builds_the_app_from_the_env_config(chat_model_dir, tmp_path, monkeypatch):
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({"model_dir": str(chat_model_dir), "model_id": "m1"}))
    monkeypatch.setenv(CONFIG_ENV, str(config))
    sys.modules.pop("serve_apps.chat", None)
    app = importlib.import_module("serve_apps.chat").app
    assert type(app).__name__ == "Application"


def test_cli_prints_the_resolved_serve_config():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmforge.cli",
            "serve",
            "configs/demo/serve.yaml",
            "port=9001",
            "--print-config",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert yaml.safe_load(result.stdout)["port"] == 9001
