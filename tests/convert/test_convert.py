"""lmforge convert: real ZeRO-3 checkpoints -> directories that plain transformers loads,
checked against the shards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from checkpoint_helpers import QA, SFT_TEMPLATE, sft_rows
from safetensors.torch import load_file

from lmforge.config import ConvertConfig
from lmforge.convert.convert import run_convert
from lmforge.convert.verify import greedy_ids
from lmforge.convert.zero_checkpoint import ZeroCheckpoint


def _convert(checkpoint: Path, out: Path, **fields):
    return run_convert(ConvertConfig(checkpoint=str(checkpoint), output_dir=str(out), **fields))


def _load(out: Path, dtype=torch.float32):
    return transformers.AutoModelForCausalLM.from_pretrained(out, dtype=dtype, use_safetensors=True).eval()


def test_a_run_dir_means_its_newest_checkpoint(zero_runs):
    checkpoint = ZeroCheckpoint.locate(zero_runs["sft"])
    assert (checkpoint.directory.name, checkpoint.tag, checkpoint.step) == (
        "checkpoint_000060",
        "global_step60",
        60,
    )
    assert ZeroCheckpoint.locate(zero_runs["sft"] / "checkpoint_000020").step == 20


def test_full_fp32_conversion_loads_with_transformers_with_the_checkpoint_weights_and_generation(
        zero_runs, converted_sft):
    checkpoint = ZeroCheckpoint.locate(zero_runs["sft"])
    consolidated = checkpoint.state_dict()
    model = _load(converted_sft)
    assert model.state_dict().keys() == consolidated.keys()
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in consolidated.items())

    tokenizer = transformers.AutoTokenizer.from_pretrained(converted_sft)
    prompt = sft_rows(tokenizer, SFT_TEMPLATE)[0][
        : -len(tokenizer(QA[0][1], add_special_tokens=False)["input_ids"]) - 1
    ]
    assert tokenizer.apply_chat_template([{"role": "user", "content": QA[0][0]}], add_generation_prompt=True,
                                         tokenize=True, return_dict=False) == prompt
    answer = greedy_ids(model, prompt, max_new_tokens=40)
    assert (
        tokenizer.decode(answer, skip_special_tokens=True) == QA[0][1]
        and answer[-1] == tokenizer.eos_token_id
    )

    manifest = json.loads((converted_sft / "manifest.json").read_text())
    verification = manifest["outputs"]["verification"]
    assert verification["weights_equal"] and verification["generation_equal"]
    assert verification["converted_tokens"] == verification["checkpoint_tokens"]
    assert manifest["stage"] == "convert" and manifest["outputs"]["step"] == 60
    assert manifest["outputs"]["parameters"] == sum(t.numel() for t in consolidated.values())
    assert {f["name"] for f in manifest["outputs"]["files"]} >= {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }


def test_tokenizer_and_generation_config_carry_the_runs_chat_template_and_eos(zero_runs, converted_sft):
    data = ZeroCheckpoint.locate(zero_runs["sft"]).data
    tokenizer = transformers.AutoTokenizer.from_pretrained(converted_sft)
    own = transformers.AutoTokenizer.from_pretrained(data.tokenizer_dir)
    assert tokenizer.chat_template == data.chat_template == SFT_TEMPLATE != own.chat_template
    generation = transformers.GenerationConfig.from_pretrained(converted_sft)
    assert (generation.eos_token_id, generation.pad_token_id, generation.bos_token_id) == (
        data.eos_token_id, data.pad_token_id, own.bos_token_id)
    assert tokenizer.eos_token_id == data.eos_token_id
    assert json.loads((converted_sft / "config.json").read_text())["use_cache"] is True


def test_lora_weights_are_merged_as_base_plus_scaled_delta_and_the_adapter_is_saved_apart(
    zero_runs, tmp_path
):
    checkpoint = ZeroCheckpoint.locate(zero_runs["lora"])
    consolidated = checkpoint.state_dict()
    manifest = _convert(zero_runs["lora"], tmp_path, dtype="fp32", save_adapter=True)
    merged = _load(tmp_path).state_dict()
    scale = checkpoint.train.lora.alpha / checkpoint.train.lora.r
    prefix = "base_model.model."
    deltas = 0
    for name, tensor in merged.items():
        base = consolidated.get(
            prefix + name, consolidated.get(prefix + name.replace(".weight", ".base_layer.weight"))
        )
        lora_a = consolidated.get(prefix + name.replace(".weight", ".lora_A.default.weight"))
        if lora_a is None:
            assert torch.equal(tensor, base), name
            continue
        delta = consolidated[prefix + name.replace(".weight", ".lora_B.default.weight")] @ lora_a * scale
        assert delta.abs().max() > 1e-4  # trained: the adapter changes the weights
        torch.testing.assert_close(tensor, base + delta, rtol=0, atol=1e-6)
        deltas += 1
    assert deltas == 2 * 4  # 2 layers x q, k, v, o
    adapter = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert adapter.keys() == {k.replace(".default", "") for k in consolidated if ".lora_" in k}
    assert all(
        torch.equal(t, consolidated[k.replace(".weight", ".default.weight")]) for k, t in adapter.items()
    )
    assert (
        json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == checkpoint.train.lora.r
    )
    outputs = manifest.outputs
    assert outputs["merged"] and outputs["adapter_dir"] == str(tmp_path / "adapter")
    assert outputs["verification"]["matches_checkpoint_model"]  # fp32: required, merged == LoRA-wrapped model


def test_a_pretrain_run_keeps_the_tokenizers_own_chat_template(zero_runs, tmp_path):
    _convert(zero_runs["lora"], tmp_path, verify=False)
    own = transformers.AutoTokenizer.from_pretrained(
        ZeroCheckpoint.locate(zero_runs["lora"]).data.tokenizer_dir
    )
    assert transformers.AutoTokenizer.from_pretrained(tmp_path).chat_template == own.chat_template


def test_bf16_output_holds_the_checkpoint_weights_rounded_to_bf16(zero_runs, tmp_path):
    consolidated = ZeroCheckpoint.locate(zero_runs["sft"]).state_dict()
    manifest = _convert(zero_runs["sft"], tmp_path, dtype="bf16")
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    model = _load(tmp_path, dtype="auto")
    assert model.dtype == torch.bfloat16
    assert all(torch.equal(model.state_dict()[k], t.to(torch.bfloat16)) for k, t in consolidated.items())
    assert manifest.outputs["verification"]["generation_equal"]


def test_a_tiny_max_shard_size_writes_several_safetensors_shards_and_an_index(zero_runs, tmp_path):
    _convert(zero_runs["sft"], tmp_path, dtype="fp32", max_shard_size="300KB")
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) >= 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not (tmp_path / "model.safetensors").exists()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    consolidated = ZeroCheckpoint.locate(zero_runs["sft"]).state_dict()
    assert all(torch.equal(_load(tmp_path).state_dict()[k], t) for k, t in consolidated.items())


@pytest.mark.parametrize("run", ["qwen2", "bloom"])
def test_tied_embeddings_and_alibi_models_convert_and_verify(zero_runs, tmp_path, run):
    manifest = _convert(zero_runs[run], tmp_path, dtype="fp32")
    model = _load(tmp_path)
    assert model.config.tie_word_embeddings is True
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert manifest.outputs["verification"]["matches_checkpoint_model"]


def test_convert_refuses_when_its_ram_estimate_exceeds_available_memory(zero_runs, tmp_path, monkeypatch):
    import psutil

    real = psutil.virtual_memory()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: real._replace(available=1024**2))
    with pytest.raises(MemoryError, match=r"needs about 0\.0 GiB of RAM \(4 x the fp32 model.*only 0\.0 GiB"):
        _convert(zero_runs["sft"], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before writing anything


def test_a_checkpoint_without_the_runs_run_json_is_a_clear_error(zero_runs, tmp_path):
    shutil.copytree(zero_runs["sft"] / "checkpoint_000060", tmp_path / "checkpoint_000060")
    with pytest.raises(
        FileNotFoundError, match=r"run\.json: not found\. convert reads the model, LoRA and tokenizer"
    ):
        _convert(tmp_path / "checkpoint_000060", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a checkpoint .* nor a run directory"):
        _convert(tmp_path / "empty", tmp_path / "out")


class _RunsCode:
    """What a crafted checkpoint could hold: unpickling it calls Path.touch (any callable would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_checkpoint_with_pickled_code_is_refused_without_running_it(zero_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(zero_runs["sft"], run)
    shard = next((run / "checkpoint_000060" / "global_step60").glob("*model_states.pt"))
    state = torch.load(shard, weights_only=False)  # our own file from the fixture above
    state["client_state"] = _RunsCode(tmp_path / "pwned")
    torch.save(state, shard)
    with pytest.raises(ValueError, match="refusing to unpickle it"):
        _convert(run, tmp_path / "out")
    assert not (tmp_path / "pwned").exists()


def test_converting_again_replaces_the_previous_output_but_never_a_foreign_dir(zero_runs, tmp_path):
    _convert(zero_runs["sft"], tmp_path / "out", max_shard_size="300KB", verify=False)
    _convert(zero_runs["sft"], tmp_path / "out", verify=False)
    assert sorted(p.name for p in (tmp_path / "out").glob("model*")) == ["model.safetensors"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not empty and holds no earlier convert output"):
        _convert(zero_runs["sft"], tmp_path / "mine")


def test_without_merging_the_output_is_the_base_model_plus_its_adapter(zero_runs, tmp_path):
    import peft

    consolidated = ZeroCheckpoint.locate(zero_runs["lora"]).state_dict()
    manifest = _convert(zero_runs["lora"], tmp_path, dtype="fp32", merge_lora=False)
    base = _load(tmp_path)
    assert all(
        torch.equal(
            t,
            consolidated.get(
                f"base_model.model.{k}",
                consolidated.get(f"base_model.model.{k}".replace(".weight", ".base_layer.weight")),
            ),
        )
        for k, t in base.state_dict().items()
    )
    wrapped = peft.PeftModel.from_pretrained(base, tmp_path / "adapter")
    assert all(torch.equal(t, consolidated[k]) for k, t in wrapped.state_dict().items())
    assert not manifest.outputs["merged"] and manifest.outputs["verification"]["weights_equal"]


def test_convert_job_runs_the_stage_from_a_yaml_config(zero_runs, tmp_path):
    import subprocess
    import sys

    config = tmp_path / "convert.yaml"
    config.write_text(f"checkpoint: {zero_runs['sft']}\noutput_dir: {tmp_path / 'model'}\n")
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, str(repo / "jobs" / "convert.py"), str(config), "dtype=fp32"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"model_dir: {tmp_path / 'model'}" in result.stdout
    assert json.loads((tmp_path / "model" / "manifest.json").read_text())["outputs"]["verification"][
        "weights_equal"
    ]
