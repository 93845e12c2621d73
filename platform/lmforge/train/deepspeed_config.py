"""TrainConfig -> the DeepSpeed config dict (never a hand-edited JSON), checked by DeepSpeed's own parser."""

from __future__ import annotations

import copy
import sys
from typing import Any

from lmforge.config import OptimConfig, TrainConfig, ZeroConfig

FP16_ON_CPU = "fp16 is not supported on CPU: use zero.precision=bf16 or fp32"
# Top-level keys `deepspeed.initialize` reads itself (deepspeed/__init__.py), outside DeepSpeedConfig.
_READ_BY_INITIALIZE = {"sequence_parallel_size", "data_parallel_size"}


def deepspeed_config(cfg: TrainConfig, on_gpu: bool, total_steps: int) -> dict[str, Any]:
    """The config for `deepspeed.initialize`: our settings, then `cfg.zero.extra` merged last, validated.

    Raises ValueError for fp16 without a GPU, top-level keys DeepSpeed does not read, values its parser
    refuses, and batch sizes that disagree with global_batch_size / micro_batch_size / num_workers.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, not {total_steps}")
    config: dict[str, Any] = {
        "train_batch_size": cfg.global_batch_size,
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "gradient_clipping": cfg.optim.max_grad_norm,  # 0: off
        "zero_optimization": _zero(cfg.zero, on_gpu),
        "optimizer": _optimizer(cfg.optim, cfg.zero),
        "scheduler": _scheduler(cfg.optim, total_steps),
        "steps_per_print": 10**9,  # the loop logs; DeepSpeed's own progress lines are noise
        "wall_clock_breakdown": False,
    }
    if cfg.zero.precision != "fp32":
        config[cfg.zero.precision] = {"enabled": True}
    config = _deep_merge(config, cfg.zero.extra)
    _validate(config, on_gpu, cfg.num_workers)
    return config


def _zero(zero: ZeroConfig, on_gpu: bool) -> dict[str, Any]:
    section: dict[str, Any] = {"stage": zero.stage}
    if zero.stage == 0:
        return section
    section["overlap_comm"] = on_gpu  # overlaps on CUDA streams; nothing to overlap with on CPU
    if zero.offload_optimizer:  # pinned pages only speed up GPU copies; on CPU they just lock RAM
        section["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if zero.stage == 3:
        section["stage3_gather_16bit_weights_on_model_save"] = True  # save_16bit_model writes the whole model
        if zero.offload_params:
            section["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    return section


def _optimizer(optim: OptimConfig, zero: ZeroConfig) -> dict[str, Any]:
    params: dict[str, Any] = {"lr": optim.lr, "betas": list(optim.betas), "eps": optim.eps,
                              "weight_decay": optim.weight_decay}
    if not zero.offload_optimizer:
        params["torch_adam"] = True  # torch.optim.AdamW; FusedAdam would JIT-compile (75-110 s)
    # with offload DeepSpeed uses DeepSpeedCPUAdam, which JIT-compiles once (cache TORCH_EXTENSIONS_DIR)
    return {"type": "AdamW", "params": params}


def fused_adamw(config: dict[str, Any], parameters) -> tuple[Any, dict[str, Any]]:
    """(torch's fused AdamW, `config` without "optimizer") when `config` asks for torch's AdamW;
    else (None, config).

    DeepSpeed builds torch.optim.AdamW with foreach at most; the fused kernel is ~10x faster on CPU (a
    23M-parameter ZeRO partition steps in 0.011 s instead of 0.117 s). DeepSpeed takes it as a client
    optimizer (ZeRO partitions its parameter groups as it does its own).
    """
    import torch

    section = config.get("optimizer", {})
    params = dict(section.get("params", {}))
    if section.get("type") != "AdamW" or not params.pop("torch_adam", False) or "foreach" in params:
        return None, config  # DeepSpeedCPUAdam (offload), another optimizer, or an explicit foreach choice
    params["betas"] = tuple(params.get("betas", (0.9, 0.999)))
    return torch.optim.AdamW(parameters, fused=True, **params), {
        k: v for k, v in config.items() if k != "optimizer"
    }


def _scheduler(optim: OptimConfig, total_steps: int) -> dict[str, Any]:
    """Linear warmup from lr * min_lr_ratio to lr, then cosine / linear decay to lr * min_lr_ratio,
    or constant.

    DeepSpeed needs >= 1 warmup step (and ramps over at least 2); without warmup, cosine and constant start
    at lr, while linear (WarmupDecayLR ramps from the same min lr it decays to) ramps over those 2 steps.
    """
    warmup = max(1, optim.warmup_steps)
    start = optim.min_lr_ratio if optim.warmup_steps else 1.0
    if optim.schedule == "cosine":  # scales the optimizer lr by ratios: takes no warmup_max_lr
        return {"type": "WarmupCosineLR", "params": {
            "total_num_steps": total_steps, "warmup_num_steps": warmup, "warmup_type": "linear",
            "warmup_min_ratio": start, "cos_min_ratio": optim.min_lr_ratio}}
    # warmup_max_lr overrides the optimizer's lr, so it must be lr itself
    params = {"warmup_num_steps": warmup, "warmup_type": "linear", "warmup_max_lr": optim.lr}
    if optim.schedule == "linear":
        return {"type": "WarmupDecayLR", "params": {
            **params, "warmup_min_lr": optim.lr * optim.min_lr_ratio, "total_num_steps": total_steps}}
    return {"type": "WarmupLR", "params": {**params, "warmup_min_lr": optim.lr * start}}


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class _ReadRecorder(dict):
    """A dict that remembers which keys were looked up (shared with its copies: copy.copy keeps __dict__)."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


def _validate(config: dict[str, Any], on_gpu: bool, num_workers: int) -> None:
    if not on_gpu and config.get("fp16", {}).get("enabled"):
        raise ValueError(FP16_ON_CPU)
    micro, accumulation = config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]
    if config["train_batch_size"] != micro * accumulation * num_workers:
        raise ValueError(
            f"deepspeed config: train_batch_size {config['train_batch_size']} != micro batch {micro} "
            f"* accumulation {accumulation} * {num_workers} workers; set global_batch_size and "
            "micro_batch_size instead of the raw keys in zero.extra"
        )
    from deepspeed.runtime.config import DeepSpeedConfig, DeepSpeedConfigError

    # The parser sees a world of one (or the group DeepSpeed already joined), so let it derive the global
    # batch; every key it looks up is one DeepSpeed understands, any other key would be silently ignored.
    recorder = _ReadRecorder({k: v for k, v in config.items() if k != "train_batch_size"})
    try:
        DeepSpeedConfig(recorder)
    except (AssertionError, DeepSpeedConfigError) as error:
        raise ValueError(f"deepspeed config refused: {error}") from error
    unknown = sorted(set(config) - recorder.read - _READ_BY_INITIALIZE - {"train_batch_size"})
    if unknown:
        raise ValueError(
            f"zero.extra: DeepSpeed {_deepspeed_version()} does not read top-level key(s) {unknown}; "
            "see https://www.deepspeed.ai/docs/config-json/"
        )


def _deepspeed_version() -> str:
    import deepspeed

    return deepspeed.__version__


def patch_deepspeed_for_cpu() -> None:
    """Skip DeepSpeed's JIT build of its shared-memory comm op at CPU start (40-50 s, or a failure without
    a compiler); it only serves inference all-reduce. Call in each worker before `deepspeed.initialize`."""
    import deepspeed.comm.torch  # noqa: F401  (loads the module)

    # through sys.modules: the package attribute `deepspeed.comm.torch` is the real torch (DESIGN.md)
    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
