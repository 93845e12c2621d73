"""Training end to end: real Ray Train + DeepSpeed ZeRO-3 on CPU (gloo), tiny models, prepared data.

A TorchTrainer.fit costs 30-40 s here, so runs are module fixtures shared by the tests that read them:

    pretrain   llama, 24 steps: loss, metrics, checkpoint; the uninterrupted run the others must equal
    resumed    the same run stopped at step 12 on 2 workers, rerun on 1 worker (universal checkpoint)
    killed     the same run with a training worker SIGKILLed mid-run (Ray restarts it from a checkpoint)
    sft        bloom, full SFT;   lora / lora_resumed   qwen2 LoRA, uninterrupted / stopped at 8 and rerun
"""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import pydantic
import pytest
import ray.data
import torch
import torch.nn.functional as F
from training_helpers import (
    checkpoints,
    last_logged_step,
    max_difference,
    metrics,
    registered_checkpoint_step,
    train_config,
    weights,
)

from lmforge.config import TrainConfig
from lmforge.manifest import Manifest
from lmforge.train.checkpoint import shard_count
from lmforge.train.data import load_train_data
from lmforge.train.model import TINY_CONFIGS, build_model
from lmforge.train.run import run_pretrain, run_sft

METRICS = ("loss", "lr", "grad_norm", "tokens_per_s", "peak_rss_mb", "eval_loss")


def _falls(losses: list[float], by: float) -> bool:
    return np.mean(losses[-3:]) < np.mean(losses[:3]) - by


@pytest.fixture(scope="module")
def many_blocks(pretrain_data, sft_data):  # noqa: ARG001 - prepared before blocks shrink
    """Ray Data blocks of at most 64 KB while training: the rows arrive in many blocks, as a real corpus does.

    The samples here would otherwise be one block each, which hides anything that depends on where
    block boundaries fall (Ray's sort samples its boundaries at random).
    """
    context = ray.data.DataContext.get_current()
    saved = context.target_max_block_size, context.target_min_block_size
    context.target_max_block_size, context.target_min_block_size = 64 * 1024, 1024
    yield
    context.target_max_block_size, context.target_min_block_size = saved


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def pretrain(many_blocks, storage, pretrain_data) -> TrainConfig:  # noqa: ARG001 - for small blocks
    cfg = train_config(storage, "pretrain", pretrain_data)
    run_pretrain(cfg)
    return cfg


@pytest.fixture(scope="module")
def resumed(many_blocks, storage, pretrain_data) -> dict:  # noqa: ARG001 - for small blocks
    """The pretrain run stopped at step 12 on 2 workers, then rerun on 1 worker to step 24."""
    cfg = train_config(storage, "resumed", pretrain_data, stop_after_step=12)
    run_pretrain(cfg)
    logged_on_two_workers = len(metrics(cfg))
    # micro batch 2, accumulation 4
    run_pretrain(train_config(storage, "resumed", pretrain_data, num_workers=1))
    return {"cfg": cfg, "one_worker_metrics": metrics(cfg)[logged_on_two_workers:]}


@pytest.fixture(scope="module")
def killed(many_blocks, storage, pretrain_data) -> dict:  # noqa: ARG001 - for small blocks
    """The pretrain run in a thread; once Ray Train has registered a checkpoint and the run has gone past
    it, one of its worker processes (found among this process's descendants: the session's own Ray) is
    SIGKILLed."""
    cfg = train_config(
        storage, "killed", pretrain_data, checkpoint={"every_steps": 6, "keep_last": 2}, max_failures=2
    )
    run_dir = Path(cfg.storage_path) / cfg.run_name
    started, pool = time.time(), ThreadPoolExecutor(1)
    run = pool.submit(run_pretrain, cfg)
    pid = registered = None
    deadline = time.monotonic() + 300
    while pid is None and not run.done() and time.monotonic() < deadline:
        time.sleep(0.1)
        registered, workers = registered_checkpoint_step(run_dir), _train_worker_pids(since=started)
        if registered and workers and last_logged_step(run_dir) > registered:
            pid = workers[-1]
            os.kill(pid, signal.SIGKILL)
    pool.shutdown(wait=False)
    return {"cfg": cfg, "pid": pid, "registered": registered, "manifest": run.result(timeout=300)}


def _train_worker_pids(since: float) -> list[int]:
    pids = []
    for process in psutil.Process().children(recursive=True):
        try:
            if ("RayTrainWorker" in " ".join(process.cmdline()) and process.create_time() >= since
                    and process.status() != psutil.STATUS_ZOMBIE):
                pids.append(process.pid)
        except psutil.Error:  # exited meanwhile
            continue
    return pids


