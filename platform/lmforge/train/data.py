"""The prepared data a training run reads: checked on the driver, ordered per epoch, dealt out to workers.

Training never tokenizes: it reads the Parquet rows that prepare-pretrain (blocks) or prepare-sft
(packed rows) wrote, and their manifest says what they are. Each epoch visits the rows in an order
fixed by (seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data

from lmforge.data.steps.hashing import splitmix64
from lmforge.manifest import Manifest
from lmforge.stage_outputs import PreferenceRows, PreparedData, SFTRows, TokenBlocks, outputs_of
from lmforge.stages import STAGES


@dataclass(frozen=True)
class TrainData:
    """What a run needs to know about its data, from the data stage's manifest."""

    # "pretrain" (blocks, doc_lens), "sft" (rows with labels, position_ids, boundaries) or "preference"
    # (sft-like rows of whole pairs, plus kinds, pair_keys and maybe ref_logps per sequence)
    kind: str
    files: tuple[str, ...]
    rows: int
    sequence_length: int  # the data's block_size or max_length (stage_outputs: PreparedData.sequence_length)
    vocab_size: int
    eos_token_id: int
    pad_token_id: int
    tokenizer_dir: str
    chat_template: str | None
    paired: bool = True  # preference: chosen/rejected pairs; False: KTO samples, each with its KL sequence
    reference_logps: bool = False  # preference: the rows carry the reference model's ref_logps

    @property
    def row_id(self) -> str:
        return "block" if self.kind == "pretrain" else "row"


def read_prepared_data(directory: str | Path) -> TokenBlocks | SFTRows | PreferenceRows:
    """The outputs of the prepare-pretrain, prepare-sft or prepare-preference run in `directory`;
    ValueError: what to rerun."""
    manifest = Manifest.read(directory)
    stage = STAGES.get(manifest.stage)
    if stage is None or stage.outputs is None or not issubclass(stage.outputs, PreparedData):
        raise ValueError(f"data.dir {directory}: holds {manifest.stage} output, not prepared training data")
    return outputs_of(manifest, stage.outputs, directory)


def load_train_data(directory: str) -> TrainData:
    """The manifest of a prepare-pretrain or prepare-sft output, checked; errors name what is wrong."""
    prepared = read_prepared_data(directory)
    files = tuple(str(Path(directory) / shard["file"]) for shard in prepared.shards)
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"data.dir {directory}: shards listed in manifest.json are missing: {missing[:3]}"
        )
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    if rows == 0:
        raise ValueError(f"data.dir {directory}: the dataset is empty (0 rows); check its manifest counts")
    tokenizer = prepared.tokenizer
    preference = isinstance(prepared, PreferenceRows)
    sft = isinstance(prepared, SFTRows) or preference
    return TrainData(
        kind="preference" if preference else "sft" if sft else "pretrain",
        files=files,
        rows=rows,
        sequence_length=prepared.sequence_length,
        vocab_size=tokenizer.vocab_size,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        tokenizer_dir=tokenizer.path,
        chat_template=prepared.chat_template if sft else None,
        paired=prepared.paired if preference else True,
        reference_logps=preference and prepared.reference is not None,
    )


def train_split(epoch: int, rank: int) -> str:
    """The name of rank `rank`'s dataset of `epoch` among the datasets Ray Train hands every worker."""
    return f"train_{epoch}_rank{rank}"


def epoch_order(data: TrainData, epoch: int, seed: int, eval_rows: int) -> np.ndarray:
    """The training row ids of one epoch in reading order, fixed by (seed, epoch); held-out ids excluded.

    Only the id column is read: the driver orders ids, the workers move the rows (worker_epoch_dataset).
    """
    ids = _sorted_row_ids(data, eval_rows)[: data.rows - eval_rows]  # the held-out ids are the largest
    # a full mix: neighbours scatter
    return ids[np.argsort(splitmix64(ids, seed * 1_000_003 + epoch), kind="stable")]


def share_epoch_order(order: np.ndarray) -> ray.ObjectRef:
    """`order` as an id -> position lookup (ids sorted, their positions) in the object store,
    for all ranks."""
    by_id = np.argsort(order, kind="stable")
    return ray.put((order[by_id], by_id, len(order)))


def worker_epoch_dataset(data: TrainData, order: ray.ObjectRef, rank: int, world: int,
                         micro_batch_size: int) -> ray.data.Dataset:
    """Rank `rank`'s rows of an epoch, in order: the epoch order dealt out in micro batches,
    whole global batches only.

        order      r0 r1 r2 r3 r4 r5 r6 r7 r8      (world 2, micro batch 2: global batches of 4 rows)
        rank 0     r0 r1       r4 r5               r8 is not in a whole global batch: no rank reads it
        rank 1           r2 r3       r6 r7

    `order` comes from share_epoch_order. Each worker reads the files but keeps and sorts only its
    share, so an epoch costs one shuffle of the data in all, not one per worker.
    """
    return _read(data).map_batches(
        _keep_rank_rows, batch_format="pyarrow",
        fn_kwargs={"row_id": data.row_id, "order": order, "rank": rank, "world": world,
                   "micro": micro_batch_size},
    ).sort("position").drop_columns(["position"])


def _keep_rank_rows(batch: pa.Table, row_id: str, order: ray.ObjectRef, rank: int, world: int,
                    micro: int) -> pa.Table:
    sorted_ids, positions, rows = ray.get(order)
    whole = rows // (world * micro) * (world * micro)
    ids = batch.column(row_id).to_numpy()
    found = np.searchsorted(sorted_ids, ids).clip(max=rows - 1)
    position = positions[found]
    keep = (sorted_ids[found] == ids) & (position < whole) & ((position // micro) % world == rank)
    return batch.filter(pa.array(keep)).append_column("position", pa.array(position[keep], pa.int64()))


def eval_dataset(data: TrainData, eval_rows: int) -> ray.data.Dataset:
    held_out = _held_out_ids(data, eval_rows)
    return _read(data).map_batches(
        lambda t: t.filter(pa.array(np.isin(t.column(data.row_id).to_numpy(), held_out))),
        batch_format="pyarrow",
    )


def _read(data: TrainData) -> ray.data.Dataset:
    return ray.data.read_parquet(list(data.files))


def _sorted_row_ids(data: TrainData, eval_rows: int) -> np.ndarray:
    """Every row id, sorted (only the id column is read); checks that `eval_rows` leaves training rows."""
    if eval_rows >= data.rows:
        raise ValueError(f"data.eval_rows {eval_rows} leaves no training rows (the data has {data.rows})")
    return np.sort(np.concatenate(
        [pq.read_table(f, columns=[data.row_id]).column(0).to_numpy() for f in data.files]
    ))


def _held_out_ids(data: TrainData, eval_rows: int) -> np.ndarray:
    return _sorted_row_ids(data, eval_rows)[data.rows - eval_rows:]
