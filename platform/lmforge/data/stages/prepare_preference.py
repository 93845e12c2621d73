"""`lmforge prepare-preference`: preference pairs (or KTO samples) in any common schema -> packed rows of
whole pairs, label-masked, for DPO-style (or KTO) training.

    survey files, detect each file's record schema (all paired, or all KTO) -> read into examples
      (prompt + chosen/rejected, or prompt + completion + label; a task per chunk)
      -> dedup (exact + near, on dedup.key: the prompt by default)          (source_records.py)
      -> render (tasks): one sequence per answer, prompt labelled -100, cut to max_length
      -> mixture (repeat / sample per dataset) -> pack whole pairs (best-fit decreasing, per group;
         KTO: each sample then its KL sequence)                             (steps/pair_packing.py)
      -> rows-NNNNN.parquet + manifest.json + quarantine.jsonl + dedup_clusters.jsonl + plots

Rows hold input_ids, labels, position_ids, boundaries (as prepare-sft's), kinds (0 chosen, 1 rejected,
2 KL) and pair_keys; the manifest records the chat template and EOS, so training, convert and serving
use the very same ones. `prepare_preference_rows` does it all inside a staged output directory, so a
reference pass (lmforge.align) can add its log-probs there before the directory takes its name.
"""

from __future__ import annotations

from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray.data
from ray.data.expressions import col

from lmforge.config import ConfigError, PreferenceDataConfig
from lmforge.config.data import check_one_kind_of_data
from lmforge.data.files.sources import SourceFile, list_source_files, read_records
from lmforge.data.reports.counts import drop_keys
from lmforge.data.reports.plots import length_histogram, write_data_plots
from lmforge.data.stages import record_formats
from lmforge.data.stages.source_records import read_sources
from lmforge.data.steps.conversation_dedup import preference_dedup_texts
from lmforge.data.steps.pair_packing import kto_sequences, pack_pairs, pair_sequences
from lmforge.data.steps.row_packing import assign_pack_group, write_row_shard
from lmforge.data.steps.tokenize import load_fast_tokenizer
from lmforge.data.text.chat_render import IGNORE_INDEX
from lmforge.data.text.preference_formats import (
    PreferenceExample,
    detect_file_record_format,
    detect_record_format,
    to_preference,
)
from lmforge.data.text.preference_render import (
    IdenticalWhenCut,
    PairTooLong,
    PreferenceRenderer,
    RenderedExample,
)
from lmforge.manifest import Manifest
from lmforge.runtime import init_ray
from lmforge.stage_outputs import PreferenceRows

STAGE = "prepare-preference"
COLUMNS = {"input_ids": "list<int32>", "labels": "list<int32>", "position_ids": "list<int32>",
           "boundaries": "list<int32>", "kinds": "list<int8>", "pair_keys": "list<int64>", "row": "int64"}
_NOTHING = RenderedExample([], prompt_length=0, truncated=False)  # a dropped example: no tokens
_RENDERED = ["key", "copy", "chosen_ids", "chosen_labels", "rejected_ids", "rejected_labels", "prompt_length",
             "desirable", "truncated"]


def check_inputs(cfg: PreferenceDataConfig) -> tuple[list[SourceFile], PreferenceRenderer]:
    """The source files and the renderer, so path, tokenizer and template errors come before any work."""
    return list_source_files(cfg.sources), PreferenceRenderer(
        load_fast_tokenizer(cfg.tokenizer), cfg.template, cfg.max_length, cfg.max_prompt_length)


