"""Every example config under configs/ loads with its stage's model, so none rots when a model changes."""

from pathlib import Path

import pytest

from lmforge import REPO_DIR as REPO  # the checkout
from lmforge.config import load_config
from lmforge.stages import STAGES

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
# file name prefix -> stage; the longest matching prefix wins (pretrain_data before pretrain)
STAGE_OF_PREFIX = {
    "tokenizer": "train-tokenizer",
    "pretrain_data": "prepare-pretrain",
    "sft_data": "prepare-sft",
    "preference_data": "prepare-preference",
    "pretrain": "pretrain",
    "sft": "sft",
    "convert": "convert",
    "serve": "serve",
    "synth": "synth",
    "eval": "eval",
    "batch_infer": "batch-infer",
    "pipeline": "pipeline",
    "dpo": "align",
    "align": "align",
}


def stage_of(path: Path) -> str:
    matches = [prefix for prefix in STAGE_OF_PREFIX if path.stem.startswith(prefix)]
    if not matches:
        pytest.fail(
            f"{path.relative_to(REPO)}: no stage for this file name; add its prefix to STAGE_OF_PREFIX"
        )
    return STAGE_OF_PREFIX[max(matches, key=len)]


def test_there_are_demo_and_cluster_configs():
    assert {path.parent.name for path in CONFIGS} >= {"demo", "cluster"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: str(path.relative_to(REPO / "configs")))
def test_example_config_validates_with_its_stage_model(path):
    load_config(STAGES[stage_of(path)].config, path)


@pytest.mark.parametrize(
    "name", ["pretrain_bloom_7b", "pretrain_qwen_7b", "pretrain_llama_7b", "sft_4096", "sft_lora"]
)
def test_cluster_training_configs_step_on_half_a_million_tokens_over_8_gpus(name):
    # pretraining 256 blocks x 2048 tokens, SFT 128 rows x 4096: the budgets their comments explain
    cfg = load_config(STAGES["pretrain"].config, REPO / "configs" / "cluster" / f"{name}.yaml")
    assert cfg.global_batch_size * cfg.plan.sequence_length == 256 * 2048
    assert cfg.num_workers == cfg.plan.gpus_per_node == 8 and cfg.use_gpu
