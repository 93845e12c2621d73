"""`lmforge prepare-pretrain`: raw corpora -> cleaned, deduplicated, mixed, packed token blocks.

    survey files -> read + clean (a Ray task per file chunk) -> exact + near dedup   (source_records.py)
      -> tokenize (tasks) -> mixture (repeat / sample per source) -> pack -> Parquet shards

Outputs in `output_dir`: `blocks-NNNNN.parquet` (block, input_ids, doc_lens), `manifest.json`,
`quarantine.jsonl` (records that could not be read, with file, line and reason) and
`dedup_clusters.jsonl` (a sample of duplicate clusters). Per source, the counts reconcile:
read = kept + filtered + exact duplicates + near duplicates + quarantined.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.data
from ray.data.expressions import col

from lmforge.config import CleanConfig, PretrainDataConfig
from lmforge.data.files.sources import PlannedChunk, list_source_files, read_records
from lmforge.data.reports.counts import drop_keys, per_source_totals
from lmforge.data.reports.plots import length_histogram, write_data_plots
from lmforge.data.stages.source_records import read_sources
from lmforge.data.steps.block_packing import Piece, pack_group, pieces_to_table, stitch_fragments
from lmforge.data.steps.clean import clean_text, rejection_reason
from lmforge.data.steps.mixing import mixture_factors, repeat_by_mixture
from lmforge.data.steps.tokenize import TokenizerSpec, tokenize_batch
from lmforge.manifest import Manifest
from lmforge.output_dir import staged_output_dir
from lmforge.runtime import init_ray
from lmforge.stage_outputs import TokenBlocks


def run_prepare_pretrain(cfg: PretrainDataConfig) -> Manifest:
    files = list_source_files(cfg.sources)  # path and tokenizer errors stop us before any work
    tokenizer = TokenizerSpec.from_directory(cfg.tokenizer, add_bos=cfg.pack.add_bos)
    with staged_output_dir(cfg.output_dir) as out:
        init_ray(cfg.ray)
        records = read_sources(files, cfg, partial(read_clean_records, clean=cfg.clean))
        tokenized = tokenize_documents(records.kept, records.duplicates.removed, tokenizer, cfg).materialize()

        kept_stats = per_source_totals(tokenized)
        factors = mixture_factors(
            {s: int(v["tokens"]) for s, v in kept_stats.items()},
            {s.name: s.weight for s in cfg.sources},
            cfg.mix.total_tokens,
        )
        mixed = mix_documents(tokenized, factors, cfg.seed, len(records.chunks))
        counts = records.counts(kept_stats, factors, per_source_totals(mixed))
        records.check_output_not_empty("prepare-pretrain", counts)
        packed = pack_documents(mixed, cfg.pack.block_size)
        shards = write_shards(packed.blocks, out, cfg.pack.blocks_per_shard)

        plots = write_data_plots(out, length_histogram(tokenized), counts["sources"], "document length")
        return records.write_manifest("prepare-pretrain", out, TokenBlocks, {
            "shards": shards,
            "plots": plots,
            "columns": {"block": "int64", "input_ids": "list<int32>", "doc_lens": "list<int32>"},
            "block_size": cfg.pack.block_size,
            "blocks": packed.num_blocks,
            "tokens": packed.num_blocks * cfg.pack.block_size,
            "dropped_remainder_tokens": packed.remainder,
        }, counts)


def read_clean_records(planned: PlannedChunk, clean: CleanConfig) -> Iterator[dict]:
    """Rows of one chunk, text cleaned; status filtered:<why> for a document the cleaning rules reject."""
    for row in read_records(planned):
        if row["status"] == "ok":
            row["text"] = clean_text(row["text"], clean)
            reason = rejection_reason(row["text"], clean)
            if reason:
                row["status"] = f"filtered:{reason}"
        yield row


def tokenize_documents(
    kept: ray.data.Dataset, removed: np.ndarray, tokenizer: TokenizerSpec, cfg: PretrainDataConfig
) -> ray.data.Dataset:
    """Documents that survived dedup, as token ids ending in EOS
    (columns key, chunk, source, input_ids, n_tokens)."""
    survivors = kept.select_columns(["key", "chunk", "source", "text"]).map_batches(
        drop_keys, batch_format="pyarrow", fn_kwargs={"removed": removed}
    )
    return survivors.map_batches(
        tokenize_batch,
        fn_kwargs={"spec": tokenizer, "threads": cfg.tokenize.threads_per_worker},
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
        lambda t: t.append_column(
            "group", pc.add(pc.multiply(t.column("copy"), num_chunks), t.column("chunk"))
        ),
        batch_format="pyarrow",
    )


class PackedBlocks:
    def __init__(self, blocks: ray.data.Dataset, num_blocks: int, remainder: int):
        self.blocks, self.num_blocks, self.remainder = blocks, num_blocks, remainder


def pack_documents(mixed: ray.data.Dataset, block_size: int) -> PackedBlocks:
    """Blocks of `block_size` tokens cut from all documents in `group`, `key` order."""
    sums = mixed.groupby("group").sum("n_tokens").to_pandas().sort_values("group")
    starts = np.concatenate([[0], np.cumsum(sums["sum(n_tokens)"].to_numpy())[:-1]])
    # not strict: with no groups at all `starts` is still [0]; the total check below reports that case
    group_offsets = dict(zip(sums["group"].tolist(), starts.tolist(), strict=False))
    total = int(sums["sum(n_tokens)"].sum()) if len(sums) else 0
    if total < block_size:
        raise ValueError(f"prepare-pretrain: only {total} tokens after cleaning and dedup, fewer than "
                         f"block_size {block_size}; add data or lower pack.block_size")
    pieces = mixed.groupby("group").map_groups(
        pack_group, batch_format="pyarrow",
        fn_kwargs={"group_offsets": group_offsets, "block_size": block_size},
    ).materialize()
    whole_blocks = pieces.filter(expr=col("whole"))
    fragments = [Piece(r["block"], r["offset"], np.asarray(r["input_ids"], np.int32),
                       np.asarray(r["doc_lens"], np.int32))
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
