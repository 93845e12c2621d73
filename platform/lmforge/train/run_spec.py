"""`run.json` in a training run's directory: what its checkpoints hold (model, LoRA, vocabulary, tokenizer,
chat template), written by `lmforge pretrain/sft/align` and read by `lmforge convert`, both through this
module."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from lmforge.config import AlignTrainConfig, TrainConfig
from lmforge.train.data import TrainData

RUN_SPEC = "run.json"


def write_run_spec(run_dir: Path, cfg: TrainConfig, data: TrainData) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = {"config": cfg.model_dump(), "data": asdict(data)}
    (run_dir / RUN_SPEC).write_text(json.dumps(spec, ensure_ascii=False, indent=2))


def read_run_spec(run_dir: Path) -> tuple[TrainConfig, TrainData]:
    """The run's TrainConfig and TrainData; FileNotFoundError / ValueError saying what to give instead."""
    path = run_dir / RUN_SPEC
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found. convert reads the model, LoRA and tokenizer settings "
                                "that `lmforge pretrain/sft` writes there; "
                                "give a checkpoint of an lmforge run (or its run dir)")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        data = TrainData(**spec["data"])
        config = AlignTrainConfig if data.kind == "preference" else TrainConfig
        return config.model_validate(spec["config"]), data
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a run spec this lmforge version reads ({exc})") from None
