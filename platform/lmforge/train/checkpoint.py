"""Checkpoints: DeepSpeed's own (model, optimizer, scheduler) plus where the run was in its data.

Every rank saves its shards into the same temporary directory name and reports it; Ray Train
merges them into one `checkpoint_*` directory and keeps the last K. A run restarted with the same
name gets it back from `ray.train.get_checkpoint()`. When the number of workers changed, the
checkpoint is first converted to DeepSpeed's universal format (rank shards merged per parameter),
which any world size can load.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import ray.train
import torch.distributed as dist

log = logging.getLogger(__name__)
STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    """Where the run is: optimizer steps done, the epoch, and rows of that epoch already consumed."""

    step: int = 0
    epoch: int = 0
    rows_in_epoch: int = 0
    world_size: int = 1

    @property
    def tag(self) -> str:
        return f"global_step{self.step}"


def save_checkpoint(engine, state: TrainerState, metrics: dict, rank: int) -> None:
    """All ranks: save DeepSpeed shards and the trainer state, and report them to Ray Train."""
    with tempfile.TemporaryDirectory(prefix="lmforge-ckpt-") as tmp:
        engine.save_checkpoint(tmp, tag=state.tag)
        if rank == 0:
            (Path(tmp) / STATE_FILE).write_text(json.dumps(asdict(state)))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def remove_unregistered_checkpoints(run_dir: str | Path, resumed_step: int) -> list[Path]:
    """Delete `checkpoint_*` dirs of `run_dir` saved after `resumed_step`; return them.

    Ray Train hands a (re)started run its newest registered checkpoint, so a newer one on disk was
    written by a worker group that died before Ray registered it: it would never be used nor rotated
    out by `keep_last`. Call on one rank before the first save; remote storage is left alone.
    """
    removed = []
    # is_dir: not Ray's snapshot
    for directory in sorted(d for d in Path(run_dir).glob("checkpoint_*") if d.is_dir()):
        state_file = directory / STATE_FILE
        step = json.loads(state_file.read_text())["step"] if state_file.is_file() else None
        if step is None or step > resumed_step:  # no state: rank 0's part never arrived
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    if removed:
        log.warning("removed checkpoints never registered by Ray Train (a worker died while saving): %s",
                    [d.name for d in removed])
    return removed


def read_state(directory: str | Path) -> TrainerState:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {directory} has no {STATE_FILE}; it was not written by lmforge")
    return TrainerState(**json.loads(path.read_text()))


def shard_count(directory: str | Path, tag: str) -> int:
    return len(list((Path(directory) / tag).glob("zero_pp_rank_*_mp_rank_*_model_states.pt")))


def universal_tag(directory: str | Path, state: TrainerState, world_size: int, local_rank: int) -> str | None:
    """The tag to load with `load_universal`, converting first, when the world size changed; else None."""
    if shard_count(directory, state.tag) == world_size:
        return None
    target = Path(directory) / f"{state.tag}_universal"
    if local_rank == 0 and not target.is_dir():
        # one converter per node; on shared storage the first to finish wins and the others drop their copy
        partial = target.with_name(f"{target.name}.partial-{socket.gethostname()}-{os.getpid()}")
        subprocess.run(
            [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
             "--input_folder", str(Path(directory) / state.tag), "--output_folder", str(partial),
             "--num_extract_workers", "1", "--num_merge_workers", "1"],
            check=True, capture_output=True,
        )
        try:
            partial.rename(target)
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()  # everyone waits for the conversion (one per node; the storage is shared)
    return target.name
