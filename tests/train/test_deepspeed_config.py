"""DeepSpeed config from TrainConfig: mapping, schedules, validation, and one real ZeRO-3 engine on CPU."""

import sys
import time

import pytest
import torch
import torch.distributed as dist

from lmforge.config import ModelConfig, TrainConfig
from lmforge.train.batches import model_inputs, pretrain_batch
from lmforge.train.deepspeed_config import deepspeed_config, fused_adamw, patch_deepspeed_for_cpu
from lmforge.train.model import TINY_CONFIGS, build_model


def _cfg(**fields) -> TrainConfig:
    base = {"run_name": "r", "storage_path": "/tmp/runs", "model": {"architecture": "llama"},
            "data": {"dir": "/tmp/data"}}
    return TrainConfig.model_validate({**base, **fields})


def test_default_config_is_zero3_bf16_with_uncompiled_adamw_and_cosine():
    ds = deepspeed_config(_cfg(), on_gpu=False, total_steps=100)
    assert ds["zero_optimization"] == {"stage": 3, "overlap_comm": False,
                                       "stage3_gather_16bit_weights_on_model_save": True}
    assert ds["bf16"] == {"enabled": True} and "fp16" not in ds
    assert ds["optimizer"] == {"type": "AdamW", "params": {
        "lr": 3e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.0, "torch_adam": True}}
    assert ds["scheduler"]["type"] == "WarmupCosineLR"
    assert ds["gradient_clipping"] == 1.0 and ds["wall_clock_breakdown"] is False


def test_batch_arithmetic_follows_global_and_micro_batch_and_workers():
    ds = deepspeed_config(_cfg(global_batch_size=16, micro_batch_size=2, num_workers=2), False, 10)
    assert (
        ds["train_batch_size"],
        ds["train_micro_batch_size_per_gpu"],
        ds["gradient_accumulation_steps"],
    ) == (16, 2, 4)
    with pytest.raises(
        ValueError, match=r"train_batch_size 16 != micro batch 4 \* accumulation 4 \* 2 workers"
    ):
        deepspeed_config(_cfg(global_batch_size=16, micro_batch_size=2, num_workers=2,
                              zero={"extra": {"train_micro_batch_size_per_gpu": 4}}), False, 10)


@pytest.mark.parametrize(("zero", "on_gpu", "expected"), [
    ({"stage": 0}, False, {"stage": 0}),
    ({"stage": 2, "offload_optimizer": True}, False,
     {"stage": 2, "overlap_comm": False, "offload_optimizer": {"device": "cpu", "pin_memory": False}}),
    ({"stage": 3, "offload_optimizer": True, "offload_params": True}, True,
     {"stage": 3, "overlap_comm": True, "offload_optimizer": {"device": "cpu", "pin_memory": True},
      "stage3_gather_16bit_weights_on_model_save": True,
      "offload_param": {"device": "cpu", "pin_memory": True}}),
])
def test_stage_and_offload_map_to_zero_optimization(zero, on_gpu, expected):
    ds = deepspeed_config(_cfg(zero=zero), on_gpu, 10)
    assert ds["zero_optimization"] == expected
    # offloaded optimizer state means DeepSpeedCPUAdam, which DeepSpeed picks when torch_adam is absent
    assert ("torch_adam" in ds["optimizer"]["params"]) != zero.get("offload_optimizer", False)


@pytest.mark.parametrize(("precision", "on_gpu", "section"), [("fp32", False, None), ("bf16", False, "bf16"),
                                                                ("fp16", True, "fp16")])
def test_precision_maps_to_its_section(precision, on_gpu, section):
    ds = deepspeed_config(_cfg(zero={"precision": precision}), on_gpu, 10)
    assert [key for key in ("bf16", "fp16") if key in ds] == ([section] if section else [])


@pytest.mark.parametrize(
    "zero", [{"precision": "fp16"}, {"precision": "fp32", "extra": {"fp16": {"enabled": True}}}]
)
def test_fp16_without_a_gpu_is_refused_before_anything_starts(zero):
    with pytest.raises(ValueError, match="fp16 is not supported on CPU: use zero.precision=bf16 or fp32"):
        deepspeed_config(_cfg(zero=zero), on_gpu=False, total_steps=10)


def _lrs(ds: dict, steps: int) -> list[float]:
    """The lr DeepSpeed's scheduler gives at iterations 0..steps-1, on a real optimizer."""
    from deepspeed.runtime import lr_schedules

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=ds["optimizer"]["params"]["lr"])
    scheduler = getattr(lr_schedules, ds["scheduler"]["type"])(optimizer, **ds["scheduler"]["params"])
    lrs = []
    for step in range(steps):
        scheduler.step(step)
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_schedules_warm_up_to_lr_then_decay_to_min_lr(schedule):
    optim = {"lr": 1e-3, "min_lr_ratio": 0.1, "warmup_steps": 4, "schedule": schedule}
    lrs = _lrs(deepspeed_config(_cfg(optim=optim), False, total_steps=20), 21)
    assert lrs[0] == pytest.approx(1e-4) and lrs[:5] == sorted(lrs[:5])
    # cosine decays at once
    assert lrs[4] == pytest.approx(1e-3, rel=0.01) and max(lrs) == pytest.approx(1e-3, rel=0.01)
    assert lrs[-1] == pytest.approx(1e-3 if schedule == "constant" else 1e-4)  # by iteration total_steps


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_without_warmup_the_first_step_runs_at_lr(schedule):
    optim = {"lr": 1e-3, "warmup_steps": 0, "schedule": schedule}
    assert _lrs(deepspeed_config(_cfg(optim=optim), False, total_steps=20), 1) == [pytest.approx(1e-3)]


