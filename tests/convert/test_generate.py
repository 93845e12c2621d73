"""lmforge generate: a converted model answers in its chat template and stops at its EOS."""

from __future__ import annotations

import subprocess
import sys
import time

from checkpoint_helpers import QA

from lmforge import REPO_DIR as REPO  # the checkout
from lmforge.convert.generate import stream_hf


def _generate(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lmforge.cli", "generate", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_hf_streams_the_answer_piece_by_piece_and_stops_at_eos(converted_sft):
    pieces = list(stream_hf(converted_sft, QA[0][0], max_new_tokens=64))
    assert len(pieces) > 3 and "".join(pieces) == QA[0][1]  # greedy stopped at EOS, long before 64 tokens


def test_generate_cli_prints_the_streamed_answer(converted_sft):
    result = _generate(str(converted_sft), QA[0][0], "--max-new-tokens", "64")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == QA[0][1] + "\n"


def test_generate_cli_names_a_directory_that_is_not_a_model(tmp_path):
    result = _generate(str(tmp_path), "你好")
    assert result.returncode == 1 and "is not a model directory (no config.json)" in result.stderr


def test_vllm_on_cpu_loads_the_converted_model_and_gives_the_same_greedy_answer(converted_sft):
    started = time.perf_counter()
    result = _generate(
        str(converted_sft), QA[0][0], "--engine", "vllm", "--max-new-tokens", "64", timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == QA[0][1] + "\n"  # vLLM's log lines go to stderr
    assert time.perf_counter() - started < 120
