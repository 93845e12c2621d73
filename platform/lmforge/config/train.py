"""Settings of the training stages: pretrain and sft (Ray Train + DeepSpeed)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from lmforge.config.base import RayConfig, StrictModel


class ModelConfig(StrictModel):
    path: str | None = Field(None, description="Local Hugging Face model directory to start from.")
    architecture: Literal["llama", "qwen2", "bloom"] | None = Field(
        None, description="Build a new model from a config instead (demo, tests, from-scratch runs)."
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="Model config fields: with architecture, the whole config (hidden_size, ...); "
        "with path, overrides such as rope_theta, rope_scaling, max_position_embeddings.",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward (larger batches)."
    )
    trust_remote_code: bool = Field(False, description="Run code shipped in the model directory (off: safe).")

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.path is None) == (self.architecture is None):
            raise ValueError("model: give exactly one of path (a local model dir) or architecture (+ config)")
        return self


class TrainDataConfig(StrictModel):
    dir: str = Field(description="Output directory of prepare-pretrain or prepare-sft (with manifest.json).")
    eval_rows: int = Field(
        0, ge=0, description="Rows held out for eval loss / perplexity (taken from the end)."
    )


class OptimConfig(StrictModel):
    lr: float = Field(3e-4, gt=0, description="Peak learning rate (after warmup).")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final lr as a share of lr (cosine / linear).")
    schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Decay after warmup: cosine or linear to lr * min_lr_ratio, or constant.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup from lr * min_lr_ratio to lr (0: none).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping (0: off).")


class ZeroConfig(StrictModel):
    stage: Literal[0, 1, 2, 3] = Field(3, description="DeepSpeed ZeRO stage.")
    offload_optimizer: bool = Field(
        False, description="Optimizer state in CPU RAM (DeepSpeedCPUAdam; compiles once)."
    )
    offload_params: bool = Field(False, description="ZeRO-3 parameters in CPU RAM.")
    precision: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="fp16 needs a GPU.")
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Raw DeepSpeed config keys merged last (validated by DeepSpeed)."
    )


class LoraConfig(StrictModel):
    enabled: bool = Field(False, description="Train LoRA adapters (peft) instead of every weight.")
    r: int = Field(8, ge=1, description="Adapter rank.")
    alpha: int = Field(16, ge=1, description="Adapter scale numerator (the update is scaled by alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Module names to adapt (Bloom: query_key_value, dense).",
    )


class CheckpointConfig(StrictModel):
    every_steps: int = Field(100, ge=1, description="Save a checkpoint every N steps (and at the end).")
    keep_last: int = Field(2, ge=1, description="Checkpoints kept.")


class PlanConfig(StrictModel):
    """Read only by `lmforge plan`: the hardware a run is checked against (training ignores it)."""

    gpu_memory_gib: float = Field(48, gt=0, description="Memory of one GPU (A6000: 48, A100/H100: 80).")
    gpus_per_node: int = Field(8, ge=1, description="GPUs (training workers) per node.")
    cpu_memory_gib: float | None = Field(
        None,
        gt=0,
        description="RAM of one node; set it to get a CPU verdict (offload and model loading use it).",
    )
    sequence_length: int | None = Field(
        None, ge=8, description="Tokens per row before data.dir is prepared; its manifest's length wins."
    )


class PreferenceConfig(StrictModel):
    """Preference alignment: which loss and its hyperparameters (lmforge.train.preference computes them)."""

    loss: Literal["dpo", "ipo", "simpo", "orpo", "kto"] = Field(
        "dpo",
        description="Objective: dpo, ipo and kto compare the policy with a frozen reference model "
        "(paired chosen/rejected answers, kto unpaired desirable/undesirable ones); simpo and orpo "
        "need no reference.",
    )
    beta: float = Field(
        0.1,
        gt=0,
        description="Strength of the preference term, read by every loss: the inverse temperature of "
        "dpo, simpo and kto, the regulariser tau of ipo (its target margin is 1 / (2 beta)), the weight "
        "of orpo's odds-ratio term.",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="Assumed probability that a pair's preference is flipped (conservative DPO), read "
        "by dpo and simpo; 0 trusts every label.",
    )
    simpo_gamma: float = Field(
        0.5,
        ge=0,
        description="Target reward margin of simpo: the loss pushes beta * (mean log-prob of chosen - "
        "of rejected) above it.",
    )
    sft_weight: float = Field(
        0.0,
        ge=0,
        description="dpo, ipo, simpo: add this times the chosen answers' NLL per token (RPO; TRL's loss_type "
        "[sigmoid, sft] with loss_weights [1, w]; LLaMA-Factory's pref_ftx), so the chosen answers become "
        "likely, not only likelier than the rejected ones. orpo has its own NLL; kto reads no such term.",
    )
    desirable_weight: float = Field(
        1.0, gt=0, description="Weight of the loss on desirable samples, read by kto."
    )
    undesirable_weight: float = Field(
        1.0, gt=0, description="Weight of the loss on undesirable samples, read by kto."
    )

    @property
    def needs_reference(self) -> bool:
        """Whether the loss needs the frozen reference model's log-probs: dpo, ipo and kto do."""
        return self.loss in ("dpo", "ipo", "kto")


