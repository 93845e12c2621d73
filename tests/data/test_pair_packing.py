"""Whole pairs in packed rows: adjacent, chosen then rejected, each sequence on its own positions;
KTO samples each followed by their KL sequence."""

from __future__ import annotations

import pyarrow as pa
import pytest

from lmforge.data.steps.pair_packing import CHOSEN, KL, REJECTED, kto_sequences, pack_pairs, pair_sequences


def _pairs(lengths: list[tuple[int, int]], keys: list[int] | None = None) -> pa.Table:
    """Pair i: chosen ids [i*100 ...], rejected ids [i*100 + 50 ...], prompt of 1 token (label -100)."""
    def seq(start: int, n: int) -> list[int]:
        return list(range(start, start + n))

    def labelled(start: int, n: int) -> list[int]:
        return [-100] + seq(start + 1, n - 1)

    return pa.table({
        "key": pa.array(keys or [10 * (i + 1) for i in range(len(lengths))], pa.int64()),
        "chosen_ids": pa.array([seq(100 * i, c) for i, (c, _) in enumerate(lengths)], pa.list_(pa.int32())),
        "chosen_labels": pa.array([labelled(100 * i, c) for i, (c, _) in enumerate(lengths)],
                                  pa.list_(pa.int32())),
        "rejected_ids": pa.array([seq(100 * i + 50, r) for i, (_, r) in enumerate(lengths)],
                                 pa.list_(pa.int32())),
        "rejected_labels": pa.array([labelled(100 * i + 50, r) for i, (_, r) in enumerate(lengths)],
                                    pa.list_(pa.int32())),
    })


def _sequences(row: dict):
    start = 0
    for length, kind, key in zip(row["boundaries"], row["kinds"], row["pair_keys"], strict=True):
        yield kind, key, row["input_ids"][start:start + length], row["labels"][start:start + length], \
            row["position_ids"][start:start + length]
        start += length


def test_pairs_stay_whole_and_adjacent_chosen_first_with_restarting_positions():
    pairs = _pairs([(3, 2), (2, 4), (5, 5), (1, 2)])
    table = pack_pairs(pair_sequences(pairs), capacity=12, mode="packed")
    assert {f.name: str(f.type.value_type) for f in table.schema} == {
        "input_ids": "int32", "labels": "int32", "position_ids": "int32", "boundaries": "int32",
        "kinds": "int8", "pair_keys": "int64"}
    rows = table.to_pylist()
    # best-fit decreasing on pair lengths 5, 6, 10, 3: [10], [6, 5], [3]; rows in order of their first pair
    assert [row["boundaries"] for row in rows] == [[2, 4, 3, 2], [5, 5], [1, 2]]
    seen = []
    for row in rows:
        sequences = list(_sequences(row))
        assert [kind for kind, *_ in sequences] == [CHOSEN, REJECTED] * (len(sequences) // 2)
        chosen_keys, rejected_keys = [s[1] for s in sequences[::2]], [s[1] for s in sequences[1::2]]
        assert chosen_keys == rejected_keys
        seen += chosen_keys
        assert all(positions == list(range(len(ids))) and labels[0] == -100 and labels[1:] == ids[1:]
                   for _, _, ids, labels, positions in sequences)
    assert sorted(seen) == [10, 20, 30, 40]


def test_padded_mode_gives_each_pair_its_own_row_in_key_order():
    rows = pack_pairs(pair_sequences(_pairs([(3, 2), (2, 4)])), capacity=12, mode="padded").to_pylist()
    assert [row["pair_keys"] for row in rows] == [[10, 10], [20, 20]]
    assert [row["boundaries"] for row in rows] == [[3, 2], [2, 4]]


def test_a_pair_longer_than_a_row_is_an_error():
    with pytest.raises(ValueError, match="outside 0..capacity"):
        pack_pairs(pair_sequences(_pairs([(8, 8)])), capacity=12, mode="packed")


def _kto(lengths: list[int], keys: list[int], desirable: list[bool]) -> pa.Table:
    """Sample i: prompt [1000*i] (one token), completion [1000*i + 1 ...]."""
    ids = [[1000 * i + t for t in range(n)] for i, n in enumerate(lengths)]
    return pa.table({
        "key": pa.array(keys, pa.int64()),
        "chosen_ids": pa.array(ids, pa.list_(pa.int32())),
        "chosen_labels": pa.array([[-100] + x[1:] for x in ids], pa.list_(pa.int32())),
        "prompt_length": pa.array([1] * len(lengths), pa.int64()),
        "desirable": pa.array(desirable, pa.bool_()),
    })


def test_each_kto_sample_is_followed_by_its_prompt_with_the_next_samples_completion():
    samples = _kto([3, 4, 2], keys=[1, 2, 3], desirable=[True, False, True])
    sequences = kto_sequences(samples, max_length=8).to_pylist()
    assert [s["kind"] for s in sequences] == [CHOSEN, KL, REJECTED, KL, CHOSEN, KL]
    assert [s["key"] for s in sequences] == [1, 1, 2, 2, 3, 3]
    kl = [s for s in sequences if s["kind"] == KL]
    assert [s["input_ids"] for s in kl] == [[0, 1001, 1002, 1003], [1000, 2001], [2000, 1, 2]]  # wraps
    assert [s["labels"] for s in kl] == [[-100, 1001, 1002, 1003], [-100, 2001], [-100, 1, 2]]
    rows = pack_pairs(kto_sequences(samples, max_length=8), capacity=16, mode="packed").to_pylist()
    assert sum(len(row["boundaries"]) for row in rows) == 6


def test_copies_of_one_kto_sample_take_the_next_records_completion_and_kl_is_cut_to_max_length():
    samples = _kto([2, 2, 6], keys=[1, 1, 2], desirable=[True, True, False])  # the mixture repeated key 1
    kl = [s["input_ids"] for s in kto_sequences(samples, max_length=4).to_pylist() if s["kind"] == KL]
    assert kl == [[0, 2001, 2002, 2003], [1000, 2001, 2002, 2003], [2000, 1]]
