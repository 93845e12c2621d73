"""Shared fixtures: the real sample data, one local Ray per test session, a tiny tokenizer,
a tiny chat model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from lmforge import REPO_DIR as REPO  # the checkout

SHARED_DATA = Path(os.environ.get("LMFORGE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared sample data not found at {SHARED_DATA} (set LMFORGE_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray for the whole session; never joins another Ray on the machine."""
    import ray

    temp_dir = Path("/tmp") / f"lmforge-ray-{os.getpid()}"  # short: Ray's socket paths are length-limited
    ray.init(
        address="local",
        num_cpus=4,
        object_store_memory=400 * 1024**2,
        include_dashboard=False,
        _temp_dir=str(temp_dir),
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory, shared_data) -> Path:
    """A byte-level BPE tokenizer learned from the shared pretraining samples (no downloads here)."""
    from lmforge.config import SourceConfig, TokenizerTrainConfig
    from lmforge.data.stages.train_tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(TokenizerTrainConfig(
        sources=[SourceConfig(path=str(shared_data / "pretrain" / name)) for name in
                 ("fever.txt", "c4_demo.jsonl", "wiki_demo.txt")],
        output_dir=str(out),
        vocab_size=2000,
    ))
    return out


@pytest.fixture(scope="session")
def chat_model_dir(tiny_tokenizer, tmp_path_factory) -> Path:
    """A converted fp32 tiny Llama (head_dim 32, which vLLM's CPU attention accepts) trained on
    checkpoint_helpers.QA: greedy answers to the two questions end in EOS. Serve and infer tests share it."""
    sys.path.insert(0, str(REPO / "tests" / "convert"))  # the tiny-run recipe lives there
    from checkpoint_helpers import LLAMA, make_run, single_process_group

    from lmforge.config import ConvertConfig
    from lmforge.convert.convert import run_convert

    root = tmp_path_factory.mktemp("chat_model")
    with single_process_group(root):
        run = make_run(
            root / "sft", tiny_tokenizer, architecture="llama", config=LLAMA, steps=60, save_at=(60,)
        )
    run_convert(ConvertConfig(checkpoint=str(run), output_dir=str(root / "model"), dtype="fp32"))
    return root / "model"
