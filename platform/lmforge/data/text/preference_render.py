"""Render a `PreferenceExample` into one token sequence per answer: the prompt, then that answer.

    sequence:  User: q</s>\\n Assistant: | a</s>            (classic template; chosen and rejected alike)
    labels:    -100 ...                 | a </s>
               prompt: exactly the token ids a server sends for the prompt messages with the generation
               prompt (ChatRenderer tokenizes segment by segment), the same before every answer

An answer of several turns (a tool call, its result, the reply) has its tool results labelled -100 too;
the sequence ends at the answer's last EOS (what a template writes after it is not part of the answer).

A pair longer than max_length (prompt + its longer answer), in this order:
1. the prompt gets a budget: max_prompt_length when set (a longer prompt is always shortened), else what
   the longer answer leaves, but at least max_length // 2 (or all it has);
2. a prompt over its budget loses whole earlier turns, keeping the system prompt, the tools and the
   last user turn with what follows it; then the start of that user turn's text (the text is cut and
   rendered again, so the template's control tokens stay whole); a prompt that still does not fit drops
   the pair (PairTooLong);
3. each answer keeps its first max_length - prompt tokens (an answer cut short has no EOS); answers
   that become identical drop the pair (IdenticalWhenCut): they would teach no preference.
"""

from __future__ import annotations

import sys
from bisect import bisect_left
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from lmforge.data.text.chat_render import IGNORE_INDEX, ChatRenderer
from lmforge.data.text.conversation import Conversation, Turn
from lmforge.data.text.preference_formats import PreferenceExample

_CUT_ROUNDS = 8  # re-renders of a cut user turn; each removes what the last one was over by


@dataclass
class RenderedExample:
    sequences: list[tuple[np.ndarray, np.ndarray]]  # (input_ids, labels) int32 per answer: chosen, rejected
    prompt_length: int  # tokens before the answer, the same in every sequence
    truncated: bool  # the prompt was shortened or an answer cut


class PairTooLong(ValueError):
    """Even the system prompt, tools and the last user turn with a few tokens of its text do not fit."""


class IdenticalWhenCut(ValueError):
    """Chosen and rejected are the same once cut to max_length."""


class PreferenceRenderer:
    """PreferenceExample -> RenderedExample under one chat template; build once per worker, call per pair."""

    def __init__(self, tokenizer, template: Literal["classic", "tokenizer"], max_length: int,
                 max_prompt_length: int | None = None):
        self.chat = ChatRenderer(tokenizer, template, sys.maxsize)  # the cuts are ours
        self.max_length, self.max_prompt_length = max_length, max_prompt_length
        self._backend = tokenizer.backend_tokenizer

    def render(self, example: PreferenceExample) -> RenderedExample:
        """One sequence per answer, cut to max_length as the module docstring says;
        raises PairTooLong or IdenticalWhenCut."""
        sequences = self._sequences(example)
        prompt = _prompt_length(sequences)
        budget = self._prompt_budget(prompt, max(len(ids) for ids, _ in sequences) - prompt)
        truncated = prompt > budget
        if truncated:
            sequences = self._sequences(replace(example, prompt=self._shorten(example.prompt, budget)))
            prompt = _prompt_length(sequences)
        if any(len(ids) > self.max_length for ids, _ in sequences):
            truncated = True
            sequences = [(ids[:self.max_length], labels[:self.max_length]) for ids, labels in sequences]
            if len(sequences) == 2 and np.array_equal(sequences[0][0], sequences[1][0]):
                raise IdenticalWhenCut(f"chosen and rejected are identical in their first "
                                       f"{self.max_length - prompt} tokens")
        return RenderedExample(sequences, prompt, truncated)

    def _sequences(self, example: PreferenceExample) -> list[tuple[np.ndarray, np.ndarray]]:
        sequences = []
        for answer in example.answers:
            sample = self.chat.render(example.conversation(answer))
            end = int(np.flatnonzero(sample.labels != IGNORE_INDEX)[-1]) + 1
            sequences.append((sample.input_ids[:end], sample.labels[:end]))
        return sequences

    def _prompt_budget(self, prompt: int, answer: int) -> int:
        """The most prompt tokens to keep when the longest answer has `answer` tokens."""
        limit, cap = self.max_length, self.max_prompt_length
        if prompt + answer <= limit and (cap is None or prompt <= cap):
            return prompt
        return min(prompt, cap or limit, max(limit - answer, cap or limit // 2))

    def _shorten(self, prompt: Conversation, budget: int) -> Conversation:
        """The prompt from the earliest user turn on that fits in `budget` tokens, else its last user turn
        with the start of its text cut."""
        users = [i for i, turn in enumerate(prompt.turns) if turn.role == "user"]

        def from_turn(k: int) -> Conversation:
            return Conversation(prompt.turns[users[k]:], prompt.system, prompt.tools)

        def fits(k: int) -> bool:
            return len(self.chat.prompt_ids(from_turn(k))) <= budget

        # fewer turns render shorter (templates render append-only): halving finds the first that fits
        first = bisect_left(range(len(users)), True, key=fits)
        if first < len(users):
            return from_turn(first)
        return self._cut_user_text(from_turn(len(users) - 1), budget)

    def _cut_user_text(self, prompt: Conversation, budget: int) -> Conversation:
        """`prompt` (opening with a user turn) with the start of that turn's text cut to fit in `budget`."""
        text = prompt.turns[0].content
        starts = [start for start, _ in self._backend.encode(text, add_special_tokens=False).offsets]

        def keeping(tail: str) -> Conversation:
            return Conversation([Turn("user", tail, False), *prompt.turns[1:]], prompt.system, prompt.tools)

        keep = budget - len(self.chat.prompt_ids(keeping("")))  # text tokens the rest of the prompt leaves
        for _ in range(_CUT_ROUNDS):
            if keep < 1:
                break
            cut = keeping(text[starts[max(len(starts) - keep, 0)]:])  # starts are character offsets
            over = len(self.chat.prompt_ids(cut)) - budget
            if over <= 0:
                return cut
            keep -= over
        raise PairTooLong(f"the prompt does not fit in {budget} tokens even as its system prompt, tools and "
                          "a few tokens of its last user turn")


def _prompt_length(sequences: list[tuple[np.ndarray, np.ndarray]]) -> int:
    """Where the answer starts: the first trained token, the same in every sequence (ValueError if not)."""
    starts = {int(np.flatnonzero(labels != IGNORE_INDEX)[0]) for _, labels in sequences}
    start = min(starts)
    first_ids = sequences[0][0][:start]
    if len(starts) > 1 or any(not np.array_equal(ids[:start], first_ids) for ids, _ in sequences):
        raise ValueError("the chat template renders the prompt differently before the chosen and the "
                         "rejected answer; the pair would not share its prompt tokens")
    return start
