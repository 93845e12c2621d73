"""Pack preference pairs into rows of at most 2 * max_length tokens, every pair whole, chosen then rejected.

    pairs:         P = chosen c c c, rejected r r        Q = chosen C C, rejected R R R R      capacity = 12
    row:           C C R R R R c c c r r                 (best-fit decreasing on pair lengths: Q then P)
    position_ids:  0 1 0 1 2 3 0 1 2 0 1                 (restart per sequence)
    boundaries:    [2, 4, 3, 2]                          (sequence lengths; padding is not written)
    kinds:         [0, 1, 0, 1]                          (0 chosen, 1 rejected, 2 KTO's KL sequence)
    pair_keys:     [key(Q), key(Q), key(P), key(P)]      (the record key, shared by a pair's sequences)

Every sequence attends only to itself and its first label is -100 (lmforge.data.steps.row_packing draws
the mask and says why). A pair (two sequences of at most max_length each) always fits a row.

KTO has no pairs: each sample (kind 0 when desirable, 1 when not) is followed by its KL sequence
(kind 2): the sample's prompt with the completion of the next sample in key order within the pack
group (wrapping; copies of one record made by the mixture count as one), as TRL's KTO shifts completions
within a batch. The KL completion is labelled like any answer, and cut to max_length.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lmforge.data.steps.row_packing import lay_out_rows, row_bins
from lmforge.data.text.chat_render import IGNORE_INDEX

CHOSEN, REJECTED, KL = 0, 1, 2  # kinds (KTO: CHOSEN = desirable, REJECTED = undesirable)


def pack_pairs(sequences: pa.Table, capacity: int, mode: Literal["packed", "padded"]) -> pa.Table:
    """Sequences (pair int64: the pair's index, from 0, in output order; key int64; kind int8;
    input_ids, labels: list<int32>), a pair's sequences adjacent and in order -> rows of whole pairs.

    Row columns: input_ids, labels, position_ids, boundaries, kinds, pair_keys. Rows are ordered by their
    first pair; "packed" fills rows by best-fit decreasing of pair lengths, "padded" gives each pair a row.
    """
    pair = sequences.column("pair").to_numpy()
    ids = sequences.column("input_ids").combine_chunks()
    lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False).astype(np.int64)
    pairs = int(pair[-1]) + 1 if pair.size else 0
    pair_lengths = np.bincount(pair, weights=lengths, minlength=pairs).astype(np.int64)
    first = np.searchsorted(pair, np.arange(pairs))
    count = np.bincount(pair, minlength=pairs)
    bins = row_bins(pair_lengths.tolist(), capacity, mode)
    sequence_bins = [[s for p in b for s in range(first[p], first[p] + count[p])] for b in bins]
    return lay_out_rows(sequence_bins, ids, sequences.column("labels").combine_chunks(), lengths, {
        "kinds": sequences.column("kind").combine_chunks().cast(pa.int8()),
        "pair_keys": sequences.column("key").combine_chunks().cast(pa.int64()),
    })


def pair_sequences(pairs: pa.Table) -> pa.Table:
    """Pairs (key, chosen_ids, chosen_labels, rejected_ids, rejected_labels), in output order -> the
    sequences pack_pairs takes: each pair's chosen, then its rejected."""
    n = pairs.num_rows
    order = pa.array(np.stack([np.arange(n), np.arange(n) + n], axis=1).ravel())

    def interleave(chosen: str, rejected: str) -> pa.Array:
        return pa.concat_arrays([pairs.column(chosen).combine_chunks(),
                                 pairs.column(rejected).combine_chunks()]).take(order)

    return pa.table({
        "pair": pa.array(np.repeat(np.arange(n), 2), pa.int64()),
        "key": pa.array(np.repeat(pairs.column("key").to_numpy(), 2), pa.int64()),
        "kind": pa.array(np.tile([CHOSEN, REJECTED], n), pa.int8()),
        "input_ids": interleave("chosen_ids", "rejected_ids"),
        "labels": interleave("chosen_labels", "rejected_labels"),
    })


def kto_sequences(samples: pa.Table, max_length: int) -> pa.Table:
    """KTO samples (key, chosen_ids, chosen_labels, prompt_length, desirable), sorted by key -> the
    sequences pack_pairs takes: each sample, then its KL sequence (the module docstring says which)."""
    keys = samples.column("key").to_numpy()
    n = len(keys)
    partner = np.searchsorted(keys, keys, side="right") % max(n, 1)  # the first sample of the next key
    ids = [np.asarray(x, np.int32) for x in samples.column("chosen_ids").to_pylist()]
    labels = [np.asarray(x, np.int32) for x in samples.column("chosen_labels").to_pylist()]
    prompts = samples.column("prompt_length").to_pylist()
    seq_ids, seq_labels = [], []
    for i, j in enumerate(partner):
        completion = slice(prompts[j], None)
        kl_ids = np.concatenate([ids[i][:prompts[i]], ids[j][completion]])[:max_length]
        kl_labels = np.concatenate([np.full(prompts[i], IGNORE_INDEX, np.int32), labels[j][completion]])
        seq_ids += [ids[i], kl_ids]
        seq_labels += [labels[i], kl_labels[:max_length]]
    desirable = np.asarray(samples.column("desirable").to_pylist(), bool)
    kinds = np.stack([np.where(desirable, CHOSEN, REJECTED), np.full(n, KL)], axis=1).ravel()
    return pa.table({
        "pair": pa.array(np.repeat(np.arange(n), 2), pa.int64()),
        "key": pa.array(np.repeat(keys, 2), pa.int64()),
        "kind": pa.array(kinds, pa.int8()),
        "input_ids": pa.array(seq_ids, pa.list_(pa.int32())),
        "labels": pa.array(seq_labels, pa.list_(pa.int32())),
    })
