"""Prompts for the engine: input records -> chat messages -> token ids in the model's own chat template.

    prompt_record(fields, source)     a record -> {"id", "messages", "reference"} (or RecordError)
    PromptTokenizer(model_dir)        messages -> prompt_ids: the chat template of the model directory,
                                      with the generation prompt, tokenized without added special tokens
                                      (as prepare-sft tokenizes the prompt it trains on)

A record is a prompt (`{"id": ..., "prompt": "..."}`) or a conversation in any SFT schema that
prepare-sft reads; a conversation's last assistant turn becomes the reference and the turns before
it the prompt, so a model can re-answer an SFT set and be compared with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from lmforge.config.infer import PromptSourceConfig
from lmforge.data.text.sft_formats import detect_record_format, to_conversation
from lmforge.data.text.templates import RecordError


def prompt_record(fields: dict, source: PromptSourceConfig) -> str:
    """The record as JSON {"id", "messages", "reference"}; `id` is None when the record has none."""
    record_id = fields.get(source.id_field)
    record_format = source.record_format
    if record_format == "auto":
        prompt = fields.get(source.prompt_field)
        record_format = "prompt" if isinstance(prompt, str) else detect_record_format(fields)
        if record_format is None:
            raise RecordError(
                f"neither a '{source.prompt_field}' field nor an SFT record; has {sorted(fields)[:8]}"
            )
    if record_format == "prompt":
        prompt = fields.get(source.prompt_field)
        if not isinstance(prompt, str) or not prompt.strip():
            raise RecordError(f"field '{source.prompt_field}' is missing or empty")
        system = [{"role": "system", "content": source.system}] if source.system else []
        messages, reference = system + [{"role": "user", "content": prompt.strip()}], None
    else:
        conversation = to_conversation(fields, record_format, source.fields, source.system)
        *messages, last = conversation.messages()
        reference = last["content"]
    return json.dumps({"id": None if record_id is None else str(record_id), "messages": messages,
                       "reference": reference}, ensure_ascii=False)


class PromptTokenizer:
    """Ray Data callable class: a `messages` JSON column -> `prompt_ids` in the model's chat template."""

    def __init__(self, model_dir: str | Path):
        from lmforge.data.steps.tokenize import load_fast_tokenizer

        self.tokenizer = load_fast_tokenizer(str(model_dir))
        if not isinstance(self.tokenizer.chat_template, str):
            raise ValueError(  # noqa: TRY004  (a model directory without a template: a value, not a type, error)
                f"{model_dir}: the tokenizer has no chat template; lmforge convert writes the run's "
                "template into the model directory")
        self._backend = self.tokenizer.backend_tokenizer

    def encode_messages(self, messages: list[dict[str, Any]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.encode(text)

    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids if text else []

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = [self.encode_messages(json.loads(m)) for m in batch.column("messages").to_pylist()]
        return batch.append_column("prompt_ids", pa.array(ids, pa.list_(pa.int32())))