def prepare_preference_rows(cfg: PreferenceDataConfig, out: Path, files: list[SourceFile],
                            renderer: PreferenceRenderer) -> Manifest:
    """Rows, reports and manifest.json of `cfg`, written into `out` (an already staged output directory,
    lmforge.output_dir), from check_inputs' files and renderer; starts or joins Ray. EmptyOutput when no
    pair is left."""
    init_ray(cfg.ray)
    records = read_sources(files, cfg, partial(read_records, convert=_example_json),
                           resolve_files=resolve_record_formats,
                           dedup_text=partial(preference_dedup_texts, key=cfg.dedup.key))
    paired = all(f.source.paired is not False for f in records.files)  # one kind (resolve_record_formats)
    examples = render_examples(records.kept, records.duplicates.removed, cfg).materialize()
    rendered = examples.filter(expr=col("status") == "ok")

    mixed, counts = records.mix_rendered(examples, STAGE)  # too long, identical when cut: filtered
    shards = pack_and_write(mixed, cfg, out, paired)

    totals = {key: sum(s[key] for s in shards)
              for key in ("rows", "pairs", "sequences", "tokens", "trained_tokens", "truncated", "desirable",
                          "undesirable")}
    lengths = rendered.map_batches(_sequence_lengths, batch_format="pyarrow")
    plots = write_data_plots(out, length_histogram(lengths), counts["sources"], "sequence length")
    return records.write_manifest(STAGE, out, PreferenceRows, {
        "shards": shards,
        "plots": plots,
        "columns": COLUMNS,
        "max_length": cfg.max_length,
        "row_length": 2 * cfg.max_length,
        "pack_mode": cfg.pack.mode,
        "template": cfg.template,
        "chat_template": renderer.chat.chat_template,
        "eos_token_id": renderer.chat.eos_token_id,
        "dedup_key": cfg.dedup.key,
        "paired": paired,
        **totals,
        "desirable": None if paired else totals["desirable"],
        "undesirable": None if paired else totals["undesirable"],
        "utilisation": round(totals["tokens"] / max(totals["rows"] * 2 * cfg.max_length, 1), 6),
    }, counts)


def resolve_record_formats(files: list[SourceFile], surveys: list) -> list[SourceFile]:
    """Each file's preference record schema (record_formats.resolve_record_formats); ConfigError if none fits,
    or if paired and KTO files are mixed."""
    files = record_formats.resolve_record_formats(files, surveys, PREFERENCE_SCHEMAS)
    try:
        # an unreadable file is still auto (paired None): every record of it is quarantined
        check_one_kind_of_data({f"{f.source.name} ({f.path}: {f.source.record_format})": f.source.paired
                                for f in files})
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return files


def _example(fields: dict, source) -> PreferenceExample:
    return to_preference(fields, source.record_format, source.fields, source.system)


PREFERENCE_SCHEMAS = record_formats.RecordSchemas(detect_record_format, detect_file_record_format, _example)


def _example_json(fields: dict, source) -> str:
    return _example(fields, source).to_json()


def render_examples(kept: ray.data.Dataset, removed: np.ndarray,
                    cfg: PreferenceDataConfig) -> ray.data.Dataset:
    """Kept examples, less the duplicates (`removed` keys) -> one rendered row each (ExampleRenderer)."""
    survivors = kept.select_columns(["key", "chunk", "source", "text"]).map_batches(
        drop_keys, batch_format="pyarrow", fn_kwargs={"removed": removed}
    )
    return survivors.map_batches(
        render_batch,
        fn_kwargs={"tokenizer_path": cfg.tokenizer, "template": cfg.template, "max_length": cfg.max_length,
                   "max_prompt_length": cfg.max_prompt_length},
        batch_size=256, batch_format="pyarrow", concurrency=cfg.workers,
    )


def render_batch(batch: pa.Table, tokenizer_path: str, template: str, max_length: int,
                 max_prompt_length: int | None) -> pa.Table:
    """Ray Data task body: example JSON -> sequences, labels, status (ExampleRenderer, cached per process)."""
    return _example_renderer(tokenizer_path, template, max_length, max_prompt_length)(batch)


@lru_cache(maxsize=2)
def _example_renderer(tokenizer_path: str, template: str, max_length: int,
                      max_prompt_length: int | None) -> ExampleRenderer:
    # Tasks, not an actor pool (see lmforge.data.steps.tokenize): Ray reuses the process, so this loads once.
    return ExampleRenderer(tokenizer_path, template, max_length, max_prompt_length)


