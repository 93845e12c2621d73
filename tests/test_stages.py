"""The stage registry is the one place a stage is described; the hand-offs between stages are typed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lmforge import REPO_DIR
from lmforge.cli import build_parser
from lmforge.config import ServeConfig, TrainConfig
from lmforge.manifest import Manifest
from lmforge.stage_outputs import SFTRows, TokenBlocks
from lmforge.stages import STAGES
from lmforge.train.data import read_prepared_data

TOKENIZER = {"path": "/tok", "class": "PreTrainedTokenizerFast", "vocab_size": 500, "bos_token_id": 1,
             "eos_token_id": 2, "pad_token_id": 3, "tokenizer_json_sha256": None}
PREPARED = {"dir": "/d", "shards": [], "plots": [], "columns": {}, "tokenizer": TOKENIZER,
            "quarantine": "quarantine.jsonl", "dedup_clusters": "dedup_clusters.jsonl"}


def test_every_stage_has_a_job_file_that_runs_it():
    for name, stage in STAGES.items():
        text = (REPO_DIR / stage.job_file).read_text(encoding="utf-8")
        assert re.search(rf'run_job\("{name}"\)', text), stage.job_file


def test_the_cli_offers_exactly_the_registered_stages():
    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(STAGES) <= set(commands) and set(commands) - set(STAGES) == {"generate", "plan", "submit"}


def test_training_output_lives_in_its_run_dir_and_a_service_leaves_none(tmp_path):
    train = TrainConfig.model_validate({"run_name": "r", "storage_path": str(tmp_path), "data": {"dir": "d"},
                                        "model": {"architecture": "llama"}})
    assert (STAGES["pretrain"].output_dir(train) == (tmp_path / "r").resolve()
            and STAGES["pretrain"].rerun == "resumes")
    assert STAGES["serve"].output_dir(ServeConfig(model_dir="m")) is None


def _write_manifest(directory: Path, stage: str, outputs: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    Manifest(stage=stage, config={}, outputs=outputs).write(directory)
    return directory


def test_training_reads_the_sequence_length_its_data_was_cut_to(tmp_path):
    blocks = {**PREPARED, "block_size": 2048, "blocks": 4, "tokens": 8192, "dropped_remainder_tokens": 7}
    prepared = read_prepared_data(_write_manifest(tmp_path / "blocks", "prepare-pretrain", blocks))
    assert isinstance(prepared, TokenBlocks) and prepared.sequence_length == 2048
    assert (prepared.tokenizer.vocab_size == 500
            and prepared.model_dump(by_alias=True)["tokenizer"] == TOKENIZER)
    rows = {**PREPARED, "max_length": 4096, "pack_mode": "packed", "template": "classic",
            "chat_template": "t", "eos_token_id": 2, "dedup_key": "prompt", "rows": 1, "samples": 2,
            "tokens": 10, "trained_tokens": 5, "utilisation": 0.5, "trained_token_share": 0.5}
    prepared = read_prepared_data(_write_manifest(tmp_path / "rows", "prepare-sft", rows))
    assert isinstance(prepared, SFTRows) and prepared.sequence_length == 4096


def test_a_manifest_of_an_older_layout_says_which_stage_to_rerun(tmp_path):
    old = {**PREPARED, "max_length": 1024}  # written before dedup_key, pack_mode, ... existed
    directory = _write_manifest(tmp_path / "old", "prepare-sft", old)
    with pytest.raises(ValueError, match=r"rerun `lmforge prepare-sft` to rewrite it") as error:
        read_prepared_data(directory)
    assert "dedup_key" in str(error.value)


def test_a_manifest_of_another_stage_is_not_training_data(tmp_path):
    directory = _write_manifest(tmp_path / "model", "convert", {"model_dir": "m"})
    with pytest.raises(ValueError, match="holds convert output, not prepared training data") as error:
        read_prepared_data(directory)
    assert str(directory) in str(error.value)  # names the data.dir to fix
