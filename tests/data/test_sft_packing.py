"""SFT packing keeps every sample whole, restarts positions, fills rows, and never mixes samples."""

import numpy as np
import pyarrow as pa
import pytest

from lmforge.data.steps.row_packing import best_fit_decreasing, pack_samples, utilisation

CAPACITY = 32


def _samples(lengths, seed=0, first_key=100) -> pa.Table:
    """Sample i: ids from a range of its own (so pieces are traceable), labels -100 on a prompt prefix."""
    rng = np.random.default_rng(seed)
    ids, labels = [], []
    for i, n in enumerate(lengths):
        tokens = np.arange(n, dtype=np.int32) + 1000 * i
        prompt = rng.integers(0, n + 1)
        ids.append(tokens)
        labels.append(np.where(np.arange(n) < prompt, -100, tokens).astype(np.int32))
    return pa.table({
        "key": pa.array(np.arange(len(lengths)) + first_key, pa.int64()),
        "input_ids": pa.array(ids, pa.list_(pa.int32())),
        "labels": pa.array(labels, pa.list_(pa.int32())),
    })


def _random_lengths(seed, n=200, capacity=CAPACITY):
    return np.random.default_rng(seed).integers(1, capacity + 1, n).tolist()


def _first_fit_bins(lengths, capacity):
    rooms = []
    for length in lengths:
        fit = next((b for b, room in enumerate(rooms) if room >= length), None)
        if fit is None:
            rooms.append(capacity - length)
        else:
            rooms[fit] -= length
    return len(rooms)


@pytest.mark.parametrize("mode", ["packed", "padded"])
def test_every_sample_appears_once_whole_and_unchanged(mode):
    samples = _samples(_random_lengths(1))
    rows = pack_samples(samples, CAPACITY, mode)
    by_key = {r["key"]: r for r in samples.to_pylist()}
    seen = []
    for row in rows.to_pylist():
        start = 0
        for length, key in zip(row["boundaries"], row["keys"], strict=True):
            ids, labels = row["input_ids"][start:start + length], row["labels"][start:start + length]
            assert ids == by_key[key]["input_ids"]
            # the first label is never a target of the shifted loss; packing masks it (see the module)
            assert labels == [-100] + by_key[key]["labels"][1:]
            seen.append(key)
            start += length
        assert start == len(row["input_ids"]) == len(row["labels"])
    assert sorted(seen) == sorted(by_key)


def test_position_ids_restart_at_each_sample_boundary():
    rows = pack_samples(_samples(_random_lengths(2)), CAPACITY, "packed")
    for row in rows.to_pylist():
        assert row["position_ids"] == [p for length in row["boundaries"] for p in range(length)]


def test_rows_never_exceed_capacity_and_list_samples_longest_first():
    rows = pack_samples(_samples(_random_lengths(3)), CAPACITY, "packed")
    for row in rows.to_pylist():
        assert len(row["input_ids"]) == sum(row["boundaries"]) <= CAPACITY
        assert row["boundaries"] == sorted(row["boundaries"], reverse=True)


def test_lengths_that_fit_exactly_pack_into_the_minimum_number_of_bins():
    lengths = [20, 12, 16, 16, 30, 2, 25, 7, 32]  # 160 = 5 full bins of 32
    bins = best_fit_decreasing(lengths, CAPACITY)
    assert len(bins) == 5
    assert all(sum(lengths[i] for i in b) == CAPACITY for b in bins)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))


def test_best_fit_picks_the_fullest_bin_that_fits():
    # bins after the three big items have room 2, 4 and 6: a 3 goes to the one with room 4
    assert best_fit_decreasing([30, 28, 26, 3], CAPACITY) == [[0], [1, 3], [2]]


