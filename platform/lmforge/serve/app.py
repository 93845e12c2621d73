"""A ServeConfig -> a Ray Serve application: vLLM replicas (ray.serve.llm) behind the guarded OpenAI ingress.

Assembled as ray 2.60's `build_openai_app` does (ray/llm/_internal/serve/core/ingress/builder.py),
with our ingress class and endpoint list instead of the defaults.
"""

from __future__ import annotations

from pathlib import Path

from ray import serve
from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
from ray.llm._internal.serve.core.ingress.ingress import make_fastapi_ingress
from ray.llm._internal.serve.core.server.builder import build_llm_deployment
from ray.serve.deployment import Application
from ray.serve.llm import LLMConfig

from lmforge.config import ServeConfig
from lmforge.serve.ingress import ENDPOINTS, GuardedIngress


def build_llm_config(cfg: ServeConfig) -> LLMConfig:
    """The vLLM deployment: model dir, engine arguments, replicas and where they run (CPU or GPU)."""
    model_dir = Path(cfg.model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"model_dir {model_dir} is not a model directory (no config.json); run lmforge convert"
        )
    placement = {"accelerator_config": {"kind": "cpu"}, "placement_group_config": {"bundles": [{"CPU": 1}]}}
    if cfg.accelerator == "gpu":
        placement = {"accelerator_type": cfg.accelerator_type} if cfg.accelerator_type else {}
    return LLMConfig(
        model_loading_config={"model_id": cfg.model_id, "model_source": str(model_dir.resolve())},
        engine_kwargs={**cfg.engine_kwargs, "tensor_parallel_size": cfg.tensor_parallel_size},
        deployment_config={
            "autoscaling_config": cfg.autoscaling.model_dump(),
            "max_ongoing_requests": cfg.max_ongoing_requests,
            "max_queued_requests": cfg.max_queued_requests,
        },
        runtime_env={"env_vars": dict(cfg.env)},
        **placement,
    )


def build_app(cfg: ServeConfig) -> Application:
    """The Serve application `serve.run` / `serve deploy` start: one model, OpenAI routes, keys and limits."""
    llm_config = build_llm_config(cfg)
    ingress = make_fastapi_ingress(GuardedIngress, endpoint_map=ENDPOINTS)
    return serve.deployment(ingress, **GuardedIngress.get_deployment_options([llm_config])).bind(
        llm_deployments={cfg.model_id: build_llm_deployment(llm_config)},
        model_cards={cfg.model_id: to_model_metadata(cfg.model_id, llm_config)},
        api_keys=cfg.resolved_api_keys(),
        max_prompt_tokens=cfg.max_prompt_tokens,
        max_tokens_limit=cfg.max_tokens_limit,
        tokenizer_dir=str(Path(cfg.model_dir).resolve()),
        health_timeout_s=cfg.health_timeout_s,
        no_replica_timeout_s=cfg.no_replica_timeout_s,
    )
