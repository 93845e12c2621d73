"""Reference log-probs computed once, on the data side: the reference model (normally the SFT model dir)
reads every prepared row of pairs and stores each sequence's summed answer log-prob as `ref_logps`.

    rows-00000.parquet ... (prepare-preference) -> Ray Data: one task per shard, on engine actors that load
    the model once -> the same forward and log-prob sum the trainer uses (lmforge.train.preference_step)
    -> rows-NNNNN.parquet + ref_logps, sha256 updated -> manifest outputs.reference

So `lmforge align` holds one model instead of two: no frozen copy of the reference under ZeRO-3, and no
second forward pass per step. The forward is the trainer's own (packed rows, restarting position ids, fp32
here), so precomputed and in-loop reference log-probs agree (tests/train/test_align.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data
import torch

from lmforge.config import ModelConfig, PreferenceDataConfig
from lmforge.manifest import Manifest
from lmforge.stage_outputs import PreferenceRows, outputs_of
from lmforge.train.batches import packed_row_inputs
from lmforge.train.model import build_model
from lmforge.train.preference import sequence_logps


class ReferenceScorer:
    """Ray Data actor: a shard file -> the same file with a `ref_logps` column (one float per sequence)."""

    def __init__(self, model_dir: str, vocab_size: int, sequence_length: int, pad_token_id: int,
                 batch_size: int):
        torch.set_num_threads(1)  # an actor per CPU; torch's own threads would fight over the same cores
        self.model = build_model(ModelConfig(path=model_dir), vocab_size, seed=0).eval()
        self.sequence_length, self.pad_token_id, self.batch_size = sequence_length, pad_token_id, batch_size

    def __call__(self, item: dict) -> dict:
        path = Path(item["file"])
        table = pq.read_table(path)
        scores = [self.score(table.slice(start, self.batch_size).to_pylist())
                  for start in range(0, table.num_rows, self.batch_size)]
        flat = [row for batch in scores for row in batch]
        table = table.append_column("ref_logps", pa.array(flat, pa.list_(pa.float64())))
        staged = path.with_name(path.name + ".partial")
        pq.write_table(table, staged, compression="zstd")
        staged.replace(path)
        return {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "sequences": sum(len(r) for r in flat)}

    @torch.no_grad()
    def score(self, rows: list[dict]) -> list[list[float]]:
        inputs, boundaries = packed_row_inputs(rows, self.sequence_length, self.pad_token_id,
                                               self.model.config.model_type)
        labels = inputs.pop("labels")
        sums = sequence_logps(self.model(**inputs).logits, labels, boundaries).sum.double().numpy()
        ends = np.cumsum([len(b) for b in boundaries])
        return [part.tolist() for part in np.split(sums, ends[:-1])]


def add_reference_logps(cfg: PreferenceDataConfig, out: Path) -> Manifest:
    """Score every shard in `out` with `cfg.reference.model_dir` and record it in out's manifest."""
    model_dir = Path(cfg.reference.model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"reference.model_dir {model_dir}: no config.json; give a converted model "
                                "dir (`lmforge convert` output, normally the SFT model)")
    manifest = Manifest.read(out)
    rows = outputs_of(manifest, PreferenceRows, out)
    tokenizer = rows.tokenizer
    scorer_args = (str(model_dir.resolve()), tokenizer.vocab_size, rows.row_length,
                   tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                   cfg.reference.batch_size)
    files = [{"file": str(out / shard["file"])} for shard in rows.shards]
    scored = ray.data.from_items(files).map(
        ReferenceScorer, fn_constructor_args=scorer_args, concurrency=cfg.reference.workers, num_cpus=1,
    ).take_all()
    by_file = {row["file"]: row for row in scored}
    shards = [{**shard, "sha256": by_file[shard["file"]]["sha256"]} for shard in rows.shards]
    reference = {"model_dir": str(model_dir.resolve()), "dtype": "fp32",
                 "sequences": sum(row["sequences"] for row in scored)}
    outputs = rows.model_copy(update={"shards": shards, "reference": reference,
                                      "columns": {**rows.columns, "ref_logps": "list<float64>"}})
    manifest = manifest.model_copy(update={"outputs": outputs.model_dump(by_alias=True)})
    manifest.write(out)
    return manifest