class TrainConfig(StrictModel):
    """`lmforge pretrain` / `lmforge sft`: Ray Train + DeepSpeed on prepared data."""

    run_name: str = Field(description="Run name; the same name resumes from its last checkpoint.")
    storage_path: str = Field(description="Where runs live (shared storage on a cluster).")
    model: ModelConfig
    data: TrainDataConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    zero: ZeroConfig = Field(default_factory=ZeroConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    num_workers: int = Field(2, ge=1, description="Training workers (one per GPU on a cluster).")
    use_gpu: bool = Field(False, description="One GPU per worker and NCCL; false: CPU workers and gloo.")
    cpus_per_worker: int = Field(
        1, ge=1, description="CPUs Ray reserves per worker (Ray sets its OMP_NUM_THREADS to this)."
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK",
        description="How Ray places the workers' bundles on nodes: PACK fills a node first (fast "
        "collectives); SPREAD puts them on different nodes where it can (STRICT_*: must, or wait).",
    )
    global_batch_size: int = Field(8, ge=1, description="Rows per optimizer step across all workers.")
    micro_batch_size: int = Field(1, ge=1, description="Rows per worker per forward pass.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    epochs: int = Field(1, ge=1, description="Passes over the data when max_steps is not set.")
    stop_after_step: int | None = Field(
        None,
        ge=1,
        description="Checkpoint and stop at this step (e.g. before maintenance); rerun to continue.",
    )
    peak_tflops_per_worker: float | None = Field(
        None, gt=0, description="Hardware peak (e.g. 312 for an A100 in bf16), for the MFU metric."
    )
    seed: int = Field(0, description="Seeds model init, LoRA init and the data order of every epoch.")
    log_every: int = Field(1, ge=1, description="Write metrics (loss, lr, tokens/s, ...) every N steps.")
    eval_every: int = Field(0, ge=0, description="Eval loss every N steps (0: only at the end).")
    max_failures: int = Field(
        2, ge=0, description="Worker failures tolerated (restart from the last checkpoint)."
    )
    collective_timeout_s: int = Field(1800, ge=10, description="A hung worker is detected after this long.")
    ray: RayConfig = Field(default_factory=RayConfig)
    plan: PlanConfig = Field(default_factory=PlanConfig)

    @model_validator(mode="after")
    def _batch_divides(self) -> TrainConfig:
        per_step = self.micro_batch_size * self.num_workers
        if self.global_batch_size % per_step:
            raise ValueError(f"global_batch_size {self.global_batch_size} must be a multiple of "
                             f"micro_batch_size * num_workers = {per_step}")
        if self.zero.offload_params and self.zero.stage != 3:
            raise ValueError("zero.offload_params needs zero.stage 3")
        return self

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.num_workers)



class AlignTrainConfig(TrainConfig):
    """`lmforge align`: preference training (DPO, IPO, SimPO, ORPO, KTO) on prepare-preference rows."""

    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    reference: Literal["auto", "precomputed", "in_loop"] = Field(
        "auto",
        description="Where the reference log-probs of dpo/ipo/kto come from: precomputed (the data's "
        "ref_logps, from prepare-preference reference.model_dir), in_loop (LoRA: the model with its "
        "adapters disabled; full: a frozen copy of the starting model, partitioned like it), auto: "
        "precomputed when the data has them, else in_loop.",
    )
