"""The training loop each Ray Train worker runs: build -> resume -> train -> evaluate -> checkpoint.

Ray Train has already created the process group (gloo on CPU, nccl on GPU); DeepSpeed reuses it.
Workers read the prepared rows with `ray.train.get_dataset_shard` and never tokenize. One optimizer
step consumes `global_batch_size` rows across all workers: the next rows of the epoch's fixed order,

    epoch order   r0 r1 r2 r3 | r4 r5 r6 r7 | ...     batches of world * micro_batch_size rows
    rank 0        r0 r1       | r4 r5       | ...     (world 2, micro batch 2, accumulation 2:
    rank 1              r2 r3 |       r6 r7 | ...      one optimizer step = r0 .. r7)

each rank reading its own column of that picture (data.worker_epoch_dataset), so any run, on any
number of workers, continues from the same row after `rows_in_epoch`.
"""

from __future__ import annotations

import math
import resource
import time

import numpy as np
import ray.train
import torch
import torch.distributed as dist

from lmforge.config import AlignTrainConfig, TrainConfig
from lmforge.train.batches import IGNORE_INDEX, model_inputs, packed_row_inputs, pretrain_batch, rows_of
from lmforge.train.checkpoint import (
    TrainerState,
    read_state,
    remove_unregistered_checkpoints,
    save_checkpoint,
    universal_tag,
)
from lmforge.train.data import TrainData, train_split
from lmforge.train.deepspeed_config import deepspeed_config, fused_adamw, patch_deepspeed_for_cpu
from lmforge.train.metrics import MetricsLog, model_flops_utilisation
from lmforge.train.model import apply_lora, build_model
from lmforge.train.preference_step import (
    Reference,
    build_reference,
    preference_micro_batch,
    reference_kind,
    statistics_means,
)


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf; the message names the step and the last good checkpoint."""


def train_loop(config: dict) -> None:
    """Ray Train entry point; `config` holds the TrainConfig, the TrainData and the step plan."""
    data = TrainData(**config["data"])
    cfg = (AlignTrainConfig if data.kind == "preference" else TrainConfig).model_validate(config["cfg"])
    total_steps = config["total_steps"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()

    patch_deepspeed_for_cpu()
    engine, state, reference = start_engine(cfg, data, total_steps, context)
    model = engine.module
    if rank == 0:
        remove_unregistered_checkpoints(config["run_dir"], state.step)

    log = MetricsLog(config["run_dir"], enabled=rank == 0, total_steps=total_steps)
    flops = config["flops_per_token"]
    last_saved = state.step
    step_started, step_losses, step_tokens, step_stats = time.perf_counter(), [], 0, []
    for epoch in range(state.epoch, config["epochs"]):
        rows_done = state.rows_in_epoch if epoch == state.epoch else 0
        # Each rank reads its own dataset of the epoch, already ordered and holding only whole global
        # batches (data.py), so any run on any number of workers continues from the same row.
        batches = ray.train.get_dataset_shard(train_split(epoch, rank)).iter_batches(
            batch_size=cfg.micro_batch_size, batch_format="numpy", drop_last=True
        )
        skip = rows_done // (world * cfg.micro_batch_size)  # the data position of a resumed run
        for index, batch in enumerate(batches):
            if index < skip:
                continue
            if engine.global_steps >= total_steps:
                break
            if data.kind == "preference":
                loss, stats, tokens = preference_micro_batch(engine, reference, batch, data, cfg,
                                                             model.config.model_type)
                step_stats.append(stats)
            else:
                inputs = _to_inputs(batch, data, model.config.model_type)
                loss = engine(**inputs).loss
                tokens = int((inputs["labels"] != IGNORE_INDEX).sum())
            engine.backward(loss)
            engine.step()
            step_losses.append(loss.detach().float())
            step_tokens += tokens
            if len(step_losses) < cfg.gradient_accumulation_steps:
                continue
            step = engine.global_steps
            mean_loss = _all_mean(torch.stack(step_losses).mean())
            if not math.isfinite(mean_loss):
                raise NonFiniteLoss(f"loss is {mean_loss} at step {step}; the last good checkpoint is step "
                                    f"{last_saved} of run {cfg.run_name} in {cfg.storage_path}")
            state = TrainerState(step, epoch, (index + 1) * world * cfg.micro_batch_size, world)
            metrics = {}
            if step % cfg.log_every == 0 or step == total_steps:
                elapsed = time.perf_counter() - step_started
                tokens_per_s = _all_sum(step_tokens) / elapsed
                metrics = {"loss": mean_loss, "lr": engine.get_lr()[0], "epoch": epoch,
                           "grad_norm": float(engine.get_global_grad_norm() or 0.0),
                           "tokens_per_s": tokens_per_s, "samples_per_s": cfg.global_batch_size / elapsed,
                           "model_tflops": tokens_per_s * flops / 1e12,
                           # ru_maxrss is in KiB on Linux; the largest worker is the one that runs out first
                           "peak_rss_mb": _all_max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
                mfu = model_flops_utilisation(tokens_per_s, flops, config.get("peak_flops"))
                if mfu is not None:
                    metrics["mfu"] = mfu
                if step_stats:
                    metrics.update(statistics_means(step_stats))
            if cfg.eval_every and step % cfg.eval_every == 0 or step == total_steps:
                metrics.update(evaluate(engine, data, cfg, reference))
            if metrics:
                log.write(step, metrics)
            stop = step == total_steps or step == cfg.stop_after_step
            # Metrics reach Ray only with checkpoints: each ray.train.report waits for the controller's
            # poll (2 s), which per step would cost more than the step itself; metrics.jsonl has them all.
            if step % cfg.checkpoint.every_steps == 0 or stop:
                save_checkpoint(engine, state, {"step": step, **metrics}, rank)
                last_saved = step
            step_started, step_losses, step_tokens, step_stats = time.perf_counter(), [], 0, []
            if stop:
                log.close()
                return
    if engine.global_steps > last_saved:  # data ran out before max_steps
        save_checkpoint(engine, state, {"step": engine.global_steps}, rank)
    log.close()


def start_engine(cfg: TrainConfig, data: TrainData, total_steps: int, context) -> tuple:
    """The DeepSpeed engine, the run's position (fresh, or loaded from the checkpoint Ray Train hands back)
    and, for align, where its reference log-probs come from."""
    ds_config = deepspeed_config(cfg, on_gpu=cfg.use_gpu, total_steps=total_steps)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        engine = build_engine(cfg, data, ds_config)
        if engine.lr_scheduler is not None:
            engine.lr_scheduler.step(0)  # DeepSpeed's first step would otherwise run at the pre-warmup lr (0)
        return engine, TrainerState(world_size=context.get_world_size()), _reference(cfg, data, ds_config)
    # On shared disk this is the stored checkpoint itself; from remote storage a local copy, removed on exit.
    with checkpoint.as_directory() as resume_dir:
        state = read_state(resume_dir)
        tag = universal_tag(resume_dir, state, context.get_world_size(), context.get_local_rank())
        if tag:
            ds_config["checkpoint"] = {"load_universal": True}
        engine = build_engine(cfg, data, ds_config)
        engine.load_checkpoint(resume_dir, tag=tag or state.tag)
    # the frozen reference is the starting model again, never the checkpoint: it is not trained
    return engine, state, _reference(cfg, data, ds_config)


def _reference(cfg: TrainConfig, data: TrainData, ds_config: dict) -> Reference | None:
    if not isinstance(cfg, AlignTrainConfig):
        return None
    return build_reference(reference_kind(cfg, data), cfg, data, ds_config)


def build_engine(cfg: TrainConfig, data: TrainData, ds_config: dict):
    """The model (from `cfg.model`, + LoRA) wrapped by `deepspeed.initialize` with `ds_config`."""
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    # Under ZeRO-3 transformers builds or loads the model inside deepspeed.zero.Init, so a worker only
    # ever holds its partition: built whole, a 7B model takes 28 GB of RAM in each of a node's 8 workers.
    # transformers finds this object through a weak reference: it must outlive the engine.
    # DeepSpeed takes over Ray Train's process group first:
    # its config checks the batch against the world size.
    deepspeed.init_distributed(dist_backend="nccl" if cfg.use_gpu else "gloo")
    hf_deepspeed_config = (
        HfDeepSpeedConfig(ds_config) if ds_config["zero_optimization"]["stage"] == 3 else None
    )
    model = build_model(cfg.model, data.vocab_size, cfg.seed)
    if cfg.lora.enabled:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)  # the adapters start alike on every run, as the base weights do
            model = apply_lora(model, cfg.lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer, ds_config = fused_adamw(ds_config, trainable)
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=trainable, optimizer=optimizer, config=ds_config
    )
    engine.hf_deepspeed_config = hf_deepspeed_config
    return engine


def evaluate(engine, data: TrainData, cfg: TrainConfig, reference: Reference | None) -> dict[str, float]:
    """Token-weighted eval loss over every worker's share of the held-out rows, and its perplexity;
    align: the preference loss and rewards over the held-out pairs."""
    if not cfg.data.eval_rows:
        return {}
    engine.eval()
    if data.kind == "preference":
        losses, stats = [], []
        with torch.no_grad():
            for batch in ray.train.get_dataset_shard("eval").iter_batches(batch_size=cfg.micro_batch_size,
                                                                          batch_format="numpy"):
                loss, sums, _ = preference_micro_batch(engine, reference, batch, data, cfg,
                                                       engine.module.config.model_type, all_ranks=False)
                losses.append(float(loss))
                stats.append(sums)
        engine.train()
        means = {f"eval_{name}": value for name, value in statistics_means(stats).items()}
        return {"eval_loss": _all_sum(sum(losses)) / max(_all_sum(len(losses)), 1.0), **means}
    total_loss, total_tokens = torch.zeros(()), torch.zeros(())
    with torch.no_grad():
        for batch in ray.train.get_dataset_shard("eval").iter_batches(
            batch_size=cfg.micro_batch_size, batch_format="numpy"
        ):
            inputs = _to_inputs(batch, data, engine.module.config.model_type)
            tokens = (inputs["labels"][:, 1:] != IGNORE_INDEX).sum()
            total_loss += engine(**inputs).loss.float() * tokens
            total_tokens += tokens
    engine.train()
    loss = _all_sum(total_loss) / max(_all_sum(total_tokens), 1.0)
    return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0))}


def _to_inputs(batch: dict[str, np.ndarray], data: TrainData, model_type: str) -> dict:
    if data.kind == "pretrain":
        tensors = pretrain_batch(batch["input_ids"], batch["doc_lens"])
        return model_inputs(model_type, tensors, batch["doc_lens"])
    inputs, _ = packed_row_inputs(rows_of(batch), data.sequence_length, data.pad_token_id, model_type)
    return inputs


def _all_mean(value: torch.Tensor) -> float:
    return _all_sum(value) / (dist.get_world_size() if dist.is_initialized() else 1)


def _all_sum(value) -> float:
    tensor = torch.as_tensor(value, dtype=torch.float64).clone()
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return float(tensor)


def _all_max(value: float) -> float:
    tensor = torch.tensor(value, dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor)