@pytest.fixture(scope="module")
def sft(many_blocks, storage, sft_data) -> TrainConfig:  # noqa: ARG001 - for small blocks
    cfg = train_config(
        storage, "sft", sft_data, architecture="bloom", max_steps=16, checkpoint={"every_steps": 16}
    )
    run_sft(cfg)
    return cfg


def _loratrain_config(storage: Path, name: str, sft_data: Path, **fields) -> TrainConfig:
    """Adapters on every projection of a random qwen2 whose weights are drawn 10x wider than usual: with
    the usual 0.02 its frozen head gives near-uniform logits whatever the adapters do, unlike a trained
    model's."""
    return train_config(
        storage,
        name,
        sft_data,
        architecture="qwen2",
        max_steps=16,
        optim={"lr": 3e-2},
        checkpoint={"every_steps": 16},
        model={"architecture": "qwen2", "config": {**TINY_CONFIGS["qwen2"], "initializer_range": 0.2}},
        lora={
            "enabled": True,
            "r": 8,
            "alpha": 16,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        },
        **fields,
    )


@pytest.fixture(scope="module")
def lora(many_blocks, storage, sft_data) -> TrainConfig:  # noqa: ARG001 - for small blocks
    cfg = _loratrain_config(storage, "lora", sft_data)
    run_sft(cfg)
    return cfg


@pytest.fixture(scope="module")
def lora_resumed(many_blocks, storage, sft_data) -> TrainConfig:  # noqa: ARG001 - for small blocks
    run_sft(_loratrain_config(storage, "lora-resumed", sft_data, stop_after_step=8))
    cfg = _loratrain_config(storage, "lora-resumed", sft_data)
    run_sft(cfg)
    return cfg


def test_pretraining_loss_falls(pretrain):
    losses = [row["loss"] for row in metrics(pretrain)]
    assert len(losses) == 24
    assert _falls(losses, by=0.5), losses


def test_every_step_logs_loss_lr_grad_norm_throughput_and_the_run_ends_with_eval_and_a_loss_plot(pretrain):
    rows = metrics(pretrain)
    assert [row["step"] for row in rows] == list(range(1, 25))
    assert all(set(METRICS) - {"eval_loss"} <= set(row) for row in rows)
    assert "eval_loss" in rows[-1] and np.isfinite(rows[-1]["eval_loss"])
    assert all(row["tokens_per_s"] > 0 and row["grad_norm"] > 0 for row in rows)
    peaks = [row["peak_rss_mb"] for row in rows]  # a worker holding torch + Ray is well past 100 MB
    assert peaks == sorted(peaks) and peaks[0] > 100
    assert (Path(pretrain.storage_path) / pretrain.run_name / "loss.png").stat().st_size > 0


def test_the_checkpoint_holds_every_model_parameter(pretrain, pretrain_data):
    saved = checkpoints(pretrain)
    assert sorted(saved) == [12, 24]
    final = weights(saved[24])
    model = build_model(pretrain.model, load_train_data(str(pretrain_data)).vocab_size, seed=0)
    expected = {name: p.shape for name, p in model.named_parameters()}
    assert {name: final[name].shape for name in expected} == expected
    assert all(t.dtype == torch.float32 for t in final.values())


def test_a_run_stopped_on_two_workers_continues_on_one_from_the_checkpoint_step(resumed):
    assert [row["step"] for row in resumed["one_worker_metrics"]] == list(range(13, 25))
    final = checkpoints(resumed["cfg"])[24]
    assert shard_count(final, "global_step24") == 1  # one worker, which loaded the 2 workers' shards


def test_a_stopped_run_rerun_on_one_worker_reaches_the_weights_of_the_uninterrupted_run(pretrain, resumed):
    """Same rows in the same order, same lr schedule, same optimizer state: as if nothing had happened."""
    final = checkpoints(resumed["cfg"])[24]
    assert max_difference(weights(final), weights(checkpoints(pretrain)[24])) <= 1e-5


def test_a_killed_worker_is_replaced_and_the_run_completes_from_its_last_checkpoint(killed):
    assert killed["pid"] is not None, "the run ended before a worker could be killed"
    assert isinstance(killed["manifest"], Manifest)
    steps = [row["step"] for row in metrics(killed["cfg"])]
    assert set(steps) == set(range(1, 25)) and steps[-1] == 24
    restart = next(i for i in range(1, len(steps)) if steps[i] <= steps[i - 1])
    # not from step 1: from the checkpoint registered before the kill
    assert steps[restart] >= killed["registered"] + 1


def test_a_run_restarted_after_a_killed_worker_reaches_the_weights_of_the_uninterrupted_run(pretrain, killed):
    final = checkpoints(killed["cfg"])[24]
    assert max_difference(weights(final), weights(checkpoints(pretrain)[24])) <= 1e-5


