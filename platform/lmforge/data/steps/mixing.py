"""Source mixture: how many times each source's documents appear in the output.

Without weights every kept document appears once (natural proportions); `mix.total_tokens` then
scales all sources alike. Weights set a source's share of the output tokens: weighted sources share
what the unweighted ones (each document once) leave of the total, in proportion to their weights.

A source's factor is target tokens / kept tokens. Each document then appears floor(factor)
times, plus once more with probability frac(factor), decided by a hash of its key and the seed,
so the same seed always selects the same documents (up- and down-sampling alike).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray.data

from lmforge.config import ConfigError
from lmforge.data.steps.hashing import uniform

# A source repeated more often than this, or cut below this, is worth a second look.
REPEAT_WARNING, CUT_WARNING = 10.0, 0.5


def mixture_factors(
    tokens_by_source: dict[str, int], weights: dict[str, float | None], total_tokens: int | None = None
) -> dict[str, float]:
    """How many times (on average) each source's documents appear; a weight of None: natural share."""
    kept = {name: tokens_by_source.get(name, 0) for name in weights}
    total = total_tokens or sum(kept.values())
    weighted = {name: w for name, w in weights.items() if w is not None and kept[name]}
    natural_tokens = sum(tokens for name, tokens in kept.items() if weights[name] is None)
    if not weighted:
        scale = total / natural_tokens if natural_tokens else 0.0
        return {name: scale if tokens else 0.0 for name, tokens in kept.items()}
    budget = total - natural_tokens
    if budget <= 0:
        raise ConfigError(
            f"mix.total_tokens {total} leaves no tokens for the weighted sources {sorted(weighted)}: the "
            f"sources without a weight keep all {natural_tokens} of theirs; set weight: on every source or "
            "raise total_tokens"
        )
    weight_sum = sum(weighted.values())
    return {name: (weighted[name] / weight_sum * budget / kept[name]) if name in weighted
            else (1.0 if kept[name] else 0.0) for name in weights}


def mixture_warnings(factors: dict[str, float]) -> list[str]:
    """A line for each source repeated more than REPEAT_WARNING times or cut below CUT_WARNING."""
    warnings = []
    for name, factor in factors.items():
        if factor > REPEAT_WARNING:
            warnings.append(
                f"source {name}: each document repeated {factor:.1f}x on average (weight too high "
                f"for its size?)"
            )
        elif 0 < factor < CUT_WARNING:
            warnings.append(f"source {name}: only {factor:.0%} of its documents kept by the mixture")
    return warnings


def copies_per_document(keys: np.ndarray, factor: float, seed: int) -> np.ndarray:
    """Number of copies of each document (int64), deterministic in (key, seed)."""
    whole = np.floor(factor)
    return (whole + (uniform(keys, seed) < factor - whole)).astype(np.int64)


def repeat_by_mixture(ds: ray.data.Dataset, factors: dict[str, float], seed: int) -> ray.data.Dataset:
    """Each row repeated per its `source`'s factor (rows need `key`);
    column `copy` numbers the copies from 0."""
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

