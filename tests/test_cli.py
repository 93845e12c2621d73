"""The `lmforge` console script and the `jobs/` entry points, run as a user runs them."""

import json
import subprocess
import sys
from pathlib import Path

from lmforge import REPO_DIR as REPO  # the checkout


def _run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], check=False, cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_help_lists_every_setting_from_the_config_model():
    result = _run("-m", "lmforge.cli", "prepare-pretrain", "--help")
    assert result.returncode == 0
    assert "pack.block_size = 1024" in result.stdout and "dedup.threshold = 0.8" in result.stdout


def test_a_config_typo_exits_2_naming_the_key():
    result = _run("-m", "lmforge.cli", "prepare-pretrain", "configs/demo/pretrain_data.yaml",
                  "dedup.treshold=0.7")
    assert result.returncode == 2
    assert "dedup.treshold: unknown key (did you mean 'threshold'?)" in result.stderr


def test_print_config_shows_the_resolved_values():
    result = _run("-m", "lmforge.cli", "prepare-pretrain", "configs/demo/pretrain_data.yaml",
                  "pack.block_size=2048", "--print-config")
    assert result.returncode == 0 and "block_size: 2048" in result.stdout


def test_submit_refuses_entrypoint_resources_that_are_not_a_json_object_of_amounts():
    result = _run("-m", "lmforge.cli", "submit", "convert", "configs/demo/convert.yaml",
                  "--entrypoint-resources", '{"big_memory": "yes"}')
    assert result.returncode == 2
    assert "not a JSON object of resource amounts" in result.stderr


def test_train_tokenizer_job_writes_a_loadable_tokenizer(tmp_path, shared_data):
    config = tmp_path / "tok.yaml"
    config.write_text(f"output_dir: {tmp_path / 'tok'}\nvocab_size: 500\n"
                      f"sources:\n  - path: {shared_data / 'pretrain' / 'fever.txt'}\n")
    result = _run(str(REPO / "jobs" / "train_tokenizer.py"), str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "tokenizer_dir:" in result.stdout
    manifest = json.loads((tmp_path / "tok" / "manifest.json").read_text())
    assert manifest["stage"] == "train-tokenizer" and manifest["counts"]["vocab_size"] == 500
