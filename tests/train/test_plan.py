"""`lmforge plan`: ZeRO-3 memory per worker, checked by hand and against DeepSpeed's own estimator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

from lmforge import REPO_DIR as REPO  # the checkout
from lmforge.config import TrainConfig, load_config
from lmforge.train.plan import (
    OFFLOAD_CHOICES,
    memory,
    model_shape,
    model_states,
    plan_report,
    sequence_and_vocab,
)

LLAMA_7B_CONFIG = ("{hidden_size: 4096, intermediate_size: 11008, num_hidden_layers: 32, "
                   "num_attention_heads: 32, num_key_value_heads: 32, vocab_size: 32000}")
LLAMA_7B = ("model.architecture=llama", f"model.config={LLAMA_7B_CONFIG}")
# The shapes of the cluster configs' base models (their config.json on the Hugging Face hub).
SHAPES = {
    "bloom-7b1": {"model_type": "bloom", "hidden_size": 4096, "n_layer": 30, "n_head": 32,
                  "vocab_size": 250880},
    "Qwen2.5-7B": {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944,
                   "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                   "vocab_size": 152064, "max_position_embeddings": 131072, "tie_word_embeddings": False},
    "Llama-2-7b-hf": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
                      "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                      "vocab_size": 32000, "max_position_embeddings": 4096},
}


def _llama_7b(tmp_path: Path, *overrides: str) -> TrainConfig:
    return load_config(TrainConfig, None, [
        "run_name=r", f"storage_path={tmp_path}", f"data.dir={tmp_path / 'data'}", *LLAMA_7B,
        "model.gradient_checkpointing=true", "num_workers=8", "micro_batch_size=4", "global_batch_size=256",
        "plan.sequence_length=2048", *overrides])


def test_llama_7b_numbers_worked_by_hand(tmp_path):
    # Llama-2-7B: N = 6,738,415,616 parameters; the largest module is the embedding (or the untied LM head),
    # L = 32000 * 4096 = 131,072,000. 8 GPUs on one node, bf16 (P = 2, S = 16).
    # GPU model states per worker:
    #   no offload:        4L + 18N/8 = 524,288,000 + 15,161,435,136 = 15,685,723,136 B (14.6 GiB)
    #   optimizer offload: 4L +  2N/8 = 524,288,000 +  1,684,603,904 =  2,208,891,904 B
    #   both offloaded:    4L                                        =    524,288,000 B
    # CPU per node: 1.5 * max(4N * 8 workers, 18N / 1 node) = 1.5 * 32N = 323,443,949,568 B (301 GiB) in
    #   every row: the 8 fp32 copies built before ZeRO-3 partitions them outweigh the offloaded states.
    # Activations, micro batch 4 x 2048 = 8192 tokens, checkpointing on:
    #   layer inputs   32 * 8192 * 4096 * 2                            =  2,147,483,648
    #   one layer      8192 * (6*4096 + 2*4096 + 4*11008) * 2 = 8192*76800*2 = 1,258,291,200
    #   logits         8192 * 32000 * (2 + 8)                          =  2,621,440,000
    #   total                                                          =  6,027,214,848 B (5.6 GiB)
    cfg = _llama_7b(tmp_path)
    shape = model_shape(cfg, vocab_size=0)
    assert (shape.params, shape.largest_module_params) == (6_738_415_616, 131_072_000)
    rows = {choice: memory(shape, cfg, 2048, *choice) for choice in OFFLOAD_CHOICES}
    assert [rows[c].gpu_model_states for c in OFFLOAD_CHOICES] == [15_685_723_136, 2_208_891_904, 524_288_000]
    assert {rows[c].cpu_per_node for c in OFFLOAD_CHOICES} == {323_443_949_568}
    assert {rows[c].activations for c in OFFLOAD_CHOICES} == {6_027_214_848}
    # without checkpointing every layer keeps its activations: 32 * 1,258,291,200 + logits
    no_checkpointing = _llama_7b(tmp_path, "model.gradient_checkpointing=false")
    assert memory(shape, no_checkpointing, 2048, True, True).activations == 32 * 1_258_291_200 + 2_621_440_000


@pytest.mark.parametrize(("workers", "per_node"), [(8, 8), (16, 8), (4, 4)])
def test_model_states_equal_deepspeeds_estimator(tmp_path, workers, per_node):
    cfg = _llama_7b(tmp_path, f"num_workers={workers}", f"plan.gpus_per_node={per_node}",
                    f"global_batch_size={4 * workers}")
    shape = model_shape(cfg, vocab_size=0)
    for offload_optimizer, offload_params in OFFLOAD_CHOICES:
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            shape.params,
            shape.largest_module_params,
            num_gpus_per_node=per_node,
            num_nodes=workers // per_node,
            cpu_offload=offload_optimizer,
            cpu_offload_params=offload_params,
            zero_init=False,
        )
        ours_gpu, ours_cpu = model_states(shape, cfg, offload_optimizer, offload_params)
        assert (int(ours_cpu), int(ours_gpu)) == pytest.approx((cpu, gpu), abs=1)


def test_lora_keeps_only_the_adapters_optimizer_state(tmp_path):
    # r=8 on q/k/v/o of 32 layers: 32 * 4 * 8 * (4096 + 4096) = 8,388,608 trainable parameters; no offload:
    # 4L + (2N + 16T)/8 = 524,288,000 + 1,684,603,904 + 16,777,216 = 2,225,669,120 B
    cfg = _llama_7b(tmp_path, "lora.enabled=true")
    shape = model_shape(cfg, vocab_size=0)
    assert shape.trainable_params == 8_388_608
    assert model_states(shape, cfg, False, False)[0] == 2_225_669_120


def test_sequence_length_comes_from_the_data_manifest_when_prepared(tmp_path):
    cfg = _llama_7b(tmp_path)
    assert sequence_and_vocab(cfg)[0] == 2048  # not prepared: plan.sequence_length
    (tmp_path / "data").mkdir()
    tokenizer = {"path": "/tok", "class": "Qwen2TokenizerFast", "vocab_size": 32002, "bos_token_id": None,
                 "eos_token_id": 2, "pad_token_id": None, "tokenizer_json_sha256": None}
    outputs = {"dir": "/d", "shards": [], "plots": [], "columns": {}, "tokenizer": tokenizer,
               "quarantine": "q", "dedup_clusters": "c", "max_length": 4096, "pack_mode": "packed",
               "template": "tokenizer", "chat_template": "t", "eos_token_id": 2, "dedup_key": "prompt",
               "rows": 1, "samples": 1, "tokens": 9, "trained_tokens": 5, "utilisation": 0.5,
               "trained_token_share": 0.5}
    (tmp_path / "data" / "manifest.json").write_text(json.dumps({"stage": "prepare-sft", "config": {},
                                                                 "outputs": outputs}))
    assert sequence_and_vocab(cfg)[:2] == (4096, 32002)
    report, _ = plan_report(cfg, "test")
    assert "plan.sequence_length 2048 ignored: the data has 4096" in report


def test_unknown_sequence_length_is_an_error_naming_the_field(tmp_path):
    with pytest.raises(ValueError, match="set plan.sequence_length"):
        sequence_and_vocab(_llama_7b(tmp_path, "plan.sequence_length=null"))


def test_unknown_vocabulary_is_an_error_naming_the_field(tmp_path):
    cfg = load_config(TrainConfig, REPO / "configs/demo/pretrain.yaml", [f"data.dir={tmp_path}"])
    with pytest.raises(ValueError, match="set model.config.vocab_size"):
        model_shape(cfg, vocab_size=0)


def test_a_7b_without_checkpointing_or_offload_does_not_fit_48_gib_and_says_what_to_change(tmp_path):
    cfg = _llama_7b(tmp_path, "model.gradient_checkpointing=false", "plan.cpu_memory_gib=512")
    report, fits = plan_report(cfg, "test")
    assert not fits
    assert (
        "VERDICT: DOES NOT FIT with offload none" in report and "model.gradient_checkpointing=true" in report
    )
    marked = [line.split()[0] for line in report.splitlines() if line.endswith("<- this config")]
    assert marked == ["none"]


@pytest.mark.parametrize(
    "name", ["pretrain_bloom_7b", "pretrain_qwen_7b", "pretrain_llama_7b", "sft_4096", "sft_lora"]
)
def test_cluster_configs_fit_the_recipes_48_gib_gpus(tmp_path, name):
    cfg = load_config(TrainConfig, REPO / "configs" / "cluster" / f"{name}.yaml")
    # SFT starts from pretrained Qwen
    base = Path(cfg.model.path).name if "pretrain" in name else "Qwen2.5-7B"
    (tmp_path / base).mkdir()
    (tmp_path / base / "config.json").write_text(json.dumps(SHAPES[base]))
    report, fits = plan_report(cfg.model_copy(update={"model": cfg.model.model_copy(
        update={"path": str(tmp_path / base)})}), name)
    assert fits, report


def test_cli_prints_the_verdict_and_exits_1_when_the_config_does_not_fit():
    command = [sys.executable, "-m", "lmforge.cli", "plan", "configs/cluster/pretrain_llama_7b.yaml",
               "model.path=null", *LLAMA_7B, "model.gradient_checkpointing=false",
               "zero.offload_optimizer=false", "zero.offload_params=false"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 1, result.stderr
    assert "VERDICT: DOES NOT FIT" in result.stdout


def _dpo_7b(tmp_path, **fields):
    from lmforge.train.plan import load_plan_config

    cfg = load_plan_config(str(REPO / "configs" / "cluster" / "dpo_7b.yaml"), [])
    (tmp_path / "Qwen2.5-7B").mkdir(exist_ok=True)
    (tmp_path / "Qwen2.5-7B" / "config.json").write_text(json.dumps(SHAPES["Qwen2.5-7B"]))
    model = cfg.model.model_copy(update={"path": str(tmp_path / "Qwen2.5-7B")})
    return cfg.model_copy(update={"model": model, **fields})


def test_the_7b_dpo_config_fits_and_a_frozen_reference_costs_its_partition(tmp_path):
    from lmforge.config import AlignTrainConfig
    from lmforge.train.plan import model_shape, model_states

    cfg = _dpo_7b(tmp_path)
    assert isinstance(cfg, AlignTrainConfig)
    report, fits = plan_report(cfg, "dpo_7b")
    assert fits, report
    assert "align     dpo" in report and "reference: a frozen copy in the loop" in report  # data not prepared
    precomputed = cfg.model_copy(update={"reference": "precomputed"})
    assert "reference: precomputed log-probs" in plan_report(precomputed, "dpo_7b")[0]
    shape = model_shape(cfg, 0)
    frozen, _ = model_states(shape, cfg, True, False)
    without, _ = model_states(shape, precomputed, True, False)
    assert frozen - without == 2 * shape.params / cfg.num_workers  # bf16 parameters, partitioned 8 ways
    simpo = cfg.preference.model_copy(update={"loss": "simpo"})
    reference_free = cfg.model_copy(update={"preference": simpo})
    assert model_states(shape, reference_free, True, False)[0] == without


def test_plan_reads_a_pretrain_config_as_pretrain_and_a_dpo_config_as_align():
    from lmforge.config import AlignTrainConfig
    from lmforge.train.plan import load_plan_config

    assert type(load_plan_config(str(REPO / "configs" / "cluster" / "sft_lora.yaml"), [])) is TrainConfig
    assert type(load_plan_config(str(REPO / "configs" / "cluster" / "dpo_7b.yaml"), [])) is AlignTrainConfig
