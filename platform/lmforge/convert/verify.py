"""Check a converted model directory against the model convert held in memory.

Two checks, both recorded in the manifest:
- weights: every tensor reloaded from the safetensors files equals the in-memory one (same dtype: exact);
- generation: greedy tokens from a fixed chat prompt are the same. For an fp32 output they must also equal
  those of the checkpoint model itself (before the LoRA merge), which checks the merge; for bf16/fp16 that
  comparison is recorded but not required (rounding may flip a near-tie).
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

VERIFY_QUESTION = "你好，请介绍一下你自己。"
VERIFY_NEW_TOKENS = 16


class VerificationError(ValueError):
    """The converted directory does not reproduce the checkpoint; the message says what differs."""


def verification_prompt(tokenizer: transformers.PreTrainedTokenizerBase) -> list[int]:
    """Token ids of a fixed question in the model's chat template (plain text without a template)."""
    if tokenizer.chat_template:
        return list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": VERIFY_QUESTION}],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            )
        )
    return tokenizer(VERIFY_QUESTION)["input_ids"]


@torch.no_grad()
def greedy_ids(
    model: torch.nn.Module, prompt: list[int], max_new_tokens: int = VERIFY_NEW_TOKENS
) -> list[int]:
    """New token ids of a greedy generation; stops at the model's generation_config EOS."""
    model.eval()
    inputs = torch.tensor([prompt])
    output = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new_tokens,
                            do_sample=False, use_cache=True)
    return output[0, len(prompt):].tolist()


def verify_conversion(saved: transformers.PreTrainedModel, out: Path, prompt: list[int],
                      checkpoint_ids: list[int], require_checkpoint_match: bool) -> dict:
    """Reload `out` and compare with `saved` (the in-memory model written there); raises VerificationError."""
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=saved.dtype, use_safetensors=True)
    weights = compare_weights(saved.state_dict(), reloaded.state_dict())
    saved_ids = greedy_ids(saved, prompt)
    reloaded_ids = greedy_ids(reloaded, prompt)
    if reloaded_ids != saved_ids:
        raise VerificationError(
            f"{out}: greedy tokens of the reloaded model {reloaded_ids} differ from the "
            f"in-memory model's {saved_ids}; the saved config does not describe the model"
        )
    if require_checkpoint_match and saved_ids != checkpoint_ids:
        raise VerificationError(
            f"{out}: greedy tokens after conversion {saved_ids} differ from the checkpoint "
            f"model's {checkpoint_ids}"
        )
    return {
        "weights_equal": True, "tensors": weights,
        "prompt_ids": prompt, "checkpoint_tokens": checkpoint_ids, "converted_tokens": reloaded_ids,
        "generation_equal": True, "matches_checkpoint_model": saved_ids == checkpoint_ids,
    }


def compare_weights(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> int:
    """Number of tensors compared; raises VerificationError naming missing, extra or differing tensors."""
    missing, extra = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
    if missing or extra:
        raise VerificationError(f"reloaded weights: missing {missing[:5]}, unexpected {extra[:5]}")
    differ = [name for name, tensor in expected.items()
              if actual[name].dtype != tensor.dtype or not torch.equal(actual[name], tensor)]
    if differ:
        raise VerificationError(f"reloaded weights differ from the in-memory model in {len(differ)} tensors, "
                                f"e.g. {differ[:5]}")
    return len(expected)
