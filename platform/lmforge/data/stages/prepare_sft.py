"""`lmforge prepare-sft`: SFT datasets in any common schema -> label-masked, packed training rows.

    survey files, detect each file's record schema -> read into conversations (a task per chunk)
      -> dedup (exact + near, on dedup.key: the prompt by default)         (source_records.py)
      -> drop conversations that a longer one continues                     (steps/conversation_dedup.py)
      -> render + label (tasks)
      -> mixture (repeat / sample per dataset) -> pack (best-fit decreasing, per group)
      -> rows-NNNNN.parquet + manifest.json + quarantine.jsonl + dedup_clusters.jsonl

Rows hold input_ids, labels (-100 where not trained), position_ids (restarting per sample) and
boundaries (sample lengths); the manifest records the chat template and EOS, so training,
convert and serving use the very same ones.
"""

from __future__ import annotations

from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data
from ray.data.expressions import col

from lmforge.config import SFTDataConfig
from lmforge.data.files.sources import SourceFile, list_source_files, read_records
from lmforge.data.reports.counts import drop_keys
from lmforge.data.reports.plots import length_histogram, write_data_plots
from lmforge.data.stages import record_formats
from lmforge.data.stages.source_records import read_sources
from lmforge.data.steps.conversation_dedup import dedup_texts, find_prefix_conversations
from lmforge.data.steps.row_packing import assign_pack_group, pack_samples, write_row_shard
from lmforge.data.steps.tokenize import load_fast_tokenizer
from lmforge.data.text.chat_render import (
    IGNORE_INDEX,
    ChatRenderer,
    NothingToTrain,
    RenderedSample,
    SampleTooLong,
)
from lmforge.data.text.conversation import Conversation
from lmforge.data.text.sft_formats import detect_file_record_format, detect_record_format, to_conversation
from lmforge.manifest import Manifest
from lmforge.output_dir import staged_output_dir
from lmforge.runtime import init_ray
from lmforge.stage_outputs import SFTRows

# The row of a conversation dropped after rendering (too long, or nothing to train): no tokens.
_NO_SAMPLE = RenderedSample(np.zeros(0, np.int32), np.zeros(0, np.int32), turns_kept=0, turns_total=0)


def run_prepare_sft(cfg: SFTDataConfig) -> Manifest:
    files = list_source_files(cfg.sources)  # path, tokenizer and template errors stop us before any work
    renderer = ChatRenderer(load_fast_tokenizer(cfg.tokenizer), cfg.template, cfg.max_length)
    with staged_output_dir(cfg.output_dir) as out:
        init_ray(cfg.ray)
        records = read_sources(files, cfg, partial(read_records, convert=_conversation_json),
                               resolve_files=resolve_record_formats,
                               dedup_text=partial(dedup_texts, key=cfg.dedup.key))
        if cfg.dedup.drop_prefixes:
            survivors = records.kept.map_batches(drop_keys, batch_format="pyarrow",
                                                 fn_kwargs={"removed": records.duplicates.removed})
            records.duplicates.prefix_removed = find_prefix_conversations(survivors)
        samples = render_samples(records.kept, records.duplicates.removed, cfg).materialize()
        rendered = samples.filter(expr=col("status") == "ok")

        mixed, counts = records.mix_rendered(samples, "prepare-sft")  # too long, nothing to train: filtered
        shards = pack_and_write(mixed, cfg, out)

        totals = {key: sum(s[key] for s in shards) for key in ("rows", "samples", "tokens", "trained_tokens")}
        plots = write_data_plots(out, length_histogram(rendered), counts["sources"], "sample length")
        return records.write_manifest("prepare-sft", out, SFTRows, {
            "shards": shards,
            "plots": plots,
            "columns": {"input_ids": "list<int32>", "labels": "list<int32>", "position_ids": "list<int32>",
                        "boundaries": "list<int32>", "keys": "list<int64>", "row": "int64"},
            "max_length": cfg.max_length,
            "pack_mode": cfg.pack.mode,
            "template": cfg.template,
            "chat_template": renderer.chat_template,
            "eos_token_id": renderer.eos_token_id,
            "dedup_key": cfg.dedup.key,
            **totals,
            "utilisation": round(totals["tokens"] / max(totals["rows"] * cfg.max_length, 1), 6),
            "trained_token_share": round(totals["trained_tokens"] / max(totals["tokens"], 1), 6),
        }, counts)


def resolve_record_formats(files: list[SourceFile], surveys: list) -> list[SourceFile]:
    """Each file's SFT record schema (record_formats.resolve_record_formats); ConfigError if none fits."""
    return record_formats.resolve_record_formats(files, surveys, SFT_SCHEMAS)


