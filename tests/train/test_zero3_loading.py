"""ZeRO-3 workers build or load the model inside deepspeed.zero.Init (each holds only its partition)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from lmforge.config import ModelConfig, TrainConfig
from lmforge.train.data import TrainData
from lmforge.train.deepspeed_config import deepspeed_config, patch_deepspeed_for_cpu
from lmforge.train.loop import build_engine
from lmforge.train.model import TINY_CONFIGS, build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "convert"))
from checkpoint_helpers import single_process_group

SAVED_VOCAB, DATA_VOCAB = 100, 120


def test_a_local_model_loads_partitioned_under_zero3_with_its_weights_and_grown_embeddings(tmp_path):
    import deepspeed
    from transformers.integrations import is_deepspeed_zero3_enabled

    saved = tmp_path / "llama"
    source = build_model(ModelConfig(architecture="llama", config=TINY_CONFIGS["llama"]), SAVED_VOCAB, seed=0)
    source.save_pretrained(saved)
    cfg = TrainConfig.model_validate({
        "run_name": "zero3", "storage_path": str(tmp_path), "model": {"path": str(saved)},
        "data": {"dir": str(tmp_path)}, "zero": {"stage": 3, "precision": "fp32"},
        "num_workers": 1, "global_batch_size": 1, "micro_batch_size": 1})
    data = TrainData(
        kind="pretrain",
        files=(),
        rows=1,
        sequence_length=32,
        vocab_size=DATA_VOCAB,
        eos_token_id=2,
        pad_token_id=0,
        tokenizer_dir=str(tmp_path),
        chat_template=None,
    )
    with single_process_group(tmp_path):
        patch_deepspeed_for_cpu()
        engine = build_engine(cfg, data, deepspeed_config(cfg, on_gpu=False, total_steps=1))
        assert is_deepspeed_zero3_enabled()  # what makes transformers build inside zero.Init
        parameters = dict(engine.module.named_parameters())
        assert all(p.numel() == 0 for p in parameters.values())  # partitioned: the full tensors live nowhere
        try:
            with deepspeed.zero.GatheredParameters(list(parameters.values())):
                for name, expected in source.state_dict().items():
                    loaded = parameters[name].detach()
                    if name in ("model.embed_tokens.weight", "lm_head.weight"):
                        assert loaded.shape[0] == DATA_VOCAB
                        loaded = loaded[:SAVED_VOCAB]
                    torch.testing.assert_close(loaded, expected, rtol=0, atol=0, msg=name)
        finally:
            # the engine's HfDeepSpeedConfig would otherwise stay registered in this process, and every
            # later from_config here (convert's parameter count) would build inside zero.Init
            unset_hf_deepspeed_config()