def test_extra_is_deep_merged_last():
    extra = {
        "zero_optimization": {"reduce_bucket_size": 1000},
        "optimizer": {"params": {"weight_decay": 0.1}},
        "activation_checkpointing": {"partition_activations": False},
    }
    ds = deepspeed_config(_cfg(zero={"extra": extra}), False, 10)
    assert ds["zero_optimization"]["reduce_bucket_size"] == 1000 and ds["zero_optimization"]["stage"] == 3
    assert (
        ds["optimizer"]["params"]["weight_decay"] == 0.1 and ds["optimizer"]["params"]["torch_adam"] is True
    )
    assert ds["activation_checkpointing"] == {"partition_activations": False}


def test_unknown_top_level_keys_are_refused_by_name():
    with pytest.raises(
        ValueError, match=r"does not read top-level key\(s\) \['bogus', 'zero_optimisation'\]"
    ):
        deepspeed_config(_cfg(zero={"extra": {"zero_optimisation": {}, "bogus": 1}}), False, 10)


def test_unknown_nested_zero_keys_are_refused_by_deepspeed():
    with pytest.raises(ValueError, match="stage3_bogus"):
        deepspeed_config(_cfg(zero={"extra": {"zero_optimization": {"stage3_bogus": 1}}}), False, 10)


def test_cpu_patch_skips_the_shm_op_build_and_can_run_twice():
    patch_deepspeed_for_cpu()
    patch_deepspeed_for_cpu()
    assert sys.modules["deepspeed.comm.torch"].build_shm_op() is None


@pytest.fixture(scope="module")
def single_process_group(tmp_path_factory):
    """World size 1 on gloo, as Ray Train would create it; DeepSpeed reuses it."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LOCAL_RANK", "0")  # Ray Train sets it in each worker; deepspeed.initialize requires it
        store = dist.FileStore(str(tmp_path_factory.mktemp("pg") / "store"), 1)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        yield
        import deepspeed.comm

        if deepspeed.comm.is_initialized():
            # also drops DeepSpeed's cached groups: a later group is new
            deepspeed.comm.destroy_process_group()
        else:
            dist.destroy_process_group()


def test_torch_adamw_is_built_fused_and_leaves_the_config():
    params = [torch.nn.Parameter(torch.zeros(3))]
    ds = deepspeed_config(_cfg(optim={"weight_decay": 0.1}), on_gpu=False, total_steps=10)
    optimizer, rest = fused_adamw(ds, params)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"]
    assert (optimizer.defaults["lr"], optimizer.defaults["betas"], optimizer.defaults["weight_decay"]) == (
        3e-4, (0.9, 0.95), 0.1)
    assert "optimizer" not in rest and "optimizer" in ds and rest["scheduler"] == ds["scheduler"]


@pytest.mark.parametrize("zero", [{"offload_optimizer": True},  # DeepSpeedCPUAdam
                                  {"extra": {"optimizer": {"params": {"foreach": True}}}},
                                  {"extra": {"optimizer": {"type": "Lamb"}}}])
def test_deepspeed_builds_the_optimizer_when_it_is_not_plain_torch_adamw(zero):
    ds = deepspeed_config(_cfg(zero=zero), on_gpu=False, total_steps=10)
    assert fused_adamw(ds, [torch.nn.Parameter(torch.zeros(3))]) == (None, ds)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.usefixtures("single_process_group")
def test_zero3_engine_trains_a_tiny_llama_on_cpu_and_saves_the_model(precision, tmp_path):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    started = time.perf_counter()
    patch_deepspeed_for_cpu()
    import deepspeed

    cfg = _cfg(model={"architecture": "llama", "config": TINY_CONFIGS["llama"]}, num_workers=1,
               global_batch_size=2, micro_batch_size=2, optim={"lr": 1e-2}, zero={"precision": precision})
    model = build_model(ModelConfig(architecture="llama", config=TINY_CONFIGS["llama"]), 128, seed=0)
    names = set(model.state_dict())
    optimizer, ds = fused_adamw(deepspeed_config(cfg, on_gpu=False, total_steps=3), list(model.parameters()))
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds)
    assert engine.basic_optimizer is optimizer and optimizer.defaults["fused"]
    ids = torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(0)).numpy()
    inputs = model_inputs("llama", pretrain_batch(ids, [[10, 22], [32]]), [[10, 22], [32]])
    losses = []
    for _ in range(3):
        loss = engine(**inputs).loss
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    # DeepSpeed runs the first optimizer step at WarmupCosineLR's pre-start lr, 0: the fall shows from step 3
    assert losses[2] < losses[0] - 0.1, losses
    engine.save_checkpoint(str(tmp_path))
    assert (tmp_path / "latest").read_text() == "global_step3"
    state = get_fp32_state_dict_from_zero_checkpoint(str(tmp_path))
    assert set(state) == names and all(t.dtype == torch.float32 for t in state.values())
    assert time.perf_counter() - started < 60
