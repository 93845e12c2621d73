"""Convert fixtures: tiny runs with real ZeRO-3 checkpoints (see checkpoint_helpers),
and one converted model."""

from __future__ import annotations

from pathlib import Path

import pytest
from checkpoint_helpers import LLAMA, make_run, single_process_group


@pytest.fixture(scope="session")
def zero_runs(tiny_tokenizer, tmp_path_factory) -> dict[str, Path]:
    """Run directories: sft (llama, full, checkpoints at 20 and 60), lora (pretrain kind), qwen2, bloom."""
    root = tmp_path_factory.mktemp("runs")
    with single_process_group(root):
        return {
            "sft": make_run(root / "sft", tiny_tokenizer, architecture="llama", config=LLAMA, steps=60,
                            save_at=(20, 60)),
            "lora": make_run(root / "lora", tiny_tokenizer, architecture="llama", config=LLAMA,
                             kind="pretrain", lora=True, steps=10, save_at=(10,)),
            "qwen2": make_run(root / "qwen2", tiny_tokenizer, architecture="qwen2",
                              config={**LLAMA, "tie_word_embeddings": True}, steps=4, save_at=(4,)),
            "bloom": make_run(root / "bloom", tiny_tokenizer, architecture="bloom",
                              config={"hidden_size": 64, "n_layer": 2, "n_head": 2}, steps=4, save_at=(4,)),
        }


@pytest.fixture(scope="session")
def converted_sft(zero_runs, tmp_path_factory) -> Path:
    """The SFT run's newest checkpoint converted to fp32 (verified)."""
    from lmforge.config import ConvertConfig
    from lmforge.convert.convert import run_convert

    out = tmp_path_factory.mktemp("converted") / "model"
    run_convert(ConvertConfig(checkpoint=str(zero_runs["sft"]), output_dir=str(out), dtype="fp32"))
    return out
