"""Settings of the convert stage: a ZeRO-3 training checkpoint -> a Hugging Face model directory."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmforge.config.base import StrictModel


class ConvertConfig(StrictModel):
    """`lmforge convert`: consolidate a checkpoint, merge LoRA,
    save safetensors + tokenizer + chat template."""

    checkpoint: str = Field(
        description="A run's checkpoint_* directory, or the run directory (its newest checkpoint)."
    )
    output_dir: str = Field(description="Model directory to write (loads with transformers and vLLM).")
    dtype: Literal["fp32", "bf16", "fp16"] = Field("bf16", description="Weight dtype of the saved model.")
    merge_lora: bool = Field(
        True, description="LoRA runs: fold the adapter into the base weights (vLLM serves these)."
    )
    save_adapter: bool = Field(
        False, description="LoRA runs: also save the adapter alone to output_dir/adapter."
    )
    max_shard_size: str = Field("2GB", description="Largest safetensors file; bigger models are sharded.")
    trust_remote_code: bool = Field(
        False, description="Run code shipped in the run's model.path (off: safe)."
    )
    verify: bool = Field(True, description="Reload the output and check weights and a greedy generation.")
