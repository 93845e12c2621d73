"""The prepared data a training run reads: checked on the driver, ordered per epoch (loop.py slices it).

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

from lmforge.data.hashing import splitmix64
from lmforge.manifest import Manifest


@dataclass(frozen=True)
class TrainData:
    """What a run needs to know about its data, from the data stage's manifest."""

    kind: str  # "pretrain" (blocks, doc_lens) or "sft" (rows with labels, position_ids, boundaries)
    files: tuple[str, ...]
    rows: int
    sequence_length: int  # block_size or max_length
    vocab_size: int
    eos_token_id: int
    pad_token_id: int
    tokenizer_dir: str
    chat_template: str | None

    @property
    def row_id(self) -> str:
        return "block" if self.kind == "pretrain" else "row"


def load_train_data(directory: str) -> TrainData:
    """The manifest of a prepare-pretrain or prepare-sft output, checked; errors name what is wrong."""
    manifest = Manifest.read(directory)
    outputs = manifest.outputs
    if manifest.stage not in ("prepare-pretrain", "prepare-sft"):
        raise ValueError(f"data.dir {directory}: holds {manifest.stage} output, not prepared training data")
    files = tuple(str(Path(directory) / shard["file"]) for shard in outputs["shards"])
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"data.dir {directory}: shards listed in manifest.json are missing: {missing[:3]}")
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    if rows == 0:
        raise ValueError(f"data.dir {directory}: the dataset is empty (0 rows); check its manifest counts")
    tokenizer = outputs["tokenizer"]
    pretrain = manifest.stage == "prepare-pretrain"
    return TrainData(
        kind="pretrain" if pretrain else "sft",
        files=files,
        rows=rows,
        sequence_length=outputs["block_size"] if pretrain else outputs["max_length"],
        vocab_size=tokenizer["vocab_size"],
        eos_token_id=tokenizer["eos_token_id"],
        pad_token_id=tokenizer["pad_token_id"] if tokenizer["pad_token_id"] is not None else tokenizer["eos_token_id"],
        tokenizer_dir=tokenizer["path"],
        chat_template=None if pretrain else outputs["chat_template"],
    )


def epoch_dataset(data: TrainData, epoch: int, seed: int, eval_rows: int) -> ray.data.Dataset:
    """Training rows of one epoch in their (seed, epoch) order; the last `eval_rows` row ids are held out."""
    held_out = _held_out_ids(data, eval_rows)
    ranked = _read(data).map_batches(
        _rank_rows, batch_format="pyarrow",
        fn_kwargs={"row_id": data.row_id, "salt": seed * 1_000_003 + epoch, "held_out": held_out},
    )
    return ranked.sort("rank").drop_columns(["rank"])


def eval_dataset(data: TrainData, eval_rows: int) -> ray.data.Dataset:
    held_out = _held_out_ids(data, eval_rows)
    return _read(data).map_batches(
        lambda t: t.filter(pa.array(np.isin(t.column(data.row_id).to_numpy(), held_out))), batch_format="pyarrow"
    )


def _read(data: TrainData) -> ray.data.Dataset:
    return ray.data.read_parquet(list(data.files))


def _held_out_ids(data: TrainData, eval_rows: int) -> np.ndarray:
    if eval_rows == 0:
        return np.zeros(0, np.int64)
    if eval_rows >= data.rows:
        raise ValueError(f"data.eval_rows {eval_rows} leaves no training rows (the data has {data.rows})")
    ids = np.concatenate([pq.read_table(f, columns=[data.row_id]).column(0).to_numpy() for f in data.files])
    return np.sort(ids)[-eval_rows:]


def _rank_rows(batch: pa.Table, row_id: str, salt: int, held_out: np.ndarray) -> pa.Table:
    ids = batch.column(row_id).to_numpy()
    batch = batch.filter(pa.array(~np.isin(ids, held_out)))
    rank = splitmix64(batch.column(row_id).to_numpy(), salt)  # a full mix: neighbouring ids land far apart
    return batch.append_column("rank", pa.array(rank, pa.uint64()))
