"""Exact and near-duplicate detection over a Ray Dataset, across all sources and workers.

1. Workers compute, per document, an exact-text bucket and one MinHash-LSH bucket per band.
2. Bucket rows are hash-partitioned; each partition finds its colliding keys (edges).
3. Edges are partitioned by their duplicate key and made unique: a pair colliding in several bands
   was found in several partitions, and the driver should receive it once, not once per band.
4. One task (not the driver: the edges grow with the corpus) joins the edges into connected
   components and keeps each component's smallest key; the driver gets the keys to remove.
Only (bucket, key) integers move between steps, never the texts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import ray
import ray.data

from lmforge.config import DedupConfig
from lmforge.data.steps.minhash import (
    DuplicateClusters,
    MinHasher,
    band_buckets,
    collision_edges,
    exact_hashes,
    find_duplicate_clusters,
    lsh_params,
)

# Keeps exact-text buckets apart from band buckets (which mix in their band index).
_EXACT_DOMAIN = np.int64(0x5EED_0F_E8AC7)


@dataclass
class DuplicateReport:
    clusters: DuplicateClusters  # every duplicate, exact or near
    exact_removed: np.ndarray  # sorted keys removed as exact copies (a subset of clusters.removed)
    # sorted keys of SFT conversations removed because a longer one continues them
    prefix_removed: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def removed(self) -> np.ndarray:
        """Sorted keys of every removed record."""
        return np.union1d(self.clusters.removed, self.prefix_removed)


def find_duplicates(docs: ray.data.Dataset, cfg: DedupConfig, seed: int, workers: int) -> DuplicateReport:
    """Duplicates among `docs` (columns `key`, `text`): the smallest key of each cluster is kept."""
    partitions = max(4 * workers, 1)
    buckets = docs.select_columns(["key", "text"]).map_batches(
        _document_buckets,
        batch_format="pyarrow",
        batch_size=1000,
        fn_kwargs={"cfg": cfg, "seed": seed, "partitions": partitions},
        concurrency=workers,
    )
    edges = buckets.groupby("partition").map_groups(
        _partition_edges, batch_format="numpy", fn_kwargs={"partitions": partitions}
    ).groupby("partition").map_groups(_unique_edges, batch_format="numpy").materialize()
    return ray.get(_join_edges.remote(edges.to_arrow_refs(), cfg.sample_clusters))


@ray.remote(num_cpus=1)
def _join_edges(blocks: list[ray.ObjectRef], sample: int) -> DuplicateReport:
    """The duplicate clusters of the edges in `blocks` (Arrow tables src, dst, exact)."""
    tables = [table for table in ray.get(blocks) if table.num_rows]
    src, dst, exact = (
        np.concatenate([t.column(name).to_numpy() for t in tables]) if tables else np.zeros(0, dtype)
        for name, dtype in (("src", np.int64), ("dst", np.int64), ("exact", bool))
    )
    return DuplicateReport(
        clusters=find_duplicate_clusters(src, dst, sample=sample),
        exact_removed=find_duplicate_clusters(src[exact], dst[exact], sample=0).removed,
    )


def _document_buckets(batch: pa.Table, cfg: DedupConfig, seed: int, partitions: int) -> pa.Table:
    keys = batch.column("key").to_numpy()
    texts = batch.column("text").to_pylist()
    parts_bucket, parts_key, parts_exact = [], [], []
    if cfg.exact:
        parts_bucket.append(exact_hashes(texts) ^ _EXACT_DOMAIN)
        parts_key.append(keys)
        parts_exact.append(np.ones(len(keys), dtype=bool))
    if cfg.near:
        bands, rows = lsh_params(cfg.threshold, cfg.num_perm)
        band_ids = band_buckets(MinHasher(cfg.num_perm, cfg.ngram, seed).signatures(texts), bands, rows)
        parts_bucket.append(band_ids.reshape(-1))
        parts_key.append(np.repeat(keys, bands))
        parts_exact.append(np.zeros(band_ids.size, dtype=bool))
    bucket = np.concatenate(parts_bucket) if parts_bucket else np.zeros(0, np.int64)
    return pa.table({
        "bucket": bucket,
        "key": np.concatenate(parts_key) if parts_key else np.zeros(0, np.int64),
        "exact": np.concatenate(parts_exact) if parts_exact else np.zeros(0, bool),
        "partition": (bucket.view(np.uint64) % np.uint64(partitions)).astype(np.int64),
    })


def _partition_edges(rows: dict[str, np.ndarray], partitions: int) -> dict[str, np.ndarray]:
    out = {"src": [], "dst": [], "exact": []}
    for is_exact in (True, False):
        mask = rows["exact"] == is_exact
        src, dst = collision_edges(rows["bucket"][mask], rows["key"][mask])
        out["src"].append(src)
        out["dst"].append(dst)
        out["exact"].append(np.full(src.size, is_exact))
    edges = {name: np.concatenate(parts) for name, parts in out.items()}
    edges["partition"] = (edges["dst"].view(np.uint64) % np.uint64(partitions)).astype(np.int64)
    return edges


def _unique_edges(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each (src, dst, exact) once."""
    order = np.lexsort((rows["exact"], rows["dst"], rows["src"]))
    src, dst, exact = rows["src"][order], rows["dst"][order], rows["exact"][order]
    first = np.r_[True, (src[1:] != src[:-1]) | (dst[1:] != dst[:-1]) | (exact[1:] != exact[:-1])]
    return {"src": src[first], "dst": dst[first], "exact": exact[first]}
