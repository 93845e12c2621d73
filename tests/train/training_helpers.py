"""Training-run helpers shared by the training tests and the multi-node tests: the tiny run's config,
and reading what a run left on disk (metrics, checkpoints, weights)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmforge.config import TrainConfig
from lmforge.train.checkpoint import read_state
from lmforge.train.model import TINY_CONFIGS


def train_config(storage: Path, name: str, data_dir: Path, architecture: str = "llama",
                 **fields) -> TrainConfig:
    """fp32 (resume must be exact), 2 workers x micro batch 2 x accumulation 2 = global batch 8."""
    return TrainConfig.model_validate({
        "run_name": name, "storage_path": str(storage),
        "model": {"architecture": architecture, "config": TINY_CONFIGS[architecture]},
        "data": {"dir": str(data_dir), "eval_rows": 8},
        "zero": {"stage": 3, "precision": "fp32"},
        "optim": {"lr": 3e-3},
        "num_workers": 2, "global_batch_size": 8, "micro_batch_size": 2, "max_steps": 24,
        "checkpoint": {"every_steps": 12, "keep_last": 2},  # each save waits ~2 s for Ray's controller
        **fields,
    })


def metrics(cfg: TrainConfig) -> list[dict]:
    lines = (Path(cfg.storage_path) / cfg.run_name / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def checkpoints(cfg: TrainConfig) -> dict[int, Path]:
    """Step -> checkpoint directory, for the checkpoints Ray Train kept."""
    found = {}
    for directory in (Path(cfg.storage_path) / cfg.run_name).glob("checkpoint_*"):
        if (directory / "trainer_state.json").is_file():
            found[read_state(directory).step] = directory
    return found


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint))


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max(float((a[name] - b[name]).abs().max()) for name in a)


def registered_checkpoint_step(run_dir: Path) -> int | None:
    """Step of the newest checkpoint Ray Train has registered (a restart resumes from it),
    from its snapshot."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or being written
        return None
    steps = [result["metrics"]["step"] for result in snapshot["checkpoint_results"]]
    return max(steps, default=None)


def last_logged_step(run_dir: Path) -> int:
    lines = (
        (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").is_file() else []
    )
    return json.loads(lines[-1])["step"] if lines else 0
