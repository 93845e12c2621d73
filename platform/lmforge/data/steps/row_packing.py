"""Pack SFT samples into rows of at most `capacity` tokens, none attending to another.

    samples:       A = a a a a    B = b b b    C = c c                     capacity = 10
    row:           a a a a b b b c c          (not padded: the trainer pads to capacity, labels -100)
    position_ids:  0 1 2 3 0 1 2 0 1
    boundaries:    [4, 3, 2]                  keys: [key(A), key(B), key(C)]

    attention it implies (query rows, key columns; 1 = may attend): block-causal
          a a a a b b b c c
        a 1 0 0 0 0 0 0 0 0
        a 1 1 0 0 0 0 0 0 0
        a 1 1 1 0 0 0 0 0 0
        a 1 1 1 1 0 0 0 0 0
        b 0 0 0 0 1 0 0 0 0
        b 0 0 0 0 1 1 0 0 0
        b 0 0 0 0 1 1 1 0 0
        c 0 0 0 0 0 0 0 1 0
        c 0 0 0 0 0 0 0 1 1

The trainer never builds that mask: it passes `position_ids` that restart at 0 for each sample,
`attention_mask=None` and `use_cache=False`, and transformers (5.19,
`masking_utils.find_packed_sequence_indices`) splits the row where position ids stop counting up
by one and builds the block-causal mask itself. With a KV cache present it silently does not, and
models without position ids (ALiBi) need an explicit mask or padding (see DESIGN.md).

The model shifts labels inside its loss (position t is scored on labels[t + 1]), so the last token
of A would be trained to predict the first label of B. Each sample's first label is therefore set
to -100 in the row: alone, that label is never a target either, so the loss is unchanged.

"packed" places samples by best-fit decreasing; "padded" gives each sample a row of its own.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lmforge.data.steps.hashing import splitmix64
from lmforge.data.text.chat_render import IGNORE_INDEX


class _RoomIndex:
    """Open bins by remaining room (0..capacity): a Fenwick tree of counts plus, per room, a heap of bins."""

    def __init__(self, capacity: int):
        self.size = capacity + 1
        self.tree = [0] * (self.size + 1)
        self.bins: dict[int, list[int]] = {}

    def _add(self, room: int, delta: int) -> None:
        i = room + 1
        while i <= self.size:
            self.tree[i] += delta
            i += i & -i

    def _count_below(self, room: int) -> int:
        total, i = 0, room
        while i > 0:
            total += self.tree[i]
            i -= i & -i
        return total

    def push(self, room: int, bin_index: int) -> None:
        heapq.heappush(self.bins.setdefault(room, []), bin_index)
        self._add(room, 1)

    def pop_tightest(self, need: int) -> tuple[int, int] | None:
        """Remove and return (room, bin) of the bin with the least room >= need (ties: oldest bin)."""
        rank = self._count_below(need)  # bins with room < need; we want the next one
        pos, step = 0, 1 << self.size.bit_length()
        while step:  # Fenwick descent: the largest prefix holding <= rank bins
            if pos + step <= self.size and self.tree[pos + step] <= rank:
                pos += step
                rank -= self.tree[pos]
            step >>= 1
        if pos >= self.size:
            return None
        room = pos  # tree index pos + 1 is room pos
        self._add(room, -1)
        return room, heapq.heappop(self.bins[room])


def assign_pack_group(batch: pa.Table, groups: int) -> pa.Table:
    """Ray Data body: adds `group` (rows packed together): a stable hash of key and copy, mod `groups`."""
    hashed = splitmix64(batch.column("key").to_numpy(), salt=batch.column("copy").to_numpy())
    return batch.append_column("group", pa.array(hashed % np.uint64(groups), pa.int64()))


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of item indices: longest item first (ties: smaller index), each into the fullest bin it fits.

    O(n log(capacity)) and deterministic; among equally full bins the oldest wins.
    Raises ValueError when an item is longer than `capacity`.
    """
    for i, length in enumerate(lengths):
        if not 0 <= length <= capacity:
            raise ValueError(f"item {i} has length {length}, outside 0..capacity ({capacity})")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    rooms = _RoomIndex(capacity)
    for i in order:
        found = rooms.pop_tightest(lengths[i])
        if found is None:
            room, b = capacity, len(bins)
            bins.append([])
        else:
            room, b = found
        bins[b].append(i)
        rooms.push(room - lengths[i], b)
    return bins


