"""The steps every data stage starts and ends with: read and deduplicate all sources, then report.

    survey files (a Ray task per file) -> plan chunks -> read (a task per chunk) -> exact + near dedup
    ... the stage's own steps ...
    counts per source -> quarantine.jsonl + dedup_clusters.jsonl -> manifest.json

A stage says how a chunk becomes rows (pretraining renders and cleans text; SFT builds a
conversation per record); `SourceRecords` keeps the files, surveys and records, so it writes the
stage's reports and the manifest's inputs too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import ray
import ray.data
from ray.data.expressions import col

from lmforge.config import DataStageConfig
from lmforge.data.files.sources import (
    PlannedChunk,
    SourceFile,
    input_record,
    key_file_index,
    plan_chunks,
    survey_source_file,
)
from lmforge.data.files.survey import FileSurvey
from lmforge.data.reports.counts import (
    per_source_totals,
    reconcile_counts,
    removed_by_source,
    render_stats,
    status_counts,
    write_duplicate_sample,
    write_quarantine,
)
from lmforge.data.stages.train_tokenizer import tokenizer_identity
from lmforge.data.steps.dedup import DuplicateReport, find_duplicates
from lmforge.data.steps.mixing import mixture_factors, mixture_warnings, repeat_by_mixture
from lmforge.manifest import Manifest
from lmforge.stage_outputs import PreparedData

log = logging.getLogger(__name__)

RECORD_SCHEMA = pa.schema([
    ("key", pa.int64()), ("chunk", pa.int64()), ("source", pa.string()), ("line", pa.int64()),
    ("text", pa.string()), ("status", pa.string()), ("reason", pa.string()), ("raw", pa.string()),
])
QUARANTINE = "quarantine.jsonl"
DEDUP_CLUSTERS = "dedup_clusters.jsonl"

RowsOfChunk = Callable[[PlannedChunk], Iterable[dict]]


class EmptyOutput(ValueError):
    """Nothing is left to write; the message gives each source's counts, which say why."""


@dataclass
class SourceRecords:
    """Every record of every source (status ok / filtered:<why> / quarantined)
    and the duplicates among them."""

    cfg: DataStageConfig
    files: list[SourceFile]
    surveys: list[FileSurvey | str]  # a string: why the file could not be read at all
    chunks: list[PlannedChunk]
    docs: ray.data.Dataset  # RECORD_SCHEMA, materialized
    duplicates: DuplicateReport

    @property
    def kept(self) -> ray.data.Dataset:
        """Records read and not filtered; duplicates are still in (their keys: `duplicates.removed`)."""
        return self.docs.filter(expr=col("status") == "ok")

    def counts(self, kept: dict, factors: dict[str, float], output: dict,
               filtered_later: dict[str, dict[str, int]] | None = None) -> dict:
        """Per-source counts that reconcile (reports/counts.reconcile_counts). `filtered_later`: records the
        stage dropped after reading, {source: {"filtered:<why>": n}}; they move out of status ok."""
        source_of_file = [f.source.name for f in self.files]
        statuses = status_counts(self.docs, self.surveys, source_of_file)
        for name, filtered in (filtered_later or {}).items():
            for status, count in filtered.items():
                statuses[name]["ok"] -= count
                statuses[name][status] = count
        counts = reconcile_counts(self.cfg.sources, statuses,
                                  removed_by_source(self.duplicates, source_of_file), kept, factors, output)
        counts["warnings"] = mixture_warnings(factors)
        for warning in counts["warnings"]:
            log.warning("mixture: %s", warning)
        return counts

    def mix_rendered(self, rendered: ray.data.Dataset, stage: str) -> tuple[ray.data.Dataset, dict]:
        """The rendered rows with status "ok" repeated or sampled by the sources' mixture weights, and the
        counts (those filtered at rendering, `filtered:<why>`, move out of ok; per source also truncated and
        trained tokens). EmptyOutput when nothing is left. `rendered`: render_stats' columns."""
        stats = render_stats(rendered)
        factors = mixture_factors({name: s["tokens"] for name, s in stats.items()},
                                  {s.name: s.weight for s in self.cfg.sources}, self.cfg.mix.total_tokens)
        mixed = repeat_by_mixture(rendered.filter(expr=col("status") == "ok"), factors, self.cfg.seed)
        counts = self.counts(
            {name: {"documents": s["documents"], "tokens": s["tokens"]} for name, s in stats.items()},
            factors, per_source_totals(mixed),
            filtered_later={name: s["filtered"] for name, s in stats.items()},
        )
        for name, row in counts["sources"].items():
            row["truncated"] = stats.get(name, {}).get("truncated", 0)
            row["trained_tokens"] = stats.get(name, {}).get("trained_tokens", 0)
        self.check_output_not_empty(stage, counts)
        return mixed, counts

    def check_output_not_empty(self, stage: str, counts: dict) -> None:
        """EmptyOutput, with each source's counts and the first quarantine reasons,
        if nothing is left to write."""
        if counts["total"]["output_documents"]:
            return
        lines = [f"{stage}: the output would be empty; per source:"]
        for name, row in counts["sources"].items():
            filtered = ", ".join(f"{why} {n}" for why, n in row["filtered"].items()) or "0"
            lines.append(
                f"  {name}: read {row['read']}, quarantined {row['quarantined']}, filtered {filtered}, "
                f"duplicates {row['exact_duplicates']} exact + {row['near_duplicates']} near + "
                f"{row['prefix_duplicates']} prefix, kept {row['kept_documents']}, "
                f"mixture factor {row['mix_factor']}, output {row['output_documents']}"
            )
        bad = self.docs.filter(expr=col("status") == "quarantined").take(3)
        lines += [f"  quarantined: {self.files[key_file_index(row['key'])].path} line {row['line']}: "
                  f"{row['reason']}" for row in bad]
        raise EmptyOutput("\n".join(lines))

    def write_manifest(self, stage: str, out: Path, outputs: type[PreparedData], fields: dict,
                       counts: dict) -> Manifest:
        """quarantine.jsonl, dedup_clusters.jsonl and manifest.json (inputs, `outputs` made of the stage's
        `fields` and what every data stage has, counts).

        `out` is the stage's work directory (lmforge.output_dir); the manifest names the final output_dir."""
        write_quarantine(self.docs, self.files, self.surveys, out / QUARANTINE)
        write_duplicate_sample(self.docs, self.duplicates.clusters, self.files, out / DEDUP_CLUSTERS)
        manifest = Manifest(
            stage=stage,
            config=self.cfg.model_dump(),
            inputs=[input_record(f, s) for f, s in zip(self.files, self.surveys, strict=True)],
            outputs=outputs(dir=str(Path(self.cfg.output_dir).resolve()), **fields,
                            tokenizer=tokenizer_identity(self.cfg.tokenizer), quarantine=QUARANTINE,
                            dedup_clusters=DEDUP_CLUSTERS).model_dump(by_alias=True),
            counts=counts,
        )
        manifest.write(out)
        return manifest


