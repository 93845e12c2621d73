"""Render a `Conversation` into SFT `input_ids` and `labels`, token for token as serving will see it.

The text is the chat template's rendering, the same template the served model uses. It is cut into
segments that are tokenized one by one (`add_special_tokens=False`) and concatenated:

    text:     User: q</s>\\n Assistant: | a</s> | \\n User: q2</s>\\n Assistant: | a2</s>
    segment:  prompt                   | train  | prompt                      | train
    labels:   -100 ...                 | a </s> | -100 ...                    | a2 </s>

Why segment by segment: a served prompt ends with "Assistant: " and generation starts after it,
whereas tokenizing the whole text at once lets a byte-level BPE merge that space into the answer's
first token. Every trained segment ends with EOS, a special token the tokenizer splits on anyway,
so each turn's prompt tokens equal the served prompt's tokens, and the model learns to stop where
vLLM stops.

A trained turn's span is [len(render(messages[:i], generation prompt)), len(render(messages[:i+1])))
cut after its last EOS; what follows that EOS (a template's "\\n", say) joins the next prompt.
A trained turn that is not the assistant's (`loss=True` on a user turn) has no generation prompt:
its span includes its role header, as in ChatGLM3's finetuning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from lmforge.data.stages.train_tokenizer import CLASSIC_CHAT_TEMPLATE
from lmforge.data.text.conversation import Conversation

IGNORE_INDEX = -100  # the label of an untrained token (PyTorch cross-entropy's ignore_index)


@dataclass
class RenderedSample:
    input_ids: np.ndarray  # int32
    labels: np.ndarray  # int32, IGNORE_INDEX where not trained
    turns_kept: int  # turns of the conversation kept (all, unless truncated)
    turns_total: int


class SampleTooLong(ValueError):
    """Even the first trained exchange does not fit in max_length."""


class NothingToTrain(ValueError):
    """The conversation has no trained turn (every turn is a prompt)."""


class ChatRenderer:
    """Conversation -> RenderedSample under one chat template; build once per worker, call per sample."""

    def __init__(self, tokenizer, template: Literal["classic", "tokenizer"], max_length: int):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        if template == "classic":
            self.chat_template, self._template_name = CLASSIC_CHAT_TEMPLATE, "the classic chat template"
        elif template == "tokenizer":
            if not isinstance(tokenizer.chat_template, str):
                raise ValueError(
                    f"chat template 'tokenizer': tokenizer {name} has no (single) chat_template; "
                    "use template 'classic' or add one to its tokenizer_config.json"
                )
            self.chat_template = tokenizer.chat_template
            self._template_name = f"the chat template of tokenizer {name}"
        else:
            raise ValueError(f"chat template: expected 'classic' or 'tokenizer', got {template!r}")
        if tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer {name}: has no EOS token; a trained turn must end with one")
        self.eos_token_id: int = tokenizer.eos_token_id
        self.max_length = max_length
        self._eos_text: str = tokenizer.eos_token
        self._tokenizer = tokenizer
        self._backend = tokenizer.backend_tokenizer  # the Rust tokenizer: the fast tokenizer's own encoder

    def render(self, conversation: Conversation) -> RenderedSample:
        """Token ids and labels of the longest run of whole turns, from the start, that ends on a
        trained turn and fits in max_length. Raises SampleTooLong or NothingToTrain."""
        messages = conversation.messages()
        first_turn = len(messages) - len(conversation.turns)  # the system message, if any, comes first
        tools = conversation.tools or None
        full = self._apply(messages, tools)
        ids: list[int] = []
        labels: list[int] = []
        covered = turns_kept = 0  # characters of `full` in `ids`; turns in `ids`
        tail: list[int] = []  # the last kept turn's text after its EOS
        for i, turn in enumerate(conversation.turns):
            if not turn.trained:
                continue
            start, end, turn_end = self._span(messages, first_turn + i, full, tools)
            prompt, answer = self._encode(full[covered:start]), self._encode(full[start:end])
            if not answer or answer[-1] != self.eos_token_id:
                raise ValueError(f"{self._template_name}: turn {i} ends with the text {self._eos_text!r} but "
                                 f"not with the EOS id {self.eos_token_id}; the tokenizer must split it out")
            turn_tail = self._encode(full[end:turn_end])
            if len(ids) + len(prompt) + len(answer) + len(turn_tail) > self.max_length:
                break  # whole turns only: the sample ends with the last trained turn that fits
            ids += prompt + answer
            labels += [IGNORE_INDEX] * len(prompt) + answer
            covered, turns_kept, tail = end, i + 1, turn_tail
        if not turns_kept:
            if any(turn.trained for turn in conversation.turns):
                raise SampleTooLong(f"the first trained exchange is longer than max_length={self.max_length} "
                                    "tokens")
            raise NothingToTrain("the conversation has no trained turn")
        ids += tail
        labels += [IGNORE_INDEX] * len(tail)
        return RenderedSample(np.asarray(ids, dtype=np.int32), np.asarray(labels, dtype=np.int32),
                              turns_kept, len(conversation.turns))

    def prompt_ids(self, conversation: Conversation) -> list[int]:
        """The token ids a server sends for `conversation`'s messages followed by the generation prompt."""
        return self._encode(self._apply(conversation.messages(), conversation.tools or None, True))

    def _span(self, messages: list[dict], index: int, full: str, tools) -> tuple[int, int, int]:
        """Where message `index`'s trained text starts and ends (after its last EOS) in `full`, and where
        its rendering ends. Checks the template renders prefixes stably, as serving assumes."""
        role = messages[index]["role"]
        through = full if index + 1 == len(messages) else self._apply(messages[: index + 1], tools)
        # A conversation that opens with a trained turn has nothing before it to render.
        prompt = self._apply(messages[:index], tools, role == "assistant") if index else ""
        if not through.startswith(prompt) or not full.startswith(through):
            raise ValueError(
                f"{self._template_name}: the rendering of message {index} ({role}) does not extend the "
                "rendering before it (with its generation prompt), or is changed by later messages; "
                "training spans would not match serving. Use a template that renders turns append-only.")
        eos_at = through.rfind(self._eos_text, len(prompt))
        if eos_at < 0:
            raise ValueError(f"{self._template_name}: the rendering of message {index} ({role}) has no EOS "
                             f"{self._eos_text!r}; the model would never learn to stop (vLLM stops at EOS)")
        return len(prompt), eos_at + len(self._eos_text), len(through)

    def _apply(
        self, messages: list[dict], tools: list[dict[str, Any]] | None, generation_prompt=False
    ) -> str:
        # apply_chat_template compiles each template string once (an lru_cache in transformers).
        return self._tokenizer.apply_chat_template(messages, tools=tools, chat_template=self.chat_template,
                                                   add_generation_prompt=generation_prompt, tokenize=False)

    def _encode(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids if text else []
