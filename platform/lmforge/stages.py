"""Every stage of lmforge, one row each: what the CLI, `lmforge pipeline`, `lmforge submit`, the fingerprints
and the configuration reference know about a stage, and nothing else does.

    stage = STAGES["prepare-sft"]
    cfg = load_config(stage.config, "configs/demo/sft_data.yaml")
    manifest = stage.function()(cfg)          # run_prepare_sft, imported only now (Ray, torch are slow)
    stage.output_dir(cfg)                     # where its manifest.json lands (None: it leaves none)
    outputs_of(Manifest.read(d), stage.outputs, d)  # its outputs as a model, for the next stage

Adding a stage: its config model (lmforge/config/), its run function `run_<stage>(cfg) -> Manifest`, its
outputs model (lmforge/stage_outputs.py), a row here, `jobs/<stage>.py`, a test module (DEVELOPING.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from lmforge import stage_outputs as out
from lmforge.config import (
    AlignTrainConfig,
    BatchInferConfig,
    ConvertConfig,
    EvalConfig,
    PipelineConfig,
    PreferenceDataConfig,
    PretrainDataConfig,
    ServeConfig,
    SFTDataConfig,
    SynthConfig,
    TokenizerTrainConfig,
    TrainConfig,
)


def _output_dir_setting(cfg: Any) -> Path | None:
    return Path(cfg.output_dir) if getattr(cfg, "output_dir", None) else None


def _training_run_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.storage_path) / cfg.run_name


@dataclass(frozen=True)
class Stage:
    name: str  # `lmforge NAME CONFIG`, jobs/NAME.py (dashes as underscores)
    config: type[BaseModel]
    run: str  # "module:function", imported only when the stage runs
    summary: str
    outputs: type[BaseModel] | None  # the model of its manifest's `outputs` (None: it writes no manifest)
    # replaces: a rerun starts afresh; resumes: a rerun continues what is there (training checkpoints);
    # blocks: runs until stopped (a service), so only the last stage of a pipeline may
    rerun: Literal["replaces", "resumes", "blocks"] = "replaces"
    where: Callable[[Any], Path | None] = _output_dir_setting  # the directory its manifest.json lands in

    def function(self) -> Callable[[Any], Any]:
        module, function = self.run.split(":")
        return getattr(importlib.import_module(module), function)

    def output_dir(self, cfg: BaseModel) -> Path | None:
        """The resolved directory holding the stage's manifest.json for `cfg`; None when it leaves none."""
        directory = None if self.rerun == "blocks" else self.where(cfg)
        return directory.resolve() if directory else None

    @property
    def job_file(self) -> Path:
        """The `ray job submit` entry point, relative to the checkout."""
        return Path("jobs") / f"{self.name.replace('-', '_')}.py"


STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("train-tokenizer", TokenizerTrainConfig, "lmforge.data.stages.train_tokenizer:train_tokenizer",
          "Train a byte-level BPE tokenizer (for demos and tests without downloads).", out.TokenizerOutputs),
    Stage("prepare-pretrain", PretrainDataConfig, "lmforge.data.stages.prepare_pretrain:run_prepare_pretrain",
          "Raw corpora -> cleaned, deduplicated, mixed, packed token blocks.", out.TokenBlocks),
    Stage("prepare-sft", SFTDataConfig, "lmforge.data.stages.prepare_sft:run_prepare_sft",
          "SFT datasets (alpaca, ShareGPT, ChatGLM3, ...) -> label-masked, packed samples.", out.SFTRows),
    Stage("prepare-preference", PreferenceDataConfig,
          "lmforge.align.prepare:run_prepare_preference",
          "Preference pairs (ShareGPT, pairwise QA, messages, LLaMA-Factory v1) or KTO samples -> "
          "label-masked rows of whole pairs (+ the reference model's log-probs).", out.PreferenceRows),
    Stage("pretrain", TrainConfig, "lmforge.train.run:run_pretrain",
          "Continued pretraining on prepared blocks: Ray Train + DeepSpeed ZeRO.", out.TrainingRun,
          rerun="resumes", where=_training_run_dir),
    Stage("sft", TrainConfig, "lmforge.train.run:run_sft",
          "Supervised fine-tuning (full or LoRA) on prepared SFT rows: Ray Train + DeepSpeed ZeRO.",
          out.TrainingRun, rerun="resumes", where=_training_run_dir),
    Stage("align", AlignTrainConfig, "lmforge.train.run:run_align",
          "Preference training (DPO, IPO, SimPO, ORPO, KTO; full or LoRA) on prepare-preference rows: "
          "Ray Train + DeepSpeed ZeRO.", out.TrainingRun, rerun="resumes", where=_training_run_dir),
    Stage("convert", ConvertConfig, "lmforge.convert.convert:run_convert",
          "ZeRO-3 checkpoint -> Hugging Face model dir (safetensors, tokenizer, chat template; LoRA merged).",
          out.ModelDir),
    Stage("serve", ServeConfig, "lmforge.serve.run:run_serve",
          "Serve a converted model: OpenAI API on Ray Serve + vLLM (blocks; writes serve_deploy.yaml).", None,
          rerun="blocks"),
    Stage("batch-infer", BatchInferConfig, "lmforge.infer.batch_infer:run_batch_infer",
          "Answer a prompt set with a converted model: Ray Data + vLLM engine actors; reruns resume.",
          out.BatchAnswers),
    Stage("synth", SynthConfig, "lmforge.infer.synth:run_synth",
          "Synthetic SFT data (QA from passages, polite refusals, multi-turn) for prepare-sft, or preference "
          "pairs (refusal vs the policy's answer, reference vs the policy's answer) for prepare-preference.",
          out.SynthData),
    Stage("eval", EvalConfig, "lmforge.infer.evaluate:run_eval",
          "Perplexity, multiple choice and open QA of several models; "
          "report.json + report.md + predictions.jsonl.", out.EvalReport),
    Stage("pipeline", PipelineConfig, "lmforge.pipeline:run_pipeline",
          "Stages in order in one process (one Ray), each skipped when its output is up to date.", None),
)}
