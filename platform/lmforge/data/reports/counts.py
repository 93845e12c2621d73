"""What every data stage reports: per-source counts that reconcile, quarantine, duplicate samples.

Per source: read = kept + filtered + exact duplicates + near duplicates + prefix duplicates + quarantined
(prefix duplicates: SFT conversations that a longer one continues).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray.data
from ray.data.aggregate import Count, Sum
from ray.data.expressions import col

from lmforge.config import BaseSourceConfig
from lmforge.data.files.sources import SourceFile, key_file_index
from lmforge.data.steps.dedup import DuplicateReport
from lmforge.data.steps.minhash import DuplicateClusters

EXCERPT = 300


def write_quarantine(docs: ray.data.Dataset, files: list[SourceFile], surveys: list, path: Path) -> int:
    """Every record that could not be read, with source, file, line and reason, in corpus order."""
    written = 0
    with path.open("w", encoding="utf-8") as sink:
        for file, survey in zip(files, surveys, strict=True):
            if isinstance(survey, str):
                sink.write(
                    _json({"source": file.source.name, "file": file.path, "line": 0, "reason": survey})
                )
                written += 1
        bad = docs.filter(expr=col("status") == "quarantined").select_columns(
            ["key", "source", "line", "reason", "raw"]
        )
        if bad.count():
            for row in bad.sort("key").iter_rows():
                sink.write(_json({"source": row["source"], "file": files[key_file_index(row["key"])].path,
                                  "line": row["line"], "reason": row["reason"], "raw": row["raw"]}))
                written += 1
    return written


def write_duplicate_sample(docs: ray.data.Dataset, clusters: DuplicateClusters, files: list[SourceFile],
                           path: Path) -> None:
    """A few duplicate clusters, kept document first, for a human to check the dedup threshold."""
    wanted = np.asarray(
        sorted({k for kept, removed in clusters.clusters for k in (kept, *removed)}), np.int64
    )
    rows = {}
    if wanted.size:
        sample = docs.map_batches(
            lambda t: t.filter(pa.array(np.isin(t.column("key").to_numpy(), wanted))), batch_format="pyarrow"
        )
        rows = {r["key"]: r for r in sample.select_columns(["key", "source", "line", "text"]).take_all()}

    def describe(key: int) -> dict:
        row = rows.get(key, {})
        return {
            "source": row.get("source"),
            "file": files[key_file_index(key)].path,
            "line": row.get("line"),
            "text": (row.get("text") or "")[:EXCERPT],
        }

    with path.open("w", encoding="utf-8") as sink:
        for kept, removed in clusters.clusters:
            sink.write(_json({"kept": describe(kept), "duplicates": [describe(k) for k in removed]}))


def reconcile_counts(
    sources: list[BaseSourceConfig],
    statuses_by_source: dict[str, dict[str, int]],
    removed_counts: dict[str, dict[str, int]],
    kept: dict[str, dict[str, int]],
    factors: dict[str, float],
    output: dict[str, dict[str, int]],
) -> dict:
    """Per-source counts after every step; raises if read != kept + filtered + duplicates + quarantined."""
    requested = {s.name: kept.get(s.name, {}).get("tokens", 0) * factors.get(s.name, 0.0) for s in sources}
    requested_total = sum(requested.values()) or 1
    output_tokens = sum(v["tokens"] for v in output.values()) or 1
    per_source = {}
    for source in sources:
        name = source.name
        statuses = statuses_by_source.get(name, {})
        filtered = {k.split(":", 1)[1]: v for k, v in sorted(statuses.items()) if k.startswith("filtered:")}
        row = {
            "read": sum(statuses.values()),
            "quarantined": statuses.get("quarantined", 0),
            "filtered": filtered,
            "exact_duplicates": removed_counts.get(name, {}).get("exact_duplicates", 0),
            "near_duplicates": removed_counts.get(name, {}).get("near_duplicates", 0),
            "prefix_duplicates": removed_counts.get(name, {}).get("prefix_duplicates", 0),
            "kept_documents": kept.get(name, {}).get("documents", 0),
            "kept_tokens": kept.get(name, {}).get("tokens", 0),
            "mix_factor": round(factors.get(name, 0.0), 6),
            "output_documents": output.get(name, {}).get("documents", 0),
            "output_tokens": output.get(name, {}).get("tokens", 0),
            "requested_share": round(requested[name] / requested_total, 6),
            "achieved_share": round(output.get(name, {}).get("tokens", 0) / output_tokens, 6),
        }
        accounted = (row["kept_documents"] + sum(filtered.values()) + row["exact_duplicates"]
                     + row["near_duplicates"] + row["prefix_duplicates"] + row["quarantined"])
        if accounted != row["read"]:
            raise RuntimeError(
                f"source {name}: counts do not reconcile: read {row['read']} != {accounted} ({row})"
            )
        per_source[name] = row
    total = {key: sum(r[key] for r in per_source.values())
             for key in ("read", "quarantined", "exact_duplicates", "near_duplicates", "prefix_duplicates",
                         "kept_documents",
                         "kept_tokens", "output_documents", "output_tokens")}
    total["filtered"] = sum(sum(r["filtered"].values()) for r in per_source.values())
    return {"sources": per_source, "total": total}


def _json(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def drop_keys(batch: pa.Table, removed: np.ndarray) -> pa.Table:
    """Rows whose key is not in the sorted array `removed` (Ray Data map_batches body)."""
    return batch.filter(pa.array(~np.isin(batch.column("key").to_numpy(), removed)))


def per_source_totals(ds: ray.data.Dataset) -> dict[str, dict[str, int]]:
    """Documents (rows) and tokens (sum of n_tokens) per source."""
    frame = ds.groupby("source").aggregate(Count(), Sum("n_tokens")).to_pandas()
    return {row["source"]: {"documents": int(row["count()"]), "tokens": int(row["sum(n_tokens)"])}
            for _, row in frame.iterrows()}


def render_stats(rendered: ray.data.Dataset) -> dict[str, dict]:
    """Per source, of rendered rows (source, status, n_tokens, n_trained, truncated): documents, tokens,
    trained_tokens and truncated of those with status ok, and {"filtered:<why>": n} of the others."""
    frame = rendered.groupby(["source", "status"]).aggregate(
        Count(), Sum("n_tokens"), Sum("n_trained"), Sum("truncated")
    ).to_pandas()
    stats: dict[str, dict] = {}
    for _, row in frame.iterrows():
        entry = stats.setdefault(row["source"], {"documents": 0, "tokens": 0, "trained_tokens": 0,
                                                 "truncated": 0, "filtered": {}})
        if row["status"] == "ok":
            entry.update(documents=int(row["count()"]), tokens=int(row["sum(n_tokens)"]),
                         trained_tokens=int(row["sum(n_trained)"]), truncated=int(row["sum(truncated)"]))
        else:
            entry["filtered"][row["status"]] = int(row["count()"])
    return stats


def status_counts(
    docs: ray.data.Dataset, surveys: list, source_of_file: list[str]
) -> dict[str, dict[str, int]]:
    frame = docs.groupby(["source", "status"]).count().to_pandas()
    counts: dict[str, dict[str, int]] = {}
    for _, row in frame.iterrows():
        counts.setdefault(row["source"], {})[row["status"]] = int(row["count()"])
    for name, survey in zip(source_of_file, surveys, strict=True):
        if isinstance(survey, str):  # an unreadable file is one quarantined record
            per_source = counts.setdefault(name, {})
            per_source["quarantined"] = per_source.get("quarantined", 0) + 1
    return counts


def removed_by_source(duplicates: DuplicateReport, source_of_file: list[str]) -> dict[str, dict[str, int]]:
    names = np.asarray(source_of_file, dtype=object)
    removed = duplicates.removed
    prefix = np.isin(removed, duplicates.prefix_removed)
    exact = ~prefix & np.isin(removed, duplicates.exact_removed)
    near = ~prefix & ~exact
    counts: dict[str, dict[str, int]] = {}
    for kind, keys in (("exact_duplicates", removed[exact]), ("near_duplicates", removed[near]),
                       ("prefix_duplicates", removed[prefix])):
        sources, n = np.unique(names[key_file_index(keys)], return_counts=True) if keys.size else ([], [])
        for name, count in zip(sources, n, strict=True):
            counts.setdefault(name, {})[kind] = int(count)
    return counts