class ExampleRenderer:
    """A batch of example JSON -> per example: chosen_ids/labels, rejected_ids/labels (empty for KTO),
    prompt_length, desirable (KTO's label), n_tokens, n_trained, truncated, status ("ok" or
    "filtered:too_long" / "filtered:identical_when_cut", with empty sequences)."""

    def __init__(self, tokenizer_path: str, template: str, max_length: int, max_prompt_length: int | None):
        self._renderer = PreferenceRenderer(load_fast_tokenizer(tokenizer_path), template, max_length,
                                            max_prompt_length)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [self._render(text) for text in batch.column("text").to_pylist()]
        empty = np.zeros(0, np.int32)
        columns: dict[str, list] = {name: [] for name in ("chosen_ids", "chosen_labels", "rejected_ids",
                                                          "rejected_labels")}
        for rendered, _, _ in rows:
            sequences = rendered.sequences + [(empty, empty)] * (2 - len(rendered.sequences))
            for side, (ids, labels) in zip(("chosen", "rejected"), sequences, strict=True):
                columns[f"{side}_ids"].append(ids)
                columns[f"{side}_labels"].append(labels)
        labels = [np.concatenate([labels for _, labels in r.sequences] or [empty]) for r, _, _ in rows]
        return pa.table({
            "key": batch.column("key"), "chunk": batch.column("chunk"), "source": batch.column("source"),
            **{name: pa.array(values, pa.list_(pa.int32())) for name, values in columns.items()},
            "prompt_length": pa.array([r.prompt_length for r, _, _ in rows], pa.int64()),
            "desirable": pa.array([desirable for _, desirable, _ in rows], pa.bool_()),
            "n_tokens": pa.array([len(x) for x in labels], pa.int64()),
            "n_trained": pa.array([int((x != IGNORE_INDEX).sum()) for x in labels], pa.int64()),
            "truncated": pa.array([int(r.truncated) for r, _, _ in rows], pa.int64()),
            "status": pa.array([status for _, _, status in rows], pa.string()),
        })

    def _render(self, text: str):
        """(RenderedExample, KTO label, status "ok"), or an empty one and "filtered:<why>"."""
        example = PreferenceExample.from_json(text)
        try:
            return self._renderer.render(example), example.desirable, "ok"
        except PairTooLong:
            status = "filtered:too_long"
        except IdenticalWhenCut:
            status = "filtered:identical_when_cut"
        return _NOTHING, example.desirable, status


def _sequence_lengths(batch: pa.Table) -> pa.Table:
    """Ray Data body: a row per rendered sequence, with its length (n_tokens), for the length histogram."""
    lengths = np.concatenate([pc.list_value_length(batch.column(c)).to_numpy(zero_copy_only=False)
                              for c in ("chosen_ids", "rejected_ids")])
    return pa.table({"n_tokens": lengths[lengths > 0].astype(np.int64)})


def pack_and_write(mixed: ray.data.Dataset, cfg: PreferenceDataConfig, out: Path, paired: bool) -> list[dict]:
    """Pack pairs in groups (a stable hash of key and copy) and write one shard per group."""
    groups = max(1, -(-mixed.count() // cfg.pack.group_size))
    grouped = mixed.select_columns(_RENDERED).map_batches(
        assign_pack_group, batch_format="pyarrow", fn_kwargs={"groups": groups}
    )
    written = grouped.groupby("group").map_groups(
        _pack_and_write_group, batch_format="pyarrow",
        fn_kwargs={"out_dir": str(out), "max_length": cfg.max_length, "mode": cfg.pack.mode,
                   "paired": paired},
    )
    return sorted(written.take_all(), key=lambda row: row["file"])


def _pack_and_write_group(group: pa.Table, out_dir: str, max_length: int, mode: str,
                          paired: bool) -> pa.Table:
    group_id = group.column("group")[0].as_py()
    # copies of one pair share a key and are identical, so their order does not matter
    group = group.sort_by([("key", "ascending"), ("copy", "ascending")])
    sequences = pair_sequences(group) if paired else kto_sequences(group, max_length)
    rows = pack_pairs(sequences, 2 * max_length, mode)
    desirable = int(pc.sum(group.column("desirable")).as_py() or 0) if not paired else 0
    shard = write_row_shard(rows, group_id, out_dir) | {
        "pairs": group.num_rows, "sequences": sequences.num_rows,
        "truncated": int(pc.sum(group.column("truncated")).as_py() or 0),
        "desirable": desirable, "undesirable": 0 if paired else group.num_rows - desirable,
    }
    return pa.table({name: [value] for name, value in shard.items()})
