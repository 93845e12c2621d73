"""Pictures of prepared data a person would rather look at than read: how long the samples are, and
whether the mixture came out as asked. Both data stages write them next to their manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import ray.data

# Power-of-two bins: 1, 2, 4, ... 2^20 tokens; the last bin also holds anything longer.
LENGTH_BIN_EDGES = 2 ** np.arange(0, 22)
LENGTHS_PNG, MIXTURE_PNG = "token_lengths.png", "mixture.png"


def length_histogram(dataset: ray.data.Dataset, column: str = "n_tokens") -> np.ndarray:
    """Counts of `column` values per LENGTH_BIN_EDGES bin, binned where the rows are (only counts move)."""
    per_batch = dataset.select_columns([column]).map_batches(
        _bin_lengths, batch_format="numpy", fn_kwargs={"column": column}
    )
    counts = [row["counts"] for row in per_batch.take_all()]
    return np.sum(counts, axis=0) if counts else np.zeros(len(LENGTH_BIN_EDGES) - 1, np.int64)


def _bin_lengths(batch: dict[str, np.ndarray], column: str) -> dict[str, np.ndarray]:
    lengths = np.minimum(batch[column], LENGTH_BIN_EDGES[-1] - 1)
    return {"counts": np.histogram(lengths, bins=LENGTH_BIN_EDGES)[0][None, :]}


def write_data_plots(out: Path, histogram: np.ndarray, sources: dict[str, dict], what: str) -> list[str]:
    """token_lengths.png (the histogram of `what`) and mixture.png (requested vs achieved token share per
    source, from the manifest's counts); returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    used = np.nonzero(histogram)[0]
    bins = range(used.min(), used.max() + 1) if used.size else range(0)
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.bar([f"<{LENGTH_BIN_EDGES[i + 1]}" for i in bins], [histogram[i] for i in bins])
    axis.set_xlabel(f"{what} (tokens)")
    axis.set_ylabel("count")
    axis.tick_params(axis="x", labelrotation=45)
    figure.tight_layout()
    figure.savefig(out / LENGTHS_PNG, dpi=100)
    plt.close(figure)

    names = list(sources)
    positions = np.arange(len(names))
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.bar(positions - 0.2, [sources[n].get("requested_share", 0) for n in names], 0.4, label="requested")
    axis.bar(positions + 0.2, [sources[n].get("achieved_share", 0) for n in names], 0.4, label="achieved")
    axis.set_xticks(positions, names, rotation=30)
    axis.set_ylabel("share of output tokens")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / MIXTURE_PNG, dpi=100)
    plt.close(figure)
    return [LENGTHS_PNG, MIXTURE_PNG]
