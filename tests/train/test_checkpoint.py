"""Checkpoint bookkeeping that needs no training run: which checkpoint directories are orphans."""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.train.checkpoint import STATE_FILE, remove_unregistered_checkpoints


def _checkpoint(run_dir: Path, name: str, step: int | None) -> Path:
    directory = run_dir / name
    (directory / f"global_step{step}").mkdir(parents=True)
    if step is not None:
        (directory / STATE_FILE).write_text(json.dumps({"step": step, "epoch": 0, "rows_in_epoch": 0,
                                                        "world_size": 2}))
    return directory


def test_checkpoints_newer_than_the_resumed_one_are_removed_and_older_ones_kept(tmp_path):
    kept = [_checkpoint(tmp_path, "checkpoint_2026-01-01_00-00-01.000", 6),
            _checkpoint(tmp_path, "checkpoint_2026-01-01_00-00-02.000", 12)]
    orphan = _checkpoint(tmp_path, "checkpoint_2026-01-01_00-00-03.000", 18)
    removed = remove_unregistered_checkpoints(tmp_path, resumed_step=12)
    assert removed == [orphan] and not orphan.exists() and all(d.is_dir() for d in kept)


def test_a_checkpoint_without_the_trainer_state_is_removed(tmp_path):
    partial = _checkpoint(tmp_path, "checkpoint_2026-01-01_00-00-01.000", None)
    assert remove_unregistered_checkpoints(tmp_path, resumed_step=0) == [partial]


def test_files_beside_the_checkpoints_are_left_alone(tmp_path):
    for name in ("metrics.jsonl", "checkpoint_manager_snapshot.json"):  # the second is Ray Train's own
        (tmp_path / name).write_text("{}")
    assert remove_unregistered_checkpoints(tmp_path, resumed_step=0) == []
    assert (tmp_path / "checkpoint_manager_snapshot.json").is_file()
