"""Infer fixtures: the session's `chat_model_dir` (tests/conftest.py),
and a tiny model that writes QA pairs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "convert"))  # checkpoint_helpers (QA, make_run)

# Two passages and what the QA-writing model learns to answer for each: a well-formed reply and one
# that no parser accepts, so a synth job meets both.
PASSAGES = ["疟疾是由疟原虫引起的传染病，经按蚊叮咬传播。", "伤寒由伤寒沙门菌引起，经粪口途径传播。"]
WRITER_REPLIES = ["问题1:疟疾由什么引起?\n答案1:疟原虫。", "这段内容很好。"]


@pytest.fixture(scope="session")
def qa_writer_model_dir(tiny_tokenizer, tmp_path_factory) -> Path:
    """A converted tiny Llama trained to answer the default
    qa_from_passages prompt of PASSAGES with WRITER_REPLIES."""
    from checkpoint_helpers import LLAMA, make_run, single_process_group

    from lmforge.config import ConvertConfig, SynthPromptsConfig
    from lmforge.convert.convert import run_convert

    template = SynthPromptsConfig().qa_from_passages
    qa = [
        (template.replace("{passage}", p), reply) for p, reply in zip(PASSAGES, WRITER_REPLIES, strict=True)
    ]
    root = tmp_path_factory.mktemp("qa_writer")
    with single_process_group(root):
        run = make_run(
            root / "sft", tiny_tokenizer, architecture="llama", config=LLAMA, steps=120, save_at=(120,), qa=qa
        )
    run_convert(ConvertConfig(checkpoint=str(run), output_dir=str(root / "model"), dtype="fp32"))
    return root / "model"
