"""`lmforge pretrain` / `lmforge sft`: check the data against the model, then run Ray Train.

    load the data manifest -> check vocab, sequence length, batch, precision -> plan steps
      -> TorchTrainer(train_loop, one dataset per epoch) -> manifest.json in the run directory

Everything that can be wrong with the inputs fails here, before any worker starts.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import asdict
from pathlib import Path

from ray.data import ExecutionOptions
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from lmforge.config import AlignTrainConfig, TrainConfig
from lmforge.manifest import Manifest
from lmforge.runtime import init_ray
from lmforge.stage_outputs import TrainingRun
from lmforge.train.data import (
    TrainData,
    epoch_order,
    eval_dataset,
    load_train_data,
    share_epoch_order,
    train_split,
    worker_epoch_dataset,
)
from lmforge.train.deepspeed_config import deepspeed_config
from lmforge.train.loop import train_loop
from lmforge.train.model import flops_per_token, max_positions, model_config
from lmforge.train.run_spec import write_run_spec

log = logging.getLogger(__name__)

_COMMANDS = {"pretrain": "pretrain", "sft": "sft", "preference": "align"}  # the stage that reads each kind


def run_pretrain(cfg: TrainConfig) -> Manifest:
    return run_training(cfg, expected_kind="pretrain")


def run_sft(cfg: TrainConfig) -> Manifest:
    return run_training(cfg, expected_kind="sft")


def run_align(cfg: AlignTrainConfig) -> Manifest:
    return run_training(cfg, expected_kind="preference")


def run_training(cfg: TrainConfig, expected_kind: str) -> Manifest:
    data = load_train_data(cfg.data.dir)
    if data.kind != expected_kind:
        command = _COMMANDS[expected_kind]
        raise ValueError(f"data.dir {cfg.data.dir} holds {data.kind} data; `lmforge {command}` "
                         f"needs the output of prepare-{expected_kind} (`lmforge {_COMMANDS[data.kind]}` "
                         "trains on this)")
    check_model_fits_data(cfg, data)
    if isinstance(cfg, AlignTrainConfig):
        check_preference_data(cfg, data)
    steps_per_epoch = (data.rows - cfg.data.eval_rows) // cfg.global_batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"data.dir {cfg.data.dir}: {data.rows - cfg.data.eval_rows} training rows are "
                         f"fewer than one global batch ({cfg.global_batch_size}); "
                         f"lower global_batch_size or add data")
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    deepspeed_config(cfg, on_gpu=cfg.use_gpu, total_steps=total_steps)  # refuses fp16 on CPU, bad raw keys

    init_ray(cfg.ray)
    run_dir = Path(cfg.storage_path).resolve() / cfg.run_name
    write_run_spec(run_dir, cfg, data)
    datasets = {}
    for epoch in range(epochs):
        order = share_epoch_order(epoch_order(data, epoch, cfg.seed, cfg.data.eval_rows))
        for rank in range(cfg.num_workers):
            datasets[train_split(epoch, rank)] = worker_epoch_dataset(
                data, order, rank, cfg.num_workers, cfg.micro_batch_size)
    if cfg.data.eval_rows:
        datasets["eval"] = eval_dataset(data, cfg.data.eval_rows)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "cfg": cfg.model_dump(), "data": asdict(data), "total_steps": total_steps, "epochs": epochs,
            "run_dir": str(run_dir),
            # here, not in the workers: there transformers would build even this meta-device copy under ZeRO-3
            "flops_per_token": flops_per_token(model_config(cfg.model, data.vocab_size),
                                               data.sequence_length),
            "peak_flops": (cfg.peak_tflops_per_worker * 1e12 * cfg.num_workers
                           if cfg.peak_tflops_per_worker else None),
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker}, placement_strategy=cfg.placement_strategy,
        ),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo",
                                 timeout_s=cfg.collective_timeout_s),
        run_config=RunConfig(
            name=cfg.run_name,
            storage_path=str(Path(cfg.storage_path).resolve()),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep_last),
        ),
        datasets=datasets,
        # each worker iterates only its own train_split, already in order (data.py): exact resume
        dataset_config=DataConfig(datasets_to_split=["eval"] if cfg.data.eval_rows else [],
                                  execution_options=ExecutionOptions(preserve_order=True)),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    manifest = Manifest(
        stage=f"{expected_kind}-train",  # pretrain-train, sft-train, preference-train
        config=cfg.model_dump(),
        inputs=[{"data_dir": str(Path(cfg.data.dir).resolve()), "rows": data.rows, "kind": data.kind}],
        outputs=TrainingRun(
            run_dir=str(run_dir),
            checkpoint=result.checkpoint.path if result.checkpoint else None,
            steps=total_steps,
            metrics={k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))},
            metrics_file=str(run_dir / "metrics.jsonl"),
            loss_plot=str(run_dir / "loss.png"),
            tokenizer_dir=data.tokenizer_dir,
            chat_template=data.chat_template,
            eos_token_id=data.eos_token_id,
        ).model_dump(),
    )
    manifest.write(run_dir)
    return manifest


def check_preference_data(cfg: AlignTrainConfig, data: TrainData) -> None:
    """The loss fits the data (KTO needs unpaired data, the others pairs) and its reference is there."""
    loss = cfg.preference.loss
    if (loss == "kto") == data.paired:
        needs, has = ("KTO samples (kto records)", "pairs") if loss == "kto" else ("pairs", "KTO samples")
        raise ValueError(f"data.dir {cfg.data.dir} holds {has}; preference.loss {loss} needs {needs}")
    if cfg.reference == "precomputed" and cfg.preference.needs_reference and not data.reference_logps:
        raise ValueError(f"data.dir {cfg.data.dir} has no precomputed reference log-probs (ref_logps); set "
                         "reference.model_dir in prepare-preference's config and rerun it, or set "
                         "reference: in_loop (or auto)")


def check_model_fits_data(cfg: TrainConfig, data: TrainData) -> None:
    """Vocabulary, tokenizer and sequence length agree, or an error says which and what to do."""
    config = model_config(cfg.model, data.vocab_size)
    limit = max_positions(config)
    # position ids restart at every packed sample; a preference row holds whole pairs of two sequences
    longest = data.sequence_length // 2 if data.kind == "preference" else data.sequence_length
    if limit is not None and longest > limit:
        raise ValueError(f"data.dir {cfg.data.dir}: sequences of {longest} tokens exceed the "
                         f"model's max_position_embeddings {limit}; set model.config.max_position_embeddings "
                         "(and RoPE scaling) or prepare shorter blocks")
    if cfg.model.path:
        model_tokenizer = Path(cfg.model.path) / "tokenizer.json"
        data_tokenizer = Path(data.tokenizer_dir) / "tokenizer.json"
        if (model_tokenizer.is_file() and data_tokenizer.is_file()
                and _sha(model_tokenizer) != _sha(data_tokenizer)):
            raise ValueError(f"data.dir {cfg.data.dir} was tokenized with {data.tokenizer_dir}, "
                             f"which differs from the tokenizer in model.path {cfg.model.path}; "
                             f"prepare the data with the model's tokenizer")
        if config.vocab_size < data.vocab_size:
            log.warning("model vocab %d < tokenizer vocab %d: embeddings are resized", config.vocab_size,
                        data.vocab_size)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()

