"""Exact and near-duplicate detection primitives: normalised hashes, MinHash, LSH buckets, clusters.

Pure numpy/scipy so Ray Data can call each step on its own workers: signatures in `map_batches`,
`band_buckets` + `collision_edges` per hash partition, `find_duplicate_clusters` on one node.
Every document is identified by an int64 key; the smallest key of a duplicate cluster is kept.
"""

from __future__ import annotations

import functools
import sys
import unicodedata
from dataclasses import dataclass

import numpy as np
import xxhash
from scipy import integrate
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from lmforge.data.steps.hashing import mix64

_U64 = np.uint64
_POLY = _U64(0x100000001B3)  # FNV-64 prime; odd, so multiplying by it mod 2^64 loses no bits
_SLICE = 16384  # shingles per slice: the (num_perm, slice) uint32 block (8 MB) stays in L3; measured best
_GROUP_CHARS = 1 << 20  # texts hashed together: bounds the per-character uint64 arrays to ~8 MB each
_EMPTY = np.iinfo(np.uint32).max


@functools.cache
def _kept_code_points() -> np.ndarray:
    """Boolean table over every code point: True for letters, marks and digits (Unicode L*, M*, N*)."""
    return np.array([unicodedata.category(chr(c))[0] in "LMN" for c in range(sys.maxunicode + 1)])


def _dedup_code_points(text: str) -> np.ndarray:
    # A table lookup in numpy: 8x faster than a regex class listing the dropped ranges (measured).
    codes = np.frombuffer(unicodedata.normalize("NFKC", text).lower().encode("utf-32-le"), np.uint32)
    return codes[_kept_code_points()[codes]]


def normalize_for_dedup(text: str) -> str:
    """What "the same text" means for exact dedup: NFKC, lowercase, then only letters, marks and digits.

    Whitespace, punctuation and symbols go (full-width Chinese punctuation too), so do controls.
    """
    return _dedup_code_points(text).tobytes().decode("utf-32-le")


def exact_hashes(texts: list[str]) -> np.ndarray:
    """(n,) int64: xxhash64 of each text's `normalize_for_dedup` form (its UTF-32-LE bytes)."""
    digests = [xxhash.xxh64_intdigest(_dedup_code_points(t)) for t in texts]
    return np.array(digests, dtype=np.uint64).view(np.int64)


def _light_normalize(text: str) -> str:
    # Shingles keep punctuation (it carries shape), but case, width and spacing differences should not count.
    if not text.isascii():  # isascii is O(1); ASCII is already NFKC
        text = unicodedata.normalize("NFKC", text)
    return " ".join(text.lower().split())


