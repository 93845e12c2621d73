"""Dedup primitives on real text: fever.txt (Chinese textbook, one paragraph a line)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from datasketch import MinHashLSH

from lmforge.data.steps.minhash import (
    MinHasher,
    band_buckets,
    collision_edges,
    exact_hashes,
    find_duplicate_clusters,
    lsh_params,
    normalize_for_dedup,
)


@pytest.fixture(scope="module")
def paragraphs(shared_data) -> list[str]:
    """Distinct fever.txt lines of >= 50 characters: real paragraphs, not the repeated section headings."""
    lines = (shared_data / "pretrain" / "fever.txt").read_text(encoding="utf-8").splitlines()
    return list(dict.fromkeys(line for line in lines if len(line) >= 50))


def substitute(text: str, count: int, seed: int) -> str:
    """`text` with `count` characters at random positions replaced by a character not already there."""
    rng = random.Random(seed)
    chars = list(text)
    for pos in rng.sample(range(len(chars)), count):
        chars[pos] = "鼎" if chars[pos] != "鼎" else "爻"
    return "".join(chars)


def shingle_jaccard(a: str, b: str, n: int = 5) -> float:
    sa, sb = ({t[i : i + n] for i in range(len(t) - n + 1)} for t in (a, b))
    return len(sa & sb) / len(sa | sb)


def lsh_edges(texts: list[str], threshold: float = 0.8) -> set[tuple[int, int]]:
    """Document-index pairs whose signatures share at least one LSH bucket."""
    buckets = band_buckets(MinHasher().signatures(texts), *lsh_params(threshold, 128))
    keys = np.repeat(np.arange(len(texts)), buckets.shape[1])
    src, dst = collision_edges(buckets.ravel(), keys)
    return set(zip(src.tolist(), dst.tolist(), strict=True))


def test_paragraph_with_three_substitutions_shares_a_bucket_with_its_original(paragraphs):
    original = next(p for p in paragraphs if 280 <= len(p) <= 320)
    edited = substitute(original, 3, seed=0)
    assert shingle_jaccard(original, edited) > 0.85
    assert lsh_edges([original, edited]) == {(0, 1)}


def test_recall_on_lightly_edited_paragraphs_follows_the_lsh_s_curve(paragraphs):
    # Three substitutions in 150-400 characters leave a true Jaccard of 0.81-0.95; a pair at Jaccard J
    # shares a bucket with probability 1 - (1 - J^rows)^bands, so recall is high but by design not total.
    bands, rows = lsh_params(0.8, 128)
    originals = [p for p in paragraphs if 150 <= len(p) <= 400][:100]
    edited = [substitute(p, 3, seed=i) for i, p in enumerate(originals)]
    jaccards = np.array([shingle_jaccard(a, b) for a, b in zip(originals, edited, strict=True)])
    expected = np.mean(1 - (1 - jaccards**rows) ** bands)
    pairs = {(i, i + len(originals)) for i in range(len(originals))}
    recall = len(pairs & lsh_edges(originals + edited)) / len(originals)
    assert abs(recall - expected) < 0.1


def test_two_hundred_distinct_paragraphs_produce_no_edges(paragraphs):
    # fever.txt's repeated lines are short section headings, left out by the fixture; among its
    # paragraphs the highest true character-5-gram Jaccard is 0.36, so it has no near-duplicates.
    assert lsh_edges(paragraphs[:200]) == set()


def test_estimated_jaccard_is_within_0_1_of_true_jaccard(paragraphs):
    base = next(p for p in paragraphs if len(p) >= 300)
    others = [substitute(base, k, seed=k) for k in (2, 10, 30)] + [paragraphs[1]]
    sigs = MinHasher().signatures([base, *others])
    for other, sig in zip(others, sigs[1:], strict=True):
        estimated = float(np.mean(sig == sigs[0]))
        assert abs(estimated - shingle_jaccard(base, other)) < 0.1


def test_signatures_are_identical_across_calls_and_batch_positions(paragraphs):
    hasher = MinHasher()
    first = hasher.signatures(paragraphs[:3])
    assert np.array_equal(first, MinHasher().signatures(paragraphs[:3]))
    shuffled = hasher.signatures([paragraphs[5], paragraphs[2], paragraphs[0]])
    assert np.array_equal(shuffled[1], first[2]) and np.array_equal(shuffled[2], first[0])


def test_signatures_do_not_depend_on_batch_slicing(paragraphs, monkeypatch):
    whole = MinHasher().signatures(paragraphs[:40])
    monkeypatch.setattr("lmforge.data.steps.minhash._SLICE", 97)  # documents now straddle many slices
    # and the batch is hashed in many groups
    monkeypatch.setattr("lmforge.data.steps.minhash._GROUP_CHARS", 500)
    assert np.array_equal(MinHasher().signatures(paragraphs[:40]), whole)


def test_different_seeds_give_different_signatures(paragraphs):
    a, b = (MinHasher(seed=s).signatures(paragraphs[:1]) for s in (0, 1))
    assert a.shape == b.shape == (1, 128) and a.dtype == np.uint32
    assert np.mean(a == b) < 0.1


def test_normalize_for_dedup_ignores_case_spacing_and_punctuation():
    assert normalize_for_dedup("Hello,  World!") == normalize_for_dedup("hello world") == "helloworld"
    assert normalize_for_dedup("你好，世界。") == normalize_for_dedup("你好世界") == "你好世界"


def test_normalize_for_dedup_keeps_letters_marks_and_digits_only():
    assert normalize_for_dedup("नमस्ते, ﬁle_2\u200b①") == "नमस्तेfile21"


def test_exact_hashes_merge_bracket_variants_of_a_fever_heading():
    hashes = exact_hashes(["【病原学】", "［病原学］", "病原学", "【流行病学】"])
    assert hashes.dtype == np.int64
    assert hashes[0] == hashes[1] == hashes[2] != hashes[3]


@pytest.mark.parametrize(("threshold", "num_perm"), [(0.8, 128), (0.5, 64), (0.9, 256)])
def test_lsh_params_match_datasketch(threshold, num_perm):
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    assert lsh_params(threshold, num_perm) == (lsh.b, lsh.r)


def test_lsh_params_reject_a_threshold_outside_the_open_unit_interval():
    with pytest.raises(ValueError, match="threshold"):
        lsh_params(1.0, 128)


def test_equal_values_in_different_bands_land_in_different_buckets():
    buckets = band_buckets(np.full((2, 128), 7, dtype=np.uint32), bands=16, rows=8)
    assert buckets.shape == (2, 16) and buckets.dtype == np.int64
    assert len(set(buckets[0].tolist())) == 16 and np.array_equal(buckets[0], buckets[1])


def test_collision_edges_link_each_bucket_to_its_smallest_key_once():
    buckets = np.array([1, 1, 1, 1, 2, 2, 3, 1], dtype=np.int64)
    keys = np.array([9, 3, 5, 3, 9, 3, 4, 5], dtype=np.int64)
    src, dst = collision_edges(buckets, keys)
    assert list(zip(src.tolist(), dst.tolist(), strict=True)) == [(3, 5), (3, 9)]


def test_find_duplicate_clusters_keeps_the_smallest_key_of_a_chain_whatever_the_edge_order():
    src, dst = np.array([20, 10, 7]), np.array([30, 20, 8])  # 10-20-30 chained, and 7-8
    forward = find_duplicate_clusters(src, dst)
    backward = find_duplicate_clusters(dst[::-1], src[::-1])
    for clusters in (forward, backward):
        assert clusters.removed.tolist() == [8, 20, 30]
        assert clusters.clusters == [(7, [8]), (10, [20, 30])]
        assert clusters.num_clusters == 2


def test_empty_and_very_short_texts_do_not_crash():
    texts = ["", "a", "ab", "  ", "短", "abcd", "abcde", "", "ab"]
    sigs = MinHasher().signatures(texts)
    assert sigs.shape == (len(texts), 128)
    assert (sigs[0] == np.iinfo(np.uint32).max).all() and (sigs[3] == sigs[0]).all()
    assert np.array_equal(sigs[2], sigs[8]) and not np.array_equal(sigs[1], sigs[2])
    assert MinHasher().signatures([]).shape == (0, 128)
    assert find_duplicate_clusters(np.array([], np.int64), np.array([], np.int64)).num_clusters == 0
    assert collision_edges(np.array([], np.int64), np.array([], np.int64))[0].size == 0
