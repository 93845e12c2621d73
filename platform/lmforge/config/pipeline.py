"""Settings of `lmforge pipeline`: stages run in order in one process, each skipped when up to date."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from lmforge.config.base import RayConfig, StrictModel


class PipelineStageConfig(StrictModel):
    """One step of a pipeline: a stage, its config file (or the config itself) and overrides."""

    stage: str = Field(
        description="A stage name, as in `lmforge STAGE` (train-tokenizer, pretrain, convert, ...)."
    )
    config: str | dict[str, Any] = Field(
        description="The stage's YAML file (relative to the working directory, like every path in configs), "
        "or its settings inline as a mapping (`lmforge submit` sends pipelines this way)."
    )
    overrides: list[str] = Field(
        default_factory=list, description="Dotted key=value overrides of this stage."
    )


class PipelineConfig(StrictModel):
    """`lmforge pipeline`: e.g. prepare -> pretrain -> sft -> convert -> serve, as one process or one job."""

    stages: list[PipelineStageConfig] = Field(
        description="Stages in the order they run; serve, if any, last."
    )
    ray: RayConfig | None = Field(
        None, description="Ray of the whole pipeline; default: the largest num_cpus / object_store_memory_mb "
        "of the stages' own `ray` settings.",
    )

    @field_validator("stages")
    @classmethod
    def _not_empty(cls, stages: list[PipelineStageConfig]) -> list[PipelineStageConfig]:
        if not stages:
            raise ValueError("give at least one stage")
        return stages