def test_after_a_killed_worker_only_checkpoints_ray_registered_stay_on_disk(killed):
    run_dir = Path(killed["cfg"].storage_path) / killed["cfg"].run_name
    snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    registered = {result["checkpoint_dir_name"] for result in snapshot["checkpoint_results"]}
    assert {d.name for d in run_dir.glob("checkpoint_*") if d.is_dir()} == registered


def test_full_sft_loss_falls(sft):
    losses = [row["loss"] for row in metrics(sft)]
    assert len(losses) == 16
    assert _falls(losses, by=0.5), losses


def _held_out_rows(data_dir: Path, count: int) -> list[dict]:
    rows = [row for f in sorted(data_dir.glob("rows-*.parquet")) for row in pq.read_table(f).to_pylist()]
    return sorted(rows, key=lambda row: row["row"])[-count:]


def test_sft_eval_loss_is_the_cross_entropy_of_assistant_tokens_only(sft, sft_data):
    """The run's eval loss equals the mean cross-entropy over the labelled (assistant) tokens of the held-out
    samples, each run alone through the final weights; counting prompt tokens too gives another number."""
    model = build_model(sft.model, load_train_data(str(sft_data)).vocab_size, seed=0)
    model.load_state_dict(weights(checkpoints(sft)[16]))
    model.eval()
    assistant, everything = [], []
    for row in _held_out_rows(sft_data, sft.data.eval_rows):
        start = 0
        for length in row["boundaries"]:
            ids = torch.tensor(row["input_ids"][start:start + length])
            labels = torch.tensor(row["labels"][start:start + length])
            start += length
            with torch.no_grad():
                logits = model(input_ids=ids[None]).logits[0, :-1]
            losses = F.cross_entropy(logits, ids[1:], reduction="none")
            assistant.append(losses[labels[1:] != -100])
            everything.append(losses)
    assert 0 < sum(len(t) for t in assistant) < 0.9 * sum(len(t) for t in everything)
    eval_loss = metrics(sft)[-1]["eval_loss"]
    assert eval_loss == pytest.approx(float(torch.cat(assistant).mean()), rel=1e-4)
    assert eval_loss != pytest.approx(float(torch.cat(everything).mean()), rel=1e-3)


def test_lora_sft_on_qwen2_trains_the_adapters(lora):
    losses = [row["loss"] for row in metrics(lora)]
    assert len(losses) == 16
    assert _falls(losses, by=0.5), losses
    final = weights(checkpoints(lora)[16])
    assert any("lora_A" in name for name in final) and any("lora_B" in name for name in final)


def test_a_stopped_lora_run_rerun_reaches_the_weights_of_the_uninterrupted_run(lora, lora_resumed):
    assert [row["step"] for row in metrics(lora_resumed)] == list(range(1, 17))
    assert max_difference(weights(checkpoints(lora_resumed)[16]), weights(checkpoints(lora)[16])) <= 1e-5


@pytest.mark.usefixtures("ray_local")
def test_blocks_longer_than_the_models_positions_are_refused_before_training(pretrain_data, tmp_path):
    cfg = train_config(tmp_path, "long", pretrain_data, model={
        "architecture": "llama", "config": {**TINY_CONFIGS["llama"], "max_position_embeddings": 64}})
    with pytest.raises(
        ValueError, match="sequences of 128 tokens exceed the model's max_position_embeddings 64"
    ):
        run_pretrain(cfg)
    assert not (tmp_path / "long").exists()


@pytest.mark.usefixtures("ray_local")
def test_fp16_on_cpu_is_refused_before_training(pretrain_data, tmp_path):
    cfg = train_config(tmp_path, "fp16", pretrain_data, zero={"precision": "fp16"})
    with pytest.raises(ValueError, match="fp16 is not supported on CPU"):
        run_pretrain(cfg)
    assert not (tmp_path / "fp16").exists()


@pytest.mark.usefixtures("ray_local")
def test_pretraining_data_given_to_sft_is_refused_naming_the_stage_it_needs(pretrain_data, tmp_path):
    with pytest.raises(
        ValueError, match="holds pretrain data; `lmforge sft` needs the output of prepare-sft"
    ):
        run_sft(train_config(tmp_path, "wrong-kind", pretrain_data))
    assert not (tmp_path / "wrong-kind").exists()


@pytest.mark.usefixtures("ray_local")
def test_a_data_dir_without_prepared_data_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no manifest; run the stage that produces"):
        run_pretrain(train_config(tmp_path, "empty-data", empty))
    assert not (tmp_path / "empty-data").exists()


def test_a_global_batch_the_workers_cannot_share_is_refused():
    with pytest.raises(
        pydantic.ValidationError, match="global_batch_size 6 must be a multiple of micro_batch_size"
    ):
        train_config(Path("/unused"), "odd", Path("/unused"), global_batch_size=6)

