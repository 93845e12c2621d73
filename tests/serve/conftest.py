"""Serve fixtures: the convert tests' tiny SFT model (answers two fixed questions, then EOS), converted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "convert"))  # the tiny-run recipe lives there
from checkpoint_helpers import LLAMA, make_run, single_process_group


@pytest.fixture(scope="session")
def chat_model_dir(tiny_tokenizer, tmp_path_factory) -> Path:
    """A converted fp32 tiny Llama (head_dim 32, which vLLM's CPU attention accepts) trained on checkpoint_helpers.QA."""
    from lmforge.config import ConvertConfig
    from lmforge.convert.convert import run_convert

    root = tmp_path_factory.mktemp("serve_model")
    with single_process_group(root):
        run = make_run(root / "sft", tiny_tokenizer, architecture="llama", config=LLAMA, steps=60, save_at=(60,))
    run_convert(ConvertConfig(checkpoint=str(run), output_dir=str(root / "model"), dtype="fp32"))
    return root / "model"