@pytest.mark.parametrize("seed", range(5))
def test_best_fit_decreasing_uses_no_more_bins_than_first_fit_in_input_order(seed):
    lengths = _random_lengths(seed, n=300)
    bins = len(best_fit_decreasing(lengths, CAPACITY))
    assert bins <= _first_fit_bins(lengths, CAPACITY)
    assert bins >= -(-sum(lengths) // CAPACITY)


def test_output_is_identical_under_any_input_row_order():
    samples = _samples(_random_lengths(4) + [5] * 20)  # many equal lengths: ties are broken by key
    expected = pack_samples(samples, CAPACITY, "packed")
    for seed in range(3):
        shuffled = samples.take(np.random.default_rng(seed).permutation(samples.num_rows))
        assert pack_samples(shuffled, CAPACITY, "packed").equals(expected)


def test_rows_are_ordered_by_their_first_samples_key():
    rows = pack_samples(_samples(_random_lengths(5)), CAPACITY, "packed")
    firsts = [keys[0] for keys in rows.column("keys").to_pylist()]
    assert firsts == sorted(firsts)


def test_padded_mode_gives_each_sample_its_own_row():
    samples = _samples(_random_lengths(6, n=50))
    rows = pack_samples(samples, CAPACITY, "padded")
    assert rows.num_rows == 50
    assert rows.column("keys").to_pylist() == [[k] for k in sorted(samples.column("key").to_pylist())]


def test_a_sample_longer_than_capacity_is_rejected():
    with pytest.raises(ValueError, match="key 102 has 33 tokens > capacity 32"):
        pack_samples(_samples([4, 8, CAPACITY + 1]), CAPACITY, "packed")
    with pytest.raises(ValueError, match="item 1 has length 33"):
        best_fit_decreasing([4, CAPACITY + 1], CAPACITY)


def test_copies_of_a_sample_are_packed_as_separate_samples_in_any_order():
    samples = _samples([3, 4])
    doubled = pack_samples(pa.concat_tables([samples, samples]), CAPACITY, "packed")
    assert sorted(k for row in doubled.column("keys").to_pylist() for k in row) == sorted(
        samples.column("key").to_pylist() * 2)
    assert doubled.equals(pack_samples(pa.concat_tables([samples.slice(1), samples, samples.slice(0, 1)]),
                                       CAPACITY, "packed"))


def test_utilisation_is_real_tokens_over_rows_times_capacity():
    samples = _samples([32, 16, 10, 6, 8])  # 72 tokens
    assert utilisation(pack_samples(samples, CAPACITY, "packed"), CAPACITY) == pytest.approx(72 / (3 * 32))
    assert utilisation(pack_samples(samples, CAPACITY, "padded"), CAPACITY) == pytest.approx(72 / (5 * 32))
    assert utilisation(pack_samples(samples.slice(0, 0), CAPACITY, "packed"), CAPACITY) == 0.0


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_the_token_weighted_mean_of_per_sample_losses(attn):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        attn_implementation=attn,
    )
    model = transformers.LlamaForCausalLM(config).float().eval()

    rng = np.random.default_rng(0)
    lengths = [11, 9, 7, 3]
    ids = [rng.integers(0, 97, n).astype(np.int32) for n in lengths]
    labels = [np.where(np.arange(n) < 2, -100, t).astype(np.int32) for n, t in zip(lengths, ids, strict=True)]
    labels[1] = ids[1].copy()  # a sample trained on every token: its first label must not leak
    samples = pa.table(
        {
            "key": pa.array(range(4), pa.int64()),
            "input_ids": pa.array(ids, pa.list_(pa.int32())),
            "labels": pa.array(labels, pa.list_(pa.int32())),
        }
    )
    [row] = pack_samples(samples, CAPACITY, "packed").to_pylist()

    def loss(input_ids, labels, **kwargs):
        tensor = lambda x: torch.tensor([list(x)], dtype=torch.long)
        with torch.no_grad():
            return model(
                input_ids=tensor(input_ids), labels=tensor(labels), use_cache=False, **kwargs
            ).loss.item()

    packed = loss(row["input_ids"], row["labels"], position_ids=torch.tensor([row["position_ids"]]),
                  attention_mask=None)
    targets = [int((lab[1:] != -100).sum()) for lab in labels]
    alone = [loss(i, lab) for i, lab in zip(ids, labels, strict=True)]
    assert packed == pytest.approx(np.dot(alone, targets) / sum(targets), abs=1e-4)