def _conversation(fields: dict, source) -> Conversation:
    return to_conversation(fields, source.record_format, source.fields, source.system)


SFT_SCHEMAS = record_formats.RecordSchemas(detect_record_format, detect_file_record_format, _conversation)


def _conversation_json(fields: dict, source) -> str:
    return to_conversation(fields, source.record_format, source.fields, source.system,
                           split_dialogue=source.split_dialogue).to_json()


def render_batch(batch: pa.Table, tokenizer_path: str, template: str, max_length: int) -> pa.Table:
    """Ray Data task body: conversation JSON -> input_ids, labels, status
    (SampleRenderer, cached per process)."""
    return _sample_renderer(tokenizer_path, template, max_length)(batch)


@lru_cache(maxsize=2)
def _sample_renderer(tokenizer_path: str, template: str, max_length: int) -> SampleRenderer:
    # Tasks, not an actor pool (see lmforge.data.steps.tokenize): Ray reuses the process, so this loads once.
    return SampleRenderer(tokenizer_path, template, max_length)


class SampleRenderer:
    """Conversation JSON -> input_ids, labels, status for a batch (the template is compiled once)."""

    def __init__(self, tokenizer_path: str, template: str, max_length: int):
        self._renderer = ChatRenderer(load_fast_tokenizer(tokenizer_path), template, max_length)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rendered = [self._render(text) for text in batch.column("text").to_pylist()]
        samples = [sample for sample, _ in rendered]
        input_ids = pa.array([s.input_ids for s in samples], pa.list_(pa.int32()))
        return pa.table({
            "key": batch.column("key"), "chunk": batch.column("chunk"), "source": batch.column("source"),
            "input_ids": input_ids,
            "labels": pa.array([s.labels for s in samples], pa.list_(pa.int32())),
            "n_tokens": pc.list_value_length(input_ids).cast(pa.int64()),
            "n_trained": pa.array([int((s.labels != IGNORE_INDEX).sum()) for s in samples], pa.int64()),
            "truncated": pa.array([int(s.turns_kept < s.turns_total) for s in samples], pa.int64()),
            "status": pa.array([status for _, status in rendered], pa.string()),
        })

    def _render(self, text: str) -> tuple[RenderedSample, str]:
        """The sample and status "ok", or an empty sample and "filtered:<why>"."""
        try:
            return self._renderer.render(Conversation.from_json(text)), "ok"
        except SampleTooLong:
            return _NO_SAMPLE, "filtered:too_long"
        except NothingToTrain:
            return _NO_SAMPLE, "filtered:no_trained_turn"


def render_samples(kept: ray.data.Dataset, removed: np.ndarray, cfg: SFTDataConfig) -> ray.data.Dataset:
    survivors = kept.select_columns(["key", "chunk", "source", "text"]).map_batches(
        drop_keys, batch_format="pyarrow", fn_kwargs={"removed": removed}
    )
    return survivors.map_batches(
        render_batch,
        fn_kwargs={"tokenizer_path": cfg.tokenizer, "template": cfg.template, "max_length": cfg.max_length},
        batch_size=256, batch_format="pyarrow", concurrency=cfg.workers,
    )


def pack_and_write(mixed: ray.data.Dataset, cfg: SFTDataConfig, out: Path) -> list[dict]:
    """Pack samples in groups (a stable hash of key and copy) and write one shard per group."""
    total = mixed.count()
    groups = max(1, -(-total // cfg.pack.group_size))
    grouped = mixed.select_columns(["key", "copy", "input_ids", "labels"]).map_batches(
        assign_pack_group, batch_format="pyarrow", fn_kwargs={"groups": groups}
    )
    written = grouped.groupby("group").map_groups(
        _pack_and_write_group, batch_format="pyarrow",
        fn_kwargs={"out_dir": str(out), "capacity": cfg.max_length, "mode": cfg.pack.mode},
    )
    return sorted(written.take_all(), key=lambda row: row["file"])


def _pack_and_write_group(group: pa.Table, out_dir: str, capacity: int, mode: str) -> pa.Table:
    group_id = group.column("group")[0].as_py()
    # copies of one sample share a key and are identical, so their order does not matter
    rows = pack_samples(group.select(["key", "input_ids", "labels"]), capacity, mode)
    shard = write_row_shard(rows, group_id, out_dir) | {"samples": group.num_rows}
    return pa.table({name: [value] for name, value in shard.items()})
