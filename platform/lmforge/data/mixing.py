"""Source mixture: per-source weights set each source's share of the output tokens.

A source's factor is target tokens / kept tokens. Each document then appears floor(factor)
times, plus once more with probability frac(factor), decided by a hash of its key and the seed,
so the same seed always selects the same documents (up- and down-sampling alike).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray.data

from lmforge.data.hashing import uniform


def mixture_factors(
    tokens_by_source: dict[str, int], weights: dict[str, float], total_tokens: int | None = None
) -> dict[str, float]:
    """How many times (on average) each source's documents are repeated to meet its share."""
    total = total_tokens or sum(tokens_by_source.values())
    weight_sum = sum(weights.values())
    return {
        name: (weights[name] / weight_sum * total / tokens) if (tokens := tokens_by_source.get(name, 0)) else 0.0
        for name in weights
    }


def copies_per_document(keys: np.ndarray, factor: float, seed: int) -> np.ndarray:
    """Number of copies of each document (int64), deterministic in (key, seed)."""
    whole = np.floor(factor)
    return (whole + (uniform(keys, seed) < factor - whole)).astype(np.int64)


def repeat_by_mixture(ds: ray.data.Dataset, factors: dict[str, float], seed: int) -> ray.data.Dataset:
    """Each row repeated per its `source`'s factor (rows need `key`); column `copy` numbers the copies from 0."""
    return ds.map_batches(_repeat_rows, batch_format="pyarrow", fn_kwargs={"factors": factors, "seed": seed})


def _repeat_rows(batch: pa.Table, factors: dict[str, float], seed: int) -> pa.Table:
    keys = batch.column("key").to_numpy()
    sources = np.asarray(batch.column("source").to_pylist(), dtype=object)
    copies = np.zeros(len(keys), dtype=np.int64)
    for name in set(sources):
        mask = sources == name
        copies[mask] = copies_per_document(keys[mask], factors[name], seed)
    rows = np.repeat(np.arange(len(keys)), copies)
    copy_index = np.arange(rows.size) - np.repeat(np.cumsum(copies) - copies, copies)
    return batch.take(pa.array(rows, pa.int64())).append_column("copy", pa.array(copy_index, pa.int64()))

