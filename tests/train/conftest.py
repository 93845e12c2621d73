"""Training fixtures: small prepared pretrain and SFT data (tiny tokenizer), and a TrainConfig builder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lmforge.config import PretrainDataConfig, SFTDataConfig

# Ray Train's controller polls its workers every 2 s, and every checkpoint report waits for a poll: 0.2 s
# takes seconds off each fit. Set at collection, before the session's Ray starts (its processes inherit it).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


@pytest.fixture(scope="session")
def pretrain_data(
    ray_local,  # noqa: ARG001 - starts Ray first
    tiny_tokenizer, shared_data, tmp_path_factory,
) -> Path:
    """fever.txt + c4_demo.jsonl in 128-token blocks, cut to ~400 blocks (enough for every run here)."""
    from lmforge.data.stages.prepare_pretrain import run_prepare_pretrain

    out = tmp_path_factory.mktemp("pretrain-data")
    run_prepare_pretrain(
        PretrainDataConfig.model_validate(
            {
                "tokenizer": str(tiny_tokenizer),
                "output_dir": str(out),
                "sources": [
                    {"path": str(shared_data / "pretrain" / name)} for name in ("fever.txt", "c4_demo.jsonl")
                ],
                "pack": {"block_size": 128},
                "mix": {"total_tokens": 400 * 128},
            }
        )
    )
    return out


@pytest.fixture(scope="session")
def sft_data(
    ray_local,  # noqa: ARG001 - starts Ray first
    tiny_tokenizer, shared_data, tmp_path_factory,
) -> Path:
    """cognition_dev.json + alpaca_zh_demo.json, classic template, packed into 256-token rows."""
    from lmforge.data.stages.prepare_sft import run_prepare_sft

    out = tmp_path_factory.mktemp("sft-data")
    run_prepare_sft(
        SFTDataConfig.model_validate(
            {
                "tokenizer": str(tiny_tokenizer),
                "output_dir": str(out),
                "max_length": 256,
                "sources": [
                    {"path": str(shared_data / "sft" / name)}
                    for name in ("cognition_dev.json", "alpaca_zh_demo.json")
                ],
            }
        )
    )
    return out