def pack_samples(samples: pa.Table, capacity: int, mode: Literal["packed", "padded"]) -> pa.Table:
    """Samples (key int64, input_ids, labels: list<int32>) -> unpadded rows of at most `capacity` tokens.

    Row columns: input_ids, labels, position_ids, boundaries (sample lengths), keys (sample keys).
    Samples in a row run longest first; rows are ordered by their first sample's key. The output
    depends only on the set of samples: they are sorted by key first. A key repeats only for
    identical copies of a sample (mixture up-sampling), so their order cannot change the output.
    Raises ValueError on a sample longer than `capacity` and on ids and labels of different lengths.
    """
    samples = samples.sort_by("key")
    keys = samples.column("key").to_numpy()
    ids = samples.column("input_ids").combine_chunks()
    labels = samples.column("labels").combine_chunks()
    lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False).astype(np.int64)
    mismatched = np.flatnonzero(lengths != pc.list_value_length(labels).to_numpy(zero_copy_only=False))
    if mismatched.size:
        raise ValueError(
            f"pack_samples: sample key {keys[mismatched[0]]} has input_ids and labels of different lengths"
        )
    too_long = np.flatnonzero(lengths > capacity)
    if too_long.size:
        key = keys[too_long[0]]
        raise ValueError(
            f"pack_samples: sample key {key} has {lengths[too_long[0]]} tokens > capacity {capacity}; "
            "truncate it or raise the capacity"
        )

    bins = row_bins(lengths.tolist(), capacity, mode)  # samples are in key order, so index order is key order
    return lay_out_rows(bins, ids, labels, lengths, {"keys": pa.array(keys, pa.int64())})


def row_bins(lengths: Sequence[int], capacity: int, mode: Literal["packed", "padded"]) -> list[list[int]]:
    """Item indices per row, rows ordered by their first item: "packed" by best-fit decreasing, "padded"
    one item per row."""
    if mode == "packed":
        bins = best_fit_decreasing(lengths, capacity)
    elif mode == "padded":
        bins = [[i] for i in range(len(lengths))]
    else:
        raise ValueError(f"packing mode must be 'packed' or 'padded', not {mode!r}")
    return sorted(bins, key=lambda b: b[0])


def lay_out_rows(bins: list[list[int]], ids: pa.ListArray, labels: pa.ListArray, lengths: np.ndarray,
                 per_sample: dict[str, pa.Array]) -> pa.Table:
    """Lay the samples out bin after bin (a bin: sample indices in row order) and cut the token stream at
    the bins' edges: a row per bin with input_ids, labels, position_ids, boundaries, and a list column
    of each `per_sample` array (a value per sample, e.g. its key) in the same order."""
    order = np.fromiter((i for b in bins for i in b), np.int64, count=len(lengths))
    sample_lens = lengths[order]
    sample_starts = np.cumsum(sample_lens) - sample_lens
    per_row = np.fromiter((len(b) for b in bins), np.int64, count=len(bins))
    sample_offsets = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int32)
    token_offsets = np.append(sample_starts, sample_lens.sum())[sample_offsets].astype(np.int32)

    take = pa.array(order)
    flat_ids = pc.list_flatten(ids.take(take)).to_numpy(zero_copy_only=False).astype(np.int32)
    flat_labels = pc.list_flatten(labels.take(take)).to_numpy(zero_copy_only=False).astype(np.int32)
    starts_nonempty = sample_starts[sample_lens > 0]
    flat_labels[starts_nonempty] = IGNORE_INDEX  # see the module docstring: the shifted loss
    positions = (np.arange(flat_ids.size) - np.repeat(sample_starts, sample_lens)).astype(np.int32)

    def lists(offsets: np.ndarray, values: np.ndarray, kind: pa.DataType) -> pa.ListArray:
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, kind))

    offsets = pa.array(sample_offsets, pa.int32())
    return pa.table({
        "input_ids": lists(token_offsets, flat_ids, pa.int32()),
        "labels": lists(token_offsets, flat_labels, pa.int32()),
        "position_ids": lists(token_offsets, positions, pa.int32()),
        "boundaries": lists(sample_offsets, sample_lens.astype(np.int32), pa.int32()),
        **{name: pa.ListArray.from_arrays(offsets, values.take(take)) for name, values in per_sample.items()},
    })


def utilisation(rows: pa.Table, capacity: int) -> float:
    """Real tokens / (rows * capacity): the share of a padded batch that is not padding."""
    if rows.num_rows == 0:
        return 0.0
    tokens = pc.sum(pc.list_value_length(rows.column("input_ids"))).as_py()
    return tokens / (rows.num_rows * capacity)


def write_row_shard(rows: pa.Table, group_id: int, out_dir: str) -> dict:
    """The packed rows of pack group `group_id` -> `rows-NNNNN.parquet` in `out_dir`, each row with a stable
    id (`row`: group_id << 32 plus its index, so training can order and hold out rows deterministically).
    Returns the shard's manifest entry: file, rows, tokens, trained_tokens, sha256."""
    rows = rows.append_column("row", pa.array(np.arange(rows.num_rows) + (group_id << 32), pa.int64()))
    name = f"rows-{group_id:05d}.parquet"
    path = Path(out_dir) / name
    pq.write_table(rows, path, compression="zstd")
    labels = pc.list_flatten(rows.column("labels")).to_numpy(zero_copy_only=False)
    return {"file": name, "rows": rows.num_rows,
            "tokens": int(pc.sum(pc.list_value_length(rows.column("input_ids"))).as_py() or 0),
            "trained_tokens": int((labels != IGNORE_INDEX).sum()),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