def read_sources(
    files: list[SourceFile],
    cfg: DataStageConfig,
    rows_of_chunk: RowsOfChunk,
    *,
    resolve_files: Callable[[list[SourceFile], list], list[SourceFile]] | None = None,
    dedup_text: Callable[[pa.Table], pa.Table] | None = None,
) -> SourceRecords:
    """Survey, read and deduplicate `files` on Ray (init it first).

    rows_of_chunk: a chunk's rows (RECORD_SCHEMA), e.g. sources.read_records with a converter.
    resolve_files: settles per-file settings from the surveys before reading (SFT's record format).
    dedup_text: kept records -> the (key, text) that dedup compares; default: the record's text.
    """
    survey = ray.remote(num_cpus=1)(survey_source_file)
    chunk_bytes = read_chunk_bytes(files, cfg.read.chunk_mb, cfg.workers)
    surveys = ray.get([survey.remote(f, chunk_bytes) for f in files])
    if resolve_files is not None:
        files = resolve_files(files, surveys)
    chunks = plan_chunks(files, surveys)
    docs = _read_chunks(chunks, cfg.workers, rows_of_chunk).materialize()
    kept = docs.filter(expr=col("status") == "ok")
    compared = kept.map_batches(dedup_text, batch_format="pyarrow") if dedup_text is not None else kept
    duplicates = find_duplicates(compared, cfg.dedup, cfg.seed, cfg.workers)
    return SourceRecords(cfg, files, surveys, chunks, docs, duplicates)


def read_chunk_bytes(files: list[SourceFile], chunk_mb: float, workers: int) -> int:
    """Chunk size: at most read.chunk_mb, and small enough that every worker gets a few chunks."""
    total = sum(Path(f.path).stat().st_size for f in files)
    return max(1024**2, min(int(chunk_mb * 1024**2), total // (4 * workers)))


def _read_chunks(chunks: list[PlannedChunk], workers: int, rows_of_chunk: RowsOfChunk) -> ray.data.Dataset:
    index = ray.data.from_items([{"chunk": c.index} for c in chunks], override_num_blocks=max(len(chunks), 1))
    return index.map_batches(
        _chunk_rows, batch_size=1, batch_format="numpy",
        fn_kwargs={"chunks": chunks, "rows_of_chunk": rows_of_chunk}, concurrency=workers,
    )


def _chunk_rows(batch: dict, chunks: list[PlannedChunk], rows_of_chunk: RowsOfChunk) -> pa.Table:
    rows = [row for i in batch["chunk"] for row in rows_of_chunk(chunks[int(i)])]
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)

