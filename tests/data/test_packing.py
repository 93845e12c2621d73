"""Group-wise packing cuts the same blocks as packing the whole corpus in one piece."""

import numpy as np
import pytest

from lmforge.data.steps.block_packing import Piece, cut_group, stitch_fragments


def _random_groups(seed: int, groups: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    token = iter(range(10**9))
    return [[np.array([next(token) for _ in range(rng.integers(1, 40))]) for _ in range(rng.integers(1, 6))]
            for _ in range(groups)]


def _pack_in_groups(groups: list[list[np.ndarray]], block_size: int) -> tuple[list[Piece], int]:
    whole, fragments, start = [], [], 0
    for docs in groups:
        lengths = np.array([d.size for d in docs])
        for piece in cut_group(lengths, np.concatenate(docs), start, block_size):
            (whole if piece.whole else fragments).append(piece)
        start += lengths.sum()
    stitched, remainder = stitch_fragments(fragments, block_size)
    return sorted(whole + stitched, key=lambda p: p.block), remainder


@pytest.mark.parametrize("seed", range(5))
def test_group_packing_equals_one_long_concatenation(seed):
    groups = _random_groups(seed, groups=12)
    blocks, remainder = _pack_in_groups(groups, block_size=16)
    stream = np.concatenate([d for docs in groups for d in docs])
    assert [b.block for b in blocks] == list(range(len(blocks)))
    assert np.array_equal(np.concatenate([b.input_ids for b in blocks]), stream[: len(blocks) * 16])
    assert remainder == stream.size - len(blocks) * 16 < 16


def test_doc_lens_mark_every_document_boundary():
    groups = _random_groups(7, groups=6)
    blocks, _ = _pack_in_groups(groups, block_size=16)
    doc_ends = np.cumsum([d.size for docs in groups for d in docs])
    for block in blocks:
        assert block.doc_lens.sum() == 16 and (block.doc_lens > 0).all()
        cuts = block.block * 16 + np.cumsum(block.doc_lens)[:-1]
        assert set(cuts) <= set(doc_ends)  # pieces end only where documents end
        inside = doc_ends[(doc_ends > block.block * 16) & (doc_ends < (block.block + 1) * 16)]
        assert set(inside) <= set(cuts)  # and every document end inside the block is a cut


def test_a_document_longer_than_several_blocks_spans_them():
    pieces = cut_group(np.array([50]), np.arange(50), start=0, block_size=16)
    assert [p.whole for p in pieces] == [True, True, True, False]
    assert [list(p.doc_lens) for p in pieces] == [[16], [16], [16], [2]]


def test_a_gap_between_fragments_is_an_error():
    fragments = [Piece(0, 0, np.arange(4), np.array([4])), Piece(0, 6, np.arange(10), np.array([10])),
                 Piece(1, 0, np.arange(3), np.array([3]))]
    with pytest.raises(RuntimeError, match="block 0 has a gap"):
        stitch_fragments(fragments, 16)
