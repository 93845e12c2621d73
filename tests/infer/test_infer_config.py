"""Settings of batch-infer, synth and eval: validation messages, demo configs, CLI help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lmforge import REPO_DIR as REPO  # the checkout
from lmforge.config import BatchInferConfig, ConfigError, EngineConfig, EvalConfig, SynthConfig, load_config


def test_engine_min_above_max_is_refused():
    with pytest.raises(ValueError, match="min_engines 3 is above max_engines 2"):
        EngineConfig(min_engines=3, max_engines=2)


def test_eval_models_may_be_plain_paths_named_after_their_directory():
    cfg = EvalConfig(models=["runs/a/model", "runs/b/sft"], output_dir="o", open_qa={"path": "x.json"})
    assert [m.name for m in cfg.models] == ["model", "sft"]
    with pytest.raises(ValueError, match="names must be unique"):
        EvalConfig(models=["a/model", "b/model"], output_dir="o", open_qa={"path": "x.json"})
    with pytest.raises(ValueError, match="no task"):
        EvalConfig(models=["a/model"], output_dir="o")


@pytest.mark.parametrize(("model", "name"), [(SynthConfig, "synth"), (EvalConfig, "eval")])
def test_the_demo_configs_load(model, name):
    cfg = load_config(model, REPO / "configs" / "demo" / f"{name}.yaml")
    assert cfg.engine.engine_kwargs["max_model_len"] == 1024


def test_a_mistyped_engine_key_names_the_closest_one(tmp_path):
    (tmp_path / "c.yaml").write_text("model_dir: m\noutput_dir: o\nsources: [{path: p.jsonl}]\n"
                                     "engine: {max_engine: 2}\n")
    with pytest.raises(ConfigError, match="engine.max_engine: unknown key \\(did you mean 'max_engines'"):
        load_config(BatchInferConfig, tmp_path / "c.yaml")


def test_cli_help_lists_the_inference_settings():
    result = subprocess.run([sys.executable, "-m", "lmforge.cli", "batch-infer", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and "engine.max_engines = 1" in result.stdout
    assert "sampling.max_tokens = 128" in result.stdout
