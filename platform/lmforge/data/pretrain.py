"""`lmforge prepare-pretrain`: raw corpora -> cleaned, deduplicated, mixed, packed token blocks.

    survey files -> read + clean (a Ray task per file chunk) -> exact + near dedup
      -> tokenize (actor pool) -> mixture (repeat / sample per source) -> pack -> Parquet shards

Outputs in `output_dir`: `blocks-NNNNN.parquet` (block, input_ids, doc_lens), `manifest.json`,
`quarantine.jsonl` (records that could not be read, with file, line and reason) and
`dedup_clusters.jsonl` (a sample of duplicate clusters). Per source, the counts reconcile:
read = kept + filtered + exact duplicates + near duplicates + quarantined.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.data
from ray.data.expressions import col

from lmforge.config import PretrainDataConfig
from lmforge.data.accounting import (
    drop_keys,
    per_source_totals,
    reconcile_counts,
    removed_by_source,
    reset_output_dir,
    status_counts,
    write_duplicate_sample,
    write_quarantine,
)
from lmforge.data.clean import clean_text, rejection_reason
from lmforge.data.dedup_dataset import find_duplicates
from lmforge.data.mixing import mixture_factors, repeat_by_mixture
from lmforge.data.packing import Piece, pack_group, pieces_to_table, stitch_fragments
from lmforge.data.sources import (
    PlannedChunk,
    SourceFile,
    list_source_files,
    plan_chunks,
    read_records,
    survey_source_file,
)
from lmforge.data.tokenize import DocumentTokenizer, TokenizerSpec
from lmforge.data.tokenizer import tokenizer_identity
from lmforge.manifest import Manifest
from lmforge.runtime import init_ray

if TYPE_CHECKING:
    from lmforge.data.survey import FileSurvey

log = logging.getLogger(__name__)

DOC_SCHEMA = pa.schema([
    ("key", pa.int64()), ("chunk", pa.int64()), ("source", pa.string()), ("line", pa.int64()),
    ("text", pa.string()), ("status", pa.string()), ("reason", pa.string()), ("raw", pa.string()),
])


def run_prepare_pretrain(cfg: PretrainDataConfig) -> Manifest:
    files = list_source_files(cfg.sources)  # path and tokenizer errors stop us before any work
    tokenizer = TokenizerSpec.from_directory(cfg.tokenizer, add_bos=cfg.pack.add_bos)
    out = reset_output_dir(cfg.output_dir, "blocks-*.parquet")
    init_ray(cfg.ray)

    survey = ray.remote(num_cpus=1)(survey_source_file)
    chunk_bytes = read_chunk_bytes(files, cfg)
    surveys = ray.get([survey.remote(f, chunk_bytes) for f in files])
    chunks = plan_chunks(files, surveys)
    docs = read_documents(chunks, cfg).materialize()
    kept = docs.filter(expr=col("status") == "ok")
    duplicates = find_duplicates(kept, cfg.dedup, cfg.seed, cfg.workers)
    tokenized = tokenize_documents(kept, duplicates.removed, tokenizer, cfg).materialize()

    kept_stats = per_source_totals(tokenized)
    factors = mixture_factors(
        {s: int(v["tokens"]) for s, v in kept_stats.items()},
        {s.name: s.weight for s in cfg.sources},
        cfg.mix.total_tokens,
    )
    mixed = mix_documents(tokenized, factors, cfg.seed, len(chunks))
    packed = pack_documents(mixed, cfg.pack.block_size, cfg.workers)
    shards = write_shards(packed.blocks, out, cfg.pack.blocks_per_shard)

    source_of_file = [f.source.name for f in files]
    counts = reconcile_counts(
        cfg.sources, status_counts(docs, surveys, source_of_file), removed_by_source(duplicates, source_of_file),
        kept_stats, factors, per_source_totals(mixed),
    )
    write_quarantine(docs, files, surveys, out / "quarantine.jsonl")
    write_duplicate_sample(docs, duplicates.clusters, files, out / "dedup_clusters.jsonl")
    manifest = Manifest(
        stage="prepare-pretrain",
        config=cfg.model_dump(),
        inputs=[_input_record(f, s) for f, s in zip(files, surveys)],
        outputs={
            "dir": str(out.resolve()),
            "shards": shards,
            "columns": {"block": "int64", "input_ids": "list<int32>", "doc_lens": "list<int32>"},
            "block_size": cfg.pack.block_size,
            "blocks": packed.num_blocks,
            "tokens": packed.num_blocks * cfg.pack.block_size,
            "dropped_remainder_tokens": packed.remainder,
            "tokenizer": tokenizer_identity(cfg.tokenizer),
            "quarantine": "quarantine.jsonl",
            "dedup_clusters": "dedup_clusters.jsonl",
        },
        counts=counts,
    )
    manifest.write(out)
    return manifest


def _input_record(file: SourceFile, survey: FileSurvey | str) -> dict:
    record = {"source": file.source.name, "path": str(Path(file.path).resolve())}
    if isinstance(survey, str):
        return record | {"error": survey}
    return record | {"size": survey.size, "sha256": survey.sha256, "encoding": survey.encoding,
                     "format": survey.format, "chunks": len(survey.chunks)}


def read_chunk_bytes(files: list, cfg: PretrainDataConfig) -> int:
    """Chunk size: at most read.chunk_mb, and small enough that every worker gets a few chunks."""
    total = sum(Path(f.path).stat().st_size for f in files)
    return max(1024**2, min(int(cfg.read.chunk_mb * 1024**2), total // (4 * cfg.workers)))


def read_documents(chunks: list[PlannedChunk], cfg: PretrainDataConfig) -> ray.data.Dataset:
    """One row per record of every chunk: cleaned text and status ok / filtered:<why> / quarantined."""
    index = ray.data.from_items([{"chunk": c.index} for c in chunks], override_num_blocks=max(len(chunks), 1))
    return index.map_batches(
        _read_and_clean, batch_size=1, batch_format="numpy",
        fn_kwargs={"chunks": chunks, "cfg": cfg}, concurrency=cfg.workers,
    )


def _read_and_clean(batch: dict, chunks: list[PlannedChunk], cfg: PretrainDataConfig) -> pa.Table:
    rows = []
    for chunk_index in batch["chunk"]:
        for row in read_records(chunks[int(chunk_index)]):
            if row["status"] == "ok":
                row["text"] = clean_text(row["text"], cfg.clean)
                reason = rejection_reason(row["text"], cfg.clean)
                if reason:
                    row["status"] = f"filtered:{reason}"
            rows.append(row)
    return pa.Table.from_pylist(rows, schema=DOC_SCHEMA)


def tokenize_documents(
    kept: ray.data.Dataset, removed: np.ndarray, tokenizer: TokenizerSpec, cfg: PretrainDataConfig
) -> ray.data.Dataset:
    """Documents that survived dedup, as token ids ending in EOS (columns key, chunk, source, input_ids, n_tokens)."""
    survivors = kept.select_columns(["key", "chunk", "source", "text"]).map_batches(
        drop_keys, batch_format="pyarrow", fn_kwargs={"removed": removed}
    )
    return survivors.map_batches(
        DocumentTokenizer,
        fn_constructor_kwargs={"spec": tokenizer, "threads": cfg.tokenize.threads_per_worker},
        batch_size=cfg.tokenize.batch_size,
        batch_format="pyarrow",
        concurrency=cfg.workers,
    )


def mix_documents(tokenized: ray.data.Dataset, factors: dict[str, float], seed: int, num_chunks: int):
    """Documents repeated per their source's factor, with the order packing cuts blocks in.

    `group` = copy * num_chunks + chunk: all first copies in corpus order, then the second copies
    of up-sampled sources, and so on.
    """
    return repeat_by_mixture(tokenized, factors, seed).map_batches(
        lambda t: t.append_column("group", pc.add(pc.multiply(t.column("copy"), num_chunks), t.column("chunk"))),
        batch_format="pyarrow",
    )


class PackedBlocks:
    def __init__(self, blocks: ray.data.Dataset, num_blocks: int, remainder: int):
        self.blocks, self.num_blocks, self.remainder = blocks, num_blocks, remainder


def pack_documents(mixed: ray.data.Dataset, block_size: int, workers: int) -> PackedBlocks:
    """Blocks of `block_size` tokens cut from all documents in `group`, `key` order."""
    sums = mixed.groupby("group").sum("n_tokens").to_pandas().sort_values("group")
    starts = np.concatenate([[0], np.cumsum(sums["sum(n_tokens)"].to_numpy())[:-1]])
    group_offsets = dict(zip(sums["group"].tolist(), starts.tolist()))
    total = int(sums["sum(n_tokens)"].sum()) if len(sums) else 0
    if total < block_size:
        raise ValueError(f"prepare-pretrain: only {total} tokens after cleaning and dedup, fewer than "
                         f"block_size {block_size}; add data or lower pack.block_size")
    pieces = mixed.groupby("group").map_groups(
        pack_group, batch_format="pyarrow", fn_kwargs={"group_offsets": group_offsets, "block_size": block_size},
    ).materialize()
    whole_blocks = pieces.filter(expr=col("whole"))
    fragments = [Piece(r["block"], r["offset"], np.asarray(r["input_ids"], np.int32), np.asarray(r["doc_lens"], np.int32))
                 for r in pieces.filter(expr=~col("whole")).take_all()]
    stitched, remainder = stitch_fragments(fragments, block_size)
    blocks = whole_blocks.union(ray.data.from_arrow(pieces_to_table(stitched))) if stitched else whole_blocks
    return PackedBlocks(blocks, (total - remainder) // block_size, remainder)


def write_shards(blocks: ray.data.Dataset, out: Path, blocks_per_shard: int) -> list[dict]:
    """Write blocks, in block order, to `blocks-NNNNN.parquet` files of `blocks_per_shard` blocks each.

    Workers write their shards in parallel; names and bytes depend only on the blocks, so the
    same input and config give byte-identical shards.
    """
    with_shard = blocks.map_batches(
        lambda t: t.append_column("shard", pc.divide(t.column("block"), blocks_per_shard)),
        batch_format="pyarrow",
    )
    written = with_shard.groupby("shard").map_groups(
        _write_shard, batch_format="pyarrow", fn_kwargs={"out_dir": str(out)}
    )
    return sorted(written.take_all(), key=lambda row: row["shard"])


def _write_shard(group: pa.Table, out_dir: str) -> pa.Table:
    group = group.sort_by("block")
    shard = group.column("shard")[0].as_py()
    blocks = group.column("block").to_numpy()
    if blocks.size and not np.array_equal(blocks, np.arange(blocks[0], blocks[0] + blocks.size)):
        raise RuntimeError(f"shard {shard}: blocks are not contiguous ({blocks[:5]}...)")
    name = f"blocks-{shard:05d}.parquet"
    path = Path(out_dir) / name
    pq.write_table(group.select(["block", "input_ids", "doc_lens"]), path, compression="zstd")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return pa.table({"shard": [shard], "file": [name], "blocks": [blocks.size],
                     "first_block": [int(blocks[0]) if blocks.size else 0], "sha256": [digest]})
