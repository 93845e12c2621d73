"""Model building: seeded from-config builds, local loads with overrides, LoRA, positions, FLOPs."""

import pytest
import torch
import transformers

from lmforge.config import LoraConfig, ModelConfig
from lmforge.train.model import (
    TINY_CONFIGS,
    apply_lora,
    build_model,
    flops_per_token,
    max_positions,
    model_config,
)

VOCAB = 100


def _tiny(architecture, **overrides):
    return ModelConfig(architecture=architecture, config={**TINY_CONFIGS[architecture], **overrides})


def _same_weights(a, b) -> bool:
    return all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    build_model(_tiny("llama"), VOCAB, seed=0).save_pretrained(path)
    return path


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "bloom"])
def test_one_seed_builds_identical_fp32_weights_and_another_seed_does_not(architecture):
    first, second = (build_model(_tiny(architecture), VOCAB, seed=3) for _ in range(2))
    assert _same_weights(first, second)
    assert not _same_weights(first, build_model(_tiny(architecture), VOCAB, seed=4))
    assert first.config.model_type == architecture and first.dtype == torch.float32
    assert first.config.use_cache is False


def test_building_leaves_the_global_random_state_alone():
    state = torch.random.get_rng_state()
    build_model(_tiny("llama"), VOCAB, seed=0)
    assert torch.equal(state, torch.random.get_rng_state())


def test_embeddings_grow_to_the_tokenizer_but_never_shrink(saved_llama):
    assert build_model(_tiny("llama", vocab_size=128), VOCAB, 0).get_input_embeddings().num_embeddings == 128
    grown = build_model(ModelConfig(path=str(saved_llama)), 120, 0)
    assert grown.get_input_embeddings().num_embeddings == 120 and grown.config.vocab_size == 120
    # new rows seeded too
    assert _same_weights(grown, build_model(ModelConfig(path=str(saved_llama)), 120, 0))
    kept = build_model(ModelConfig(path=str(saved_llama)), 50, 0)
    assert kept.get_input_embeddings().num_embeddings == VOCAB


def test_a_local_model_loads_its_weights_with_config_overrides(saved_llama):
    cfg = ModelConfig(path=str(saved_llama), config={"rope_theta": 5e5, "max_position_embeddings": 4096})
    model = build_model(cfg, VOCAB, seed=99)
    assert _same_weights(model, build_model(_tiny("llama"), VOCAB, seed=0))
    assert model.dtype == torch.float32
    assert model.config.rope_parameters["rope_theta"] == 5e5 and max_positions(model.config) == 4096


def test_rope_scaling_override_keeps_the_models_rope_theta(saved_llama):
    cfg = ModelConfig(path=str(saved_llama), config={"rope_scaling": {"rope_type": "linear", "factor": 4.0}})
    rope = model_config(cfg, VOCAB).rope_parameters
    assert rope == {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}


def test_an_override_the_config_does_not_have_is_refused(saved_llama):
    with pytest.raises(ValueError, match=r"LlamaConfig has no field\(s\) \['rope_thetta'\]"):
        model_config(ModelConfig(path=str(saved_llama), config={"rope_thetta": 1.0}), VOCAB)


def test_a_missing_model_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"model.path {tmp_path / 'nope'}: no such directory"):
        build_model(ModelConfig(path=str(tmp_path / "nope")), VOCAB, 0)


def test_gradient_checkpointing_is_switched_on_by_config():
    assert build_model(ModelConfig(architecture="llama", config=TINY_CONFIGS["llama"],
                                   gradient_checkpointing=True), VOCAB, 0).is_gradient_checkpointing
    assert not build_model(_tiny("llama"), VOCAB, 0).is_gradient_checkpointing


def test_lora_trains_only_adapters_on_the_named_modules():
    model = apply_lora(build_model(_tiny("bloom"), VOCAB, 0),
                       LoraConfig(enabled=True, target_modules=["query_key_value", "dense"]))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert any("query_key_value.lora_A" in name for name in trainable)


def test_lora_names_target_modules_the_model_does_not_have():
    with pytest.raises(
        ValueError,
        match=r"\['q_proj', 'k_proj', 'v_proj', 'o_proj'\] match no module of this "
        r"bloom model; its linear layers are \[.*'query_key_value'",
    ):
        apply_lora(build_model(_tiny("bloom"), VOCAB, 0), LoraConfig(enabled=True))


def test_max_positions_is_the_rope_limit_and_none_for_alibi():
    assert max_positions(model_config(_tiny("qwen2"), VOCAB)) == 1024
    assert max_positions(model_config(_tiny("bloom"), VOCAB)) is None


def test_flops_per_token_is_6_matmul_params_plus_palm_attention_term():
    config = model_config(_tiny("llama"), VOCAB)  # untied: the head is a matmul, the embedding a lookup
    model = transformers.AutoModelForCausalLM.from_config(config)
    matmul = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    assert flops_per_token(config, seq_len=256) == 6 * matmul + 12 * 2 * 64 * 256
    bloom = model_config(_tiny("bloom"), VOCAB)  # tied: the shared matrix counts once, as the head
    all_params = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_config(bloom).parameters())
    assert flops_per_token(bloom, seq_len=0) == 6 * all_params
