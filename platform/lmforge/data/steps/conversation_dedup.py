"""What "the same SFT sample" means: the dedup key of a conversation, and conversations a longer one
continues (and the same for preference records: their prompt, or the whole pair).

    key       compared text (exact + MinHash near dedup, the smallest key of a cluster is kept)
    prompt    system prompt + tools + every user turn (default: the same question asked again is
              redundant, but a conversation that goes on differently, or calls other tools, is not)
    first_turn  the first user turn only (the original recipe; drops conversations that only share
              their opening question)
    conversation  every turn, answers included (only repeated samples go)

Prefixes: a conversation whose turns are exactly the first turns of a longer one (datasets that
store a dialogue once per round, each record repeating the earlier rounds) is dropped in favour of
the longer one, whose extra turns would otherwise be lost.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import ray.data
import xxhash

from lmforge.data.steps.minhash import normalize_for_dedup
from lmforge.data.text.conversation import Conversation
from lmforge.data.text.preference_formats import PreferenceExample


def dedup_text(conversation: Conversation, key: str) -> str:
    """The text dedup compares for `conversation` under `key` (SFTDedupConfig.key)."""
    if key == "first_turn":
        return conversation.first_user_turn
    turns = (
        conversation.turns if key == "conversation" else [t for t in conversation.turns if t.role == "user"]
    )
    header = [conversation.system or ""]
    if conversation.tools:
        header.append(json.dumps(conversation.tools, ensure_ascii=False, sort_keys=True))
    return "\n".join(
        header + [f"{t.role}: {t.content}" if key == "conversation" else t.content for t in turns]
    )


def dedup_texts(batch: pa.Table, key: str) -> pa.Table:
    """Ray Data body: conversation JSON in `text` -> the text dedup compares, under `key`."""
    texts = [dedup_text(Conversation.from_json(t), key) for t in batch.column("text").to_pylist()]
    return pa.table({"key": batch.column("key"), "text": pa.array(texts, pa.string())})


def preference_dedup_texts(batch: pa.Table, key: str) -> pa.Table:
    """Ray Data body: PreferenceExample JSON in `text` -> the text dedup compares under `key`
    (PreferenceDedupConfig.key): the whole prompt (its tool results and earlier answers are part of the
    question asked, unlike SFT's key prompt); `pair` adds the answers."""
    texts = []
    for text in batch.column("text").to_pylist():
        example = PreferenceExample.from_json(text)
        answers = "".join(f"\n{t.role}: {t.content}" for answer in example.answers for t in answer)
        texts.append(dedup_text(example.prompt, "conversation") + (answers if key == "pair" else ""))
    return pa.table({"key": batch.column("key"), "text": pa.array(texts, pa.string())})


def prefix_hashes(conversation: Conversation) -> tuple[int, list[int]]:
    """(hash of the whole conversation, hashes of its shorter prefixes that end in an assistant turn).

    Contents are compared in dedup's normal form, so spacing and punctuation differences do not count.
    """
    state = xxhash.xxh64()
    state.update(json.dumps([conversation.system or "", conversation.tools or []], ensure_ascii=False,
                            sort_keys=True).encode())
    prefixes = []
    for i, turn in enumerate(conversation.turns):
        state.update(json.dumps([turn.role, normalize_for_dedup(turn.content)], ensure_ascii=False).encode())
        if turn.role == "assistant" and i < len(conversation.turns) - 1:
            prefixes.append(state.intdigest())
    return state.intdigest(), prefixes


def find_prefix_conversations(conversations: ray.data.Dataset) -> np.ndarray:
    """Sorted keys of conversations (columns key, text: conversation JSON) that a longer one continues."""
    whole_keys, whole, prefixes = [], [], []
    for batch in conversations.select_columns(["key", "text"]).map_batches(
        _prefix_rows, batch_format="pyarrow"
    ).iter_batches(batch_format="numpy", batch_size=None):
        is_prefix = batch["is_prefix"]
        whole_keys.append(batch["key"][~is_prefix])
        whole.append(batch["hash"][~is_prefix])
        prefixes.append(batch["hash"][is_prefix])
    if not whole_keys:
        return np.zeros(0, np.int64)
    whole_keys, whole, prefixes = (np.concatenate(parts) for parts in (whole_keys, whole, prefixes))
    return np.sort(whole_keys[np.isin(whole, prefixes)])


def _prefix_rows(batch: pa.Table) -> pa.Table:
    """A row per conversation (is_prefix false: its whole hash) and one per prefix of it (is_prefix true)."""
    keys, hashes, is_prefix = [], [], []
    for key, text in zip(batch.column("key").to_pylist(), batch.column("text").to_pylist(), strict=True):
        whole, prefixes = prefix_hashes(Conversation.from_json(text))
        keys += [key] * (1 + len(prefixes))
        hashes += [whole, *prefixes]
        is_prefix += [False] + [True] * len(prefixes)
    return pa.table({
        "key": pa.array(keys, pa.int64()),
        "hash": pa.array(np.array(hashes, np.uint64).view(np.int64), pa.int64()),
        "is_prefix": pa.array(is_prefix, pa.bool_()),
    })
