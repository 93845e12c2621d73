"""Settings of the serve stage: a converted model behind an OpenAI-compatible Ray Serve app (vLLM)."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, model_validator

from lmforge.config.base import RayConfig, StrictModel


class AutoscalingConfig(StrictModel):
    min_replicas: int = Field(1, ge=0, description="Replicas kept running (0: scale to zero when idle).")
    max_replicas: int = Field(1, ge=1, description="Most replicas the autoscaler starts.")
    target_ongoing_requests: int = Field(
        16, ge=1, description="Requests per replica the autoscaler aims for."
    )

    @model_validator(mode="after")
    def _min_not_above_max(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} is above max_replicas {self.max_replicas}")
        return self


class ServeConfig(StrictModel):
    """`lmforge serve`: one converted model, OpenAI API (/v1/models, /v1/chat/completions,
    /v1/completions)."""

    model_dir: str = Field(
        description="output_dir of lmforge convert (weights, tokenizer, chat template, EOS)."
    )
    model_id: str = Field("lmforge-chat", description="Name clients pass as `model` and /v1/models lists.")
    output_dir: str = Field(
        "runs/serve", description="Where `serve_deploy.yaml` (for `serve deploy`) is written."
    )
    accelerator: Literal["cpu", "gpu"] = Field("cpu", description="cpu: vLLM's CPU backend; gpu: CUDA vLLM.")
    accelerator_type: str | None = Field(
        None, description="gpu only: Ray accelerator type, e.g. A10G, L4, H100."
    )
    tensor_parallel_size: int = Field(
        1, ge=1, description="GPUs per replica (gpu only; cpu serves on one worker)."
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=lambda: {"max_model_len": 256, "enforce_eager": True, "dtype": "float32"},
        description="vLLM engine arguments (max_model_len, enforce_eager, dtype, ...).",
    )
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig)
    max_ongoing_requests: int = Field(64, ge=1, description="Requests one replica takes at once.")
    max_queued_requests: int = Field(
        -1, ge=-1, description="Requests waiting for a replica before 503 (-1: no bound)."
    )
    api_keys: list[str] = Field(
        default_factory=list, description="Accepted bearer keys (empty with no api_keys_env: open)."
    )
    api_keys_env: str | None = Field(
        None, description="Environment variable holding more comma-separated keys."
    )
    max_prompt_tokens: int | None = Field(None, ge=1, description="Longer prompts get 400 before the engine.")
    max_tokens_limit: int | None = Field(
        None, ge=1, description="Largest max_tokens a request may ask for (else 400)."
    )
    health_timeout_s: float = Field(
        5.0, gt=0, description="GET /health answers 503 if Serve's controller is slower."
    )
    no_replica_timeout_s: float = Field(
        10.0, gt=0,
        description="A request still without its first token after this long gets 503 (retry it) if its "
        "model has no RUNNING replica (as GET /health reports) instead of waiting in Serve's queue for a "
        "restart (minutes); with a RUNNING replica it keeps waiting, checked again as often. With "
        "autoscaling.min_replicas 0, set it above a replica's start time.",
    )
    env: dict[str, str] = Field(
        default_factory=lambda: {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"},
        description="Environment of the replicas (VLLM_CPU_KVCACHE_SPACE in GiB: else vLLM takes most of "
        "RAM).",
    )
    route_prefix: str = Field("/", description="HTTP path the app is mounted at.")
    host: str = Field(
        "127.0.0.1", description="Address Serve's HTTP proxy binds (0.0.0.0 to accept other hosts)."
    )
    port: int = Field(8000, ge=1, le=65535, description="Port of Serve's HTTP proxy.")
    ray: RayConfig = Field(default_factory=lambda: RayConfig(num_cpus=8))
    ask_once: str | None = Field(
        None,
        description="Ask this question through the API, print the streamed answer and stop (a smoke check).",
    )

    @model_validator(mode="after")
    def _gpu_settings_need_gpu(self) -> ServeConfig:
        if self.accelerator == "cpu" and (self.tensor_parallel_size > 1 or self.accelerator_type):
            raise ValueError("tensor_parallel_size > 1 and accelerator_type need accelerator: gpu")
        return self

    def resolved_api_keys(self) -> list[str]:
        """api_keys plus the comma-separated keys in the
        api_keys_env variable (read when the app is built)."""
        from_env = os.environ.get(self.api_keys_env, "") if self.api_keys_env else ""
        return self.api_keys + [key.strip() for key in from_env.split(",") if key.strip()]
