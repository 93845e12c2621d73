"""The model a training worker starts from: loaded from a local directory or built from a config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers

from lmforge.config import LoraConfig, ModelConfig
from lmforge.train.batches import pack_aware_alibi

# Small enough for CPU tests and the demo; vocab_size comes from the tokenizer (build_model).
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 1024},
    "qwen2": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 1024},
    "bloom": {"hidden_size": 64, "n_layer": 2, "n_head": 4},  # ALiBi: no position limit, MLP 4 * hidden
}

_CONFIG_CLASSES = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
                   "bloom": transformers.BloomConfig}


def model_config(cfg: ModelConfig, vocab_size: int) -> transformers.PretrainedConfig:
    """The config `build_model` uses: `cfg.path`'s config with `cfg.config` overrides (its own vocab_size:
    build_model resizes), or `cfg.architecture`'s config class from `cfg.config` with vocab_size >= the
    tokenizer's."""
    if cfg.path is None:
        return _CONFIG_CLASSES[cfg.architecture](**{
            **cfg.config, "vocab_size": max(vocab_size, cfg.config.get("vocab_size", 0))})
    if not Path(cfg.path).is_dir():
        raise FileNotFoundError(
            f"model.path {cfg.path}: no such directory (give a local Hugging Face model dir)"
        )
    config = transformers.AutoConfig.from_pretrained(cfg.path, trust_remote_code=cfg.trust_remote_code)
    _override(config, cfg.config)
    return config


def build_model(cfg: ModelConfig, vocab_size: int, seed: int) -> transformers.PreTrainedModel:
    """Load `cfg.path` or build `cfg.architecture` in fp32; identical weights on every worker for one seed.

    Embeddings grow to `vocab_size` when the tokenizer is larger (never shrink); `use_cache` is off.
    """
    config = model_config(cfg, vocab_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # from-config init and the rows added by a resize
        if cfg.path is None:
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        else:
            model = transformers.AutoModelForCausalLM.from_pretrained(
                cfg.path, config=config, trust_remote_code=cfg.trust_remote_code, dtype=torch.float32)
        if vocab_size > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(vocab_size)
    model.config.use_cache = False  # with a KV cache transformers ignores packed position ids (DESIGN.md)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()  # non-reentrant: works with frozen embeddings (LoRA) and ZeRO-3
    if model.config.model_type == "bloom":
        pack_aware_alibi(model)
    return model


def _override(config: transformers.PretrainedConfig, overrides: dict[str, Any]) -> None:
    """Set `model.config` fields on a loaded config; a name the config does not have is an error."""
    overrides = dict(overrides)
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and ("rope_theta" in overrides or "rope_scaling" in overrides):
        # transformers 5 keeps theta and scaling in rope_parameters: setting the old names alone is ignored
        # (rope_theta) or drops the theta (rope_scaling), so fold them in.
        if "rope_scaling" in overrides:
            rope = {"rope_theta": rope.get("rope_theta"), **overrides.pop("rope_scaling")}
        if "rope_theta" in overrides:
            rope = {**rope, "rope_theta": overrides.pop("rope_theta")}
        overrides["rope_parameters"] = rope
    unknown = sorted(key for key in overrides if not hasattr(config, key))
    if unknown:
        raise ValueError(f"model.config: {type(config).__name__} has no field(s) {unknown}")
    for key, value in overrides.items():
        setattr(config, key, value)


def apply_lora(model: transformers.PreTrainedModel, cfg: LoraConfig):
    """Wrap `model` in LoRA adapters on `cfg.target_modules`; every listed name must match some module."""
    import peft

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [name for name in cfg.target_modules if name not in present]
    if missing:
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, torch.nn.Linear)})
        raise ValueError(f"lora.target_modules {missing} match no module of this {model.config.model_type} "
                         f"model; its linear layers are {linear}")
    return peft.get_peft_model(model, peft.LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules),
        task_type="CAUSAL_LM"))


def max_positions(config: transformers.PretrainedConfig) -> int | None:
    """Longest sequence the position encoding covers; None for ALiBi models (Bloom), which have no limit."""
    return getattr(config, "max_position_embeddings", None)


def flops_per_token(config: transformers.PretrainedConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), PaLM's estimate (Chowdhery et al. 2022, app. B).

    6 * N + 12 * n_layer * d_model * seq_len, where N counts the parameters used in matmuls: all of
    them except the input embedding (a lookup), with the LM head counted even when tied to it. The
    second term is attention's QK^T and AV (causal masking is not discounted, as in PaLM's MFU).
    """
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    matmul_params = sum(p.numel() for p in model.parameters())  # a tied weight once: it stands for the head
    if not model.config.tie_word_embeddings:
        matmul_params -= model.get_input_embeddings().weight.numel()
    return 6.0 * matmul_params + 12.0 * config.num_hidden_layers * config.hidden_size * seq_len
