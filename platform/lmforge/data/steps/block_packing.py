"""Concatenate documents (each ending in EOS) and cut fixed blocks that keep document boundaries.

    documents:  [a a a E] [b b E] [c c c c c c E] [d E] ...          E = EOS, block_size = 6
    blocks:     | a a a E b b | E c c c c c | c E d E ...
    doc_lens:     [4, 2]        [1, 5]        [2, 2, ...]
    position_ids: 0 1 2 3 0 1 | 0 0 1 2 3 4 | 0 1 0 1 ...

`doc_lens` lists the lengths of the document pieces in a block, so training restarts position
ids at each piece and keeps pieces from attending to each other; a document cut by a block
boundary continues at the start of the next block.

The corpus is packed in *groups*, contiguous runs of whole documents in corpus order, on many
workers at once. Each group knows the global offset of its first token, so it emits the blocks
that lie wholly inside it and hands the pieces at its two edges (fragments) to
`stitch_fragments`, which joins them on one node. Only the corpus's final partial block is lost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass
class Piece:
    """Part of block `block` starting at token `offset` of it; `whole` when it is the entire block."""

    block: int
    offset: int
    input_ids: np.ndarray
    doc_lens: np.ndarray
    whole: bool = False


def cut_group(lengths: np.ndarray, tokens: np.ndarray, start: int, block_size: int) -> list[Piece]:
    """Pieces of the blocks covered by a group whose first token sits at global offset `start`."""
    end = start + tokens.size
    doc_ends = np.cumsum(lengths)
    pieces = []
    for block in range(start // block_size, (end - 1) // block_size + 1 if end > start else 0):
        lo = max(block * block_size, start) - start
        hi = min((block + 1) * block_size, end) - start
        inner = doc_ends[
            np.searchsorted(doc_ends, lo, side="right") : np.searchsorted(doc_ends, hi, side="left")
        ]
        cuts = np.concatenate([[lo], inner, [hi]])
        offset = lo + start - block * block_size
        lens = np.diff(cuts).astype(np.int32)
        pieces.append(Piece(block, offset, tokens[lo:hi], lens, whole=offset == 0 and hi - lo == block_size))
    return pieces


def stitch_fragments(fragments: list[Piece], block_size: int) -> tuple[list[Piece], int]:
    """Join fragments into whole blocks; returns the blocks and the dropped final remainder's size."""
    by_block: dict[int, list[Piece]] = {}
    for piece in fragments:
        by_block.setdefault(piece.block, []).append(piece)
    blocks, remainder = [], 0
    last_block = max(by_block, default=-1)
    for block in sorted(by_block):
        parts = sorted(by_block[block], key=lambda p: p.offset)
        expected = 0
        for part in parts:
            if part.offset != expected:
                raise RuntimeError(f"packing: block {block} has a gap at token {expected}")
            expected += part.input_ids.size
        if expected == block_size:
            ids = np.concatenate([p.input_ids for p in parts])
            blocks.append(Piece(block, 0, ids, np.concatenate([p.doc_lens for p in parts]), whole=True))
        elif block == last_block:
            remainder = expected
        else:
            raise RuntimeError(f"packing: block {block} holds {expected} of {block_size} tokens")
    return blocks, remainder


def pieces_to_table(pieces: list[Piece]) -> pa.Table:
    return pa.table({
        "block": pa.array([p.block for p in pieces], pa.int64()),
        "offset": pa.array([p.offset for p in pieces], pa.int32()),
        "input_ids": pa.array([p.input_ids for p in pieces], pa.list_(pa.int32())),
        "doc_lens": pa.array([p.doc_lens for p in pieces], pa.list_(pa.int32())),
        "whole": pa.array([p.whole for p in pieces], pa.bool_()),
    })


def pack_group(group: pa.Table, group_offsets: dict[int, int], block_size: int) -> pa.Table:
    """Ray Data `map_groups` body: one group's documents (sorted by key) -> its pieces."""
    group = group.sort_by("key")
    group_id = group.column("group")[0].as_py()
    lengths = group.column("n_tokens").to_numpy()
    tokens = pc.list_flatten(group.column("input_ids")).to_numpy(zero_copy_only=False).astype(np.int32)
    return pieces_to_table(cut_group(lengths, tokens, group_offsets[group_id], block_size))