class MinHasher:
    """MinHash signatures over character n-grams (no word splitting, so Chinese works).

    Each shingle is hashed once (vectorised polynomial hash + splitmix64, keep 32 bits); permutation k
    is then x -> a_k * x + b_k (mod 2^32). That is datasketch's family ((a*x + b) mod prime) with the
    prime swapped for 2^32 so numpy stays in 32-bit SIMD lanes (2x faster than 64-bit multiply-shift); it is
    unbiased here because its inputs are already well-mixed hashes, not structured integers.
    """

    def __init__(self, num_perm: int = 128, ngram: int = 5, seed: int = 0):
        if num_perm < 1 or ngram < 1:
            raise ValueError(f"MinHasher: num_perm ({num_perm}) and ngram ({ngram}) must be >= 1")
        self.num_perm, self.ngram = num_perm, ngram
        rng = np.random.default_rng(seed)
        self._a = (rng.integers(0, 2**32, num_perm, dtype=np.uint32) | np.uint32(1))[:, None]
        self._b = rng.integers(0, 2**32, num_perm, dtype=np.uint32)[:, None]

    def signatures(self, texts: list[str]) -> np.ndarray:
        """(n, num_perm) uint32; an empty text gets the all-max signature."""
        sig = np.full((self.num_perm, len(texts)), _EMPTY, dtype=np.uint32)
        for lo, hi in _char_groups(texts, _GROUP_CHARS):
            self._fold_texts(sig[:, lo:hi], texts[lo:hi])
        return np.ascontiguousarray(sig.T)

    def _fold_texts(self, sig: np.ndarray, texts: list[str]) -> None:
        """Lower `sig` (num_perm, len(texts)), a view into the batch's signatures,
        by these texts' shingles."""
        hashes, counts = self._shingle_hashes(texts)
        docs = np.flatnonzero(counts)
        ends = np.cumsum(counts[docs])
        starts = ends - counts[docs]
        # One scratch block per group: a fresh 8 MB array per slice costs page faults (measured 1.3x slower).
        scratch = np.empty((self.num_perm, min(_SLICE, len(hashes))), dtype=np.uint32)
        for s in range(0, len(hashes), _SLICE):  # documents may straddle slices: minima fold across them
            lo, hi = np.searchsorted(ends, s, "right"), np.searchsorted(starts, s + _SLICE, "left")
            seg = np.maximum(starts[lo:hi], s) - s
            self._fold_minima(sig, docs[lo:hi], hashes[s : s + _SLICE], seg, scratch)

    def _shingle_hashes(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """32-bit hashes of every shingle of the batch, concatenated, and each text's shingle count."""
        n = self.ngram
        # A short text is one shingle: pad it to n with NUL, which real n-grams never contain.
        docs = [t if len(t) >= n or not t else t.ljust(n, "\0") for t in map(_light_normalize, texts)]
        lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
        codes = np.frombuffer("".join(docs).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        h = codes.copy()  # h[i]: polynomial hash of the window starting at code i, by Horner's rule
        with np.errstate(over="ignore"):
            for j in range(1, n):
                h *= _POLY
                h[: len(h) - j] += codes[j:]
        # The last n-1 windows of each text run into the next one (or off the end): drop them.
        valid = np.ones(len(h), dtype=bool)
        tails = (np.cumsum(lengths)[:, None] - np.arange(1, n)).ravel()
        valid[tails[tails >= 0]] = False
        hashes = (mix64(h[valid]) >> _U64(32)).astype(np.uint32)
        return hashes, np.maximum(lengths - n + 1, 0)

    def _fold_minima(self, sig, docs, hashes, seg, scratch) -> None:
        """Lower `sig` (num_perm, n) by one slice of hashes whose documents `docs` start at offsets `seg`."""
        perm = scratch[:, : len(hashes)]  # every permutation of every shingle, wrapping mod 2^32 by design
        np.multiply(self._a, hashes, out=perm)
        perm += self._b
        sig[:, docs] = np.minimum(sig[:, docs], np.minimum.reduceat(perm, seg, axis=1))


def _char_groups(texts: list[str], limit: int):
    """(start, end) runs of consecutive texts holding about `limit` characters each (a longer text: alone)."""
    start, size = 0, 0
    for i, text in enumerate(texts):
        if size and size + len(text) > limit:
            yield start, i
            start, size = i, 0
        size += len(text)
    if start < len(texts):
        yield start, len(texts)


def _false_positive(threshold: float, b: int, r: int) -> float:
    return integrate.quad(lambda s: 1 - (1 - s**r) ** b, 0.0, threshold)[0]


def _false_negative(threshold: float, b: int, r: int) -> float:
    return integrate.quad(lambda s: (1 - s**r) ** b, threshold, 1.0)[0]


@functools.cache
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows), bands * rows <= num_perm, minimising 0.5 * P(false positive) + 0.5 * P(false negative).

    Same search as datasketch's `MinHashLSH`, so thresholds mean the same thing here as there.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"lsh_params: threshold must be in (0, 1), got {threshold}")
    candidates = [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]
    errors = [
        0.5 * _false_positive(threshold, b, r) + 0.5 * _false_negative(threshold, b, r) for b, r in candidates
    ]
    return candidates[int(np.argmin(errors))]  # argmin takes the first minimum, as datasketch does


def band_buckets(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) int64 bucket ids: a hash of each band's `rows` values and of the band index itself."""
    if bands * rows > signatures.shape[1]:
        raise ValueError(f"band_buckets: {bands} bands x {rows} rows > {signatures.shape[1]} signature slots")
    values = signatures[:, : bands * rows].reshape(len(signatures), bands, rows).astype(np.uint64)
    # Seeding with the band index keeps equal values in different bands in different buckets.
    h = np.broadcast_to(np.arange(bands, dtype=np.uint64), values.shape[:2]).copy()
    with np.errstate(over="ignore"):
        for j in range(rows):
            h = mix64(h * _POLY + values[:, :, j])
    return h.view(np.int64)


def collision_edges(buckets: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(src, dst) int64 edges, unique: in every bucket with >1 distinct key,
    its smallest key -> each other key."""
    buckets, keys = np.asarray(buckets, np.int64).ravel(), np.asarray(keys, np.int64).ravel()
    if not len(buckets):
        return buckets.copy(), keys.copy()
    order = np.lexsort((keys, buckets))
    b, k = buckets[order], keys[order]
    distinct = np.r_[True, (b[1:] != b[:-1]) | (k[1:] != k[:-1])]
    b, k = b[distinct], k[distinct]
    new_bucket = np.r_[True, b[1:] != b[:-1]]
    # Every row points at the first row of its bucket, which holds the bucket's smallest key.
    smallest = k[np.maximum.accumulate(np.where(new_bucket, np.arange(len(b)), 0))]
    src, dst = smallest[~new_bucket], k[~new_bucket]
    if not len(src):
        return src, dst
    edges = np.unique(np.stack([src, dst], axis=1), axis=0)
    return edges[:, 0].copy(), edges[:, 1].copy()


@dataclass
class DuplicateClusters:
    removed: np.ndarray  # sorted unique int64 keys to drop: each component but its smallest key
    clusters: list[tuple[int, list[int]]]  # (kept key, removed keys) of the first components by kept key
    num_clusters: int  # components with two or more keys


def find_duplicate_clusters(src: np.ndarray, dst: np.ndarray, sample: int = 20) -> DuplicateClusters:
    """Connected components of the duplicate graph; each keeps its smallest key.
    Edge order does not matter."""
    src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
    src, dst = src[src != dst], dst[src != dst]  # a self-loop is no duplicate
    nodes, inverse = np.unique(np.concatenate([src, dst]), return_inverse=True)
    if not len(nodes):
        return DuplicateClusters(np.empty(0, np.int64), [], 0)
    graph = coo_matrix(
        (np.ones(len(src), np.int8), (inverse[: len(src)], inverse[len(src) :])),
        shape=(len(nodes), len(nodes)),
    )
    num, labels = connected_components(graph, directed=False)
    # nodes are sorted, so a component's first node is its smallest key: the one to keep.
    _, first = np.unique(labels, return_index=True)
    kept = np.zeros(len(nodes), bool)
    kept[first] = True
    return DuplicateClusters(nodes[~kept], _sample_clusters(nodes, labels, np.sort(first), sample), int(num))


def _sample_clusters(nodes, labels, firsts, sample: int) -> list[tuple[int, list[int]]]:
    """(kept key, removed keys) for the `sample` components with the smallest kept keys, for reports."""
    order = np.argsort(labels, kind="stable")  # per component, keys stay ascending
    bounds = np.searchsorted(labels[order], np.arange(labels.max() + 2))
    out = []
    for first in firsts[:sample]:
        members = nodes[order[bounds[labels[first]] : bounds[labels[first] + 1]]]
        out.append((int(members[0]), members[1:].tolist()))
    return out
