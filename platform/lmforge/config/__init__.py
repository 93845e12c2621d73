"""Every stage's settings: pydantic models loaded from YAML, with dotted overrides.

`load_config(PretrainDataConfig, "configs/demo/pretrain_data.yaml", ["pack.block_size=2048"])`
reads the file, expands `${VAR}` / `${VAR:-default}`, applies the overrides and validates;
unknown keys are errors naming the file, the key and the closest valid key.
"""

from lmforge.config.base import (
    ConfigError,
    RayConfig,
    StrictModel,
    describe_fields,
    load_config,
    validate_config,
)
from lmforge.config.convert import ConvertConfig
from lmforge.config.data import (
    BaseSourceConfig,
    CleanConfig,
    DataStageConfig,
    DedupConfig,
    MixConfig,
    PackConfig,
    PretrainDataConfig,
    ReadConfig,
    SFTDataConfig,
    SFTDedupConfig,
    SFTPackConfig,
    SFTSourceConfig,
    SourceConfig,
    TokenizeConfig,
    TokenizerTrainConfig,
)
from lmforge.config.infer import (
    BatchInferConfig,
    EngineConfig,
    EvalConfig,
    EvalModelConfig,
    MultipleChoiceTaskConfig,
    OpenQATaskConfig,
    PerplexityTaskConfig,
    PromptSourceConfig,
    SamplingConfig,
    SynthConfig,
    SynthPromptsConfig,
)
from lmforge.config.pipeline import PipelineConfig, PipelineStageConfig
from lmforge.config.serve import AutoscalingConfig, ServeConfig
from lmforge.config.train import (
    CheckpointConfig,
    LoraConfig,
    ModelConfig,
    OptimConfig,
    PlanConfig,
    PreferenceConfig,
    TrainConfig,
    TrainDataConfig,
    ZeroConfig,
)

__all__ = [
    "AutoscalingConfig",
    "BaseSourceConfig",
    "BatchInferConfig",
    "CheckpointConfig",
    "CleanConfig",
    "ConfigError",
    "ConvertConfig",
    "DataStageConfig",
    "DedupConfig",
    "EngineConfig",
    "EvalConfig",
    "EvalModelConfig",
    "LoraConfig",
    "MixConfig",
    "ModelConfig",
    "MultipleChoiceTaskConfig",
    "OpenQATaskConfig",
    "OptimConfig",
    "PackConfig",
    "PerplexityTaskConfig",
    "PipelineConfig",
    "PipelineStageConfig",
    "PlanConfig",
    "PreferenceConfig",
    "PretrainDataConfig",
    "PromptSourceConfig",
    "RayConfig",
    "ReadConfig",
    "SFTDataConfig",
    "SFTDedupConfig",
    "SFTPackConfig",
    "SFTSourceConfig",
    "SamplingConfig",
    "ServeConfig",
    "SourceConfig",
    "StrictModel",
    "SynthConfig",
    "SynthPromptsConfig",
    "TokenizeConfig",
    "TokenizerTrainConfig",
    "TrainConfig",
    "TrainDataConfig",
    "ZeroConfig",
    "describe_fields",
    "load_config",
    "validate_config",
]
