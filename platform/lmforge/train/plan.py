"""`lmforge plan CONFIG`: GPU memory and CPU RAM per worker of a pretrain/sft/align run under ZeRO-3,
before submitting.

Symbols: N parameters (T of them trainable: N, or the LoRA adapters), L parameters of the largest module,
G GPUs (= num_workers), g GPUs per node, n = ceil(G / g) nodes; P bytes per parameter as trained (2 for
bf16/fp16, 4 for fp32), S bytes of training state per trainable parameter (bf16/fp16: fp32 master weight +
Adam m + v + fp32 gradient = 16; fp32: gradient + m + v = 12).

Model states, DeepSpeed's `estimate_zero3_model_states_mem_needs` (deepspeed/runtime/zero/stage3.py) with
zero_init=False, because every lmforge worker builds the whole model in fp32 before `deepspeed.initialize`
partitions it; for bf16 and T = N it gives DeepSpeed's numbers exactly (the test checks):
    GPU per worker = 2P*L                  (the largest module gathered, with its gradient)
                   + P*N / G   unless parameters are offloaded
                   + S*T / G   unless the optimizer is offloaded
    CPU per node   = 1.5 * max(4*N*g,      (g workers each holding the fp32 model while it loads)
                               (P*N [params offloaded] + S*T [optimizer offloaded]) / n)
Without zero_init DeepSpeed also moves the whole model, cast to P bytes, to each GPU before partitioning
it (engine._configure_distributed_model), so a GPU needs P*N once at start whatever the offload.

Activations per worker for micro batch b, sequence length s (hidden h, key/value width h_kv, MLP width i,
a heads, l layers, vocabulary V, p bytes per activation = P), bytes saved for backward by one layer:
    per_layer = s*b*(6h + 2h_kv + k*i) * p    norm inputs 2h, attention input h, q/k/v h + 2h_kv, attention
                                              output h, MLP input h, MLP k*i (k = 4 gated: gate, up, act,
                                              product; k = 2: fc1, act)
              + b*a*s^2 * (4 + p)             eager attention only (Bloom): fp32 softmax output + p-byte copy
    no checkpointing:  l * per_layer
    checkpointing:     l * s*b*h * p (each layer's input) + per_layer (one layer recomputed in backward)
    + logits s*b*V * (p + 8)                  model-dtype logits, fp32 log-softmax and its gradient (the loss)
This is Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models": 34sbh bytes
per GPT layer) without dropout masks and with fused attention; expect it to be within ~20%.

align (DPO and friends): a row holds whole pairs, so its sequence length (prepare-preference's
row_length) is already 2 x max_length. A reference model in the loop costs, for full fine-tuning, a
frozen copy partitioned like the policy: P*N / G more GPU per worker (CPU per node when parameters are
offloaded), no gradient or optimizer state; its forward saves no activations. Precomputed reference
log-probs (prepare-preference reference.model_dir), LoRA (the adapters disabled) and the reference-free
losses (simpo, orpo) cost nothing.

A configuration fits when max(GPU model states + activations, P*N) <= 90% of plan.gpu_memory_gib (the rest
is the CUDA context, NCCL buffers and allocator fragmentation) and, when plan.cpu_memory_gib is set, CPU per
node <= it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from lmforge.config import AlignTrainConfig, TrainConfig, load_config
from lmforge.manifest import MANIFEST_NAME, Manifest
from lmforge.stage_outputs import PreferenceRows, TokenBlocks
from lmforge.train.data import read_prepared_data

GIB = 2**30
USABLE_GPU_FRACTION = 0.9
CPU_BUFFER_FACTOR = 1.5  # DeepSpeed's additional_buffer_factor
OFFLOAD_CHOICES = ((False, False), (True, False), (True, True))  # (optimizer, params): DeepSpeed's three rows


@dataclass(frozen=True)
class ModelShape:
    """What the memory model needs to know about a model; from its config, built on the meta device."""

    model_type: str
    params: int
    largest_module_params: int
    trainable_params: int
    layers: int
    hidden: int
    kv_width: int
    mlp_width: int
    mlp_saved_per_width: int  # k above: 4 for gated MLPs (SwiGLU), 2 otherwise
    heads: int
    vocab: int
    eager_attention: bool  # attention scores materialised (b * heads * s^2), no fused kernel


@dataclass(frozen=True)
class Memory:
    offload_optimizer: bool
    offload_params: bool
    gpu_model_states: float  # bytes per worker
    activations: float  # bytes per worker
    cpu_per_node: float  # bytes
    gpu_at_load: float  # bytes: the whole model on each GPU before ZeRO-3 partitions it

    @property
    def gpu_total(self) -> float:
        return max(self.gpu_model_states + self.activations, self.gpu_at_load)

    @property
    def offload(self) -> str:
        return {(False, False): "none", (True, False): "optimizer", (False, True): "params",
                (True, True): "optimizer+params"}[self.offload_optimizer, self.offload_params]


def model_shape(cfg: TrainConfig, vocab_size: int) -> ModelShape:
    """Parameter counts and dimensions of `cfg.model` (+ LoRA) without allocating weights."""
    import torch
    import transformers

    from lmforge.train.model import model_config

    if cfg.model.architecture and not (vocab_size or cfg.model.config.get("vocab_size")):
        raise ValueError("the vocabulary size is unknown: prepare data.dir (its tokenizer) "
                         "or set model.config.vocab_size")
    try:
        config = model_config(cfg.model, vocab_size)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"{exc}; plan reads only its config.json, which can be copied there alone"
        ) from None
    config.vocab_size = max(config.vocab_size, vocab_size)  # training grows embeddings to the tokenizer's
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())  # a tied weight once, as DeepSpeed's model_to_params
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    trainable = params if not cfg.lora.enabled else _lora_params(model, cfg)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return ModelShape(
        model_type=config.model_type, params=params, largest_module_params=largest,
        trainable_params=trainable, layers=config.num_hidden_layers, hidden=config.hidden_size,
        kv_width=(getattr(config, "num_key_value_heads", None) or heads) * head_dim,
        mlp_width=getattr(config, "intermediate_size", None) or 4 * config.hidden_size,
        mlp_saved_per_width=4 if "gate_proj" in names else 2, heads=heads,
        vocab=config.vocab_size, eager_attention=model.config._attn_implementation == "eager",
    )


def _lora_params(model, cfg: TrainConfig) -> int:
    import torch

    adapted = [m for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in cfg.lora.target_modules]
    if not adapted:
        raise ValueError(f"lora.target_modules {cfg.lora.target_modules} match no linear layer of this "
                         f"{model.config.model_type} model")
    return sum(cfg.lora.r * (m.in_features + m.out_features) for m in adapted)


def load_plan_config(path: str, overrides: list[str]) -> TrainConfig:
    """The config as `lmforge align` reads it when it is one (a preference: or reference: setting, or data.dir
    prepared by prepare-preference), else as pretrain/sft read it."""
    cfg = load_config(AlignTrainConfig, path, overrides)  # a superset: pretrain/sft configs validate too
    manifest = Path(cfg.data.dir) / MANIFEST_NAME
    preference_data = manifest.is_file() and Manifest.read(cfg.data.dir).stage == "prepare-preference"
    if {"preference", "reference"} & cfg.model_fields_set or preference_data:
        return cfg
    return TrainConfig.model_validate(cfg.model_dump(exclude={"preference", "reference"}))


def frozen_reference(cfg: TrainConfig) -> bool:
    """Whether this run keeps a frozen copy of the model as its reference (align, full, not precomputed)."""
    if not isinstance(cfg, AlignTrainConfig) or cfg.lora.enabled or not cfg.preference.needs_reference:
        return False
    if cfg.reference != "auto":
        return cfg.reference == "in_loop"
    manifest = Path(cfg.data.dir) / MANIFEST_NAME
    return not (manifest.is_file() and read_prepared_data(cfg.data.dir).reference is not None)


def model_states(
    shape: ModelShape, cfg: TrainConfig, offload_optimizer: bool, offload_params: bool
) -> tuple[float, float]:
    """(GPU bytes per worker, CPU bytes per node) of parameters, gradients and optimizer state
    (formula above), and of align's frozen reference model."""
    param_bytes, state_bytes = (4, 12) if cfg.zero.precision == "fp32" else (2, 16)
    gpus, per_node = cfg.num_workers, cfg.plan.gpus_per_node
    nodes = math.ceil(gpus / per_node)
    copies = 2 if frozen_reference(cfg) else 1
    params_total = copies * param_bytes * shape.params
    states_total = state_bytes * shape.trainable_params
    gpu = 2 * param_bytes * shape.largest_module_params
    gpu += (0 if offload_params else params_total) / gpus + (0 if offload_optimizer else states_total) / gpus
    offloaded = (params_total if offload_params else 0) + (states_total if offload_optimizer else 0)
    workers_on_node = min(per_node, gpus)
    cpu = CPU_BUFFER_FACTOR * max(4 * shape.params * workers_on_node, offloaded / nodes)
    return gpu, cpu


def activation_bytes(shape: ModelShape, cfg: TrainConfig, seq_len: int) -> float:
    """Bytes of activations one worker keeps for one micro batch (formula above)."""
    p = 4 if cfg.zero.precision == "fp32" else 2
    tokens = cfg.micro_batch_size * seq_len
    per_layer = (
        tokens * (6 * shape.hidden + 2 * shape.kv_width + shape.mlp_saved_per_width * shape.mlp_width) * p
    )
    if shape.eager_attention:
        per_layer += cfg.micro_batch_size * shape.heads * seq_len**2 * (4 + p)
    if cfg.model.gradient_checkpointing:
        layers = shape.layers * tokens * shape.hidden * p + per_layer
    else:
        layers = shape.layers * per_layer
    return layers + tokens * shape.vocab * (p + 8)


def memory(
    shape: ModelShape, cfg: TrainConfig, seq_len: int, offload_optimizer: bool, offload_params: bool
) -> Memory:
    gpu, cpu = model_states(shape, cfg, offload_optimizer, offload_params)
    at_load = (4 if cfg.zero.precision == "fp32" else 2) * shape.params
    return Memory(offload_optimizer, offload_params, gpu, activation_bytes(shape, cfg, seq_len), cpu, at_load)


def fits_gpu(mem: Memory, cfg: TrainConfig) -> bool:
    return mem.gpu_total <= USABLE_GPU_FRACTION * cfg.plan.gpu_memory_gib * GIB


def fits_cpu(mem: Memory, cfg: TrainConfig) -> bool | None:
    return None if cfg.plan.cpu_memory_gib is None else mem.cpu_per_node <= cfg.plan.cpu_memory_gib * GIB


def sequence_and_vocab(cfg: TrainConfig) -> tuple[int, int, str]:
    """(sequence length, tokenizer vocab size or 0, where the length came from): data.dir's manifest first."""
    if (Path(cfg.data.dir) / MANIFEST_NAME).is_file():
        prepared = read_prepared_data(cfg.data.dir)
        key = ("block_size" if isinstance(prepared, TokenBlocks)
               else "row_length" if isinstance(prepared, PreferenceRows) else "max_length")
        return (prepared.sequence_length, prepared.tokenizer.vocab_size,
                f"{key} of {cfg.data.dir}/{MANIFEST_NAME}")
    if cfg.plan.sequence_length is None:
        raise ValueError(f"data.dir {cfg.data.dir}: no {MANIFEST_NAME} yet, so the sequence length is "
                         "unknown: set plan.sequence_length (the block_size or max_length you will prepare)")
    return cfg.plan.sequence_length, 0, "plan.sequence_length: data.dir not prepared yet"


def plan_report(cfg: TrainConfig, where: str) -> tuple[str, bool]:
    """The printed plan and whether the config's own offload setting fits."""
    seq_len, vocab, seq_source = sequence_and_vocab(cfg)
    shape = model_shape(cfg, vocab)
    chosen = (cfg.zero.offload_optimizer, cfg.zero.offload_params)
    rows = [memory(shape, cfg, seq_len, *choice) for choice in dict.fromkeys([*OFFLOAD_CHOICES, chosen])]
    mine = next(m for m in rows if (m.offload_optimizer, m.offload_params) == chosen)
    lines = [f"lmforge plan: {where}", *_describe_run(cfg, shape, seq_len, seq_source)]
    if isinstance(cfg, AlignTrainConfig):
        lines.insert(3, _describe_alignment(cfg, shape))
    lines += [_row(mem, cfg) + ("   <- this config" if mem is mine else "") for mem in rows]
    fits = fits_gpu(mine, cfg) and fits_cpu(mine, cfg) is not False
    lines.append(_verdict(mine, cfg, fits))
    if cfg.zero.stage != 3:
        lines.append(f"  note: this config uses ZeRO stage {cfg.zero.stage}; the table is for stage 3")
    if cfg.plan.sequence_length and cfg.plan.sequence_length != seq_len:
        lines.append(
            f"  note: plan.sequence_length {cfg.plan.sequence_length} ignored: the data has {seq_len}"
        )
    return "\n".join(lines), fits


def _describe_run(cfg: TrainConfig, shape: ModelShape, seq_len: int, seq_source: str) -> list[str]:
    lora = f"; LoRA r={cfg.lora.r} trains {_count(shape.trainable_params)}" if cfg.lora.enabled else ""
    nodes = math.ceil(cfg.num_workers / cfg.plan.gpus_per_node)
    checkpointing = "on" if cfg.model.gradient_checkpointing else "off"
    param_bytes = 4 if cfg.zero.precision == "fp32" else 2
    cpu_limit = (f"of {cfg.plan.cpu_memory_gib:g} GiB" if cfg.plan.cpu_memory_gib
                 else "set plan.cpu_memory_gib to check")
    return [
        (f"  model     {cfg.model.path or cfg.model.architecture} ({shape.model_type}): "
         f"{_count(shape.params)} parameters, largest module {_count(shape.largest_module_params)}, "
         f"{shape.layers} layers x hidden {shape.hidden}, vocabulary {shape.vocab}{lora}"),
        (f"  run       {cfg.num_workers} workers = {nodes} node(s) x {cfg.plan.gpus_per_node} GPUs, "
         f"{cfg.zero.precision}, micro batch {cfg.micro_batch_size} x {seq_len} tokens ({seq_source}), "
         f"gradient checkpointing {checkpointing}"),
        (f"  loading   no zero.Init: each worker builds the fp32 model in RAM "
         f"({4 * shape.params / GIB:.1f} GiB), then each GPU holds it whole in {cfg.zero.precision} "
         f"({param_bytes * shape.params / GIB:.1f} GiB)"),
        (f"  ZeRO-3 memory in GiB. GPU per worker: fits = <= {USABLE_GPU_FRACTION:.0%} of "
         f"{cfg.plan.gpu_memory_gib:g} GiB; CPU RAM per node of {cfg.plan.gpus_per_node} workers: "
         f"{cpu_limit}"),
        (f"    {'offload':<18}{'model states':>13}{'activations':>13}{'GPU peak':>11}  {'GPU':<9}"
         f"{'CPU/worker':>11}{'CPU/node':>10}  CPU"),
    ]


def _describe_alignment(cfg: AlignTrainConfig, shape: ModelShape) -> str:
    loss = cfg.preference.loss
    if not cfg.preference.needs_reference:
        reference = "none (reference-free loss)"
    elif cfg.lora.enabled:
        reference = "the model with its LoRA adapters disabled (no extra memory)"
    elif frozen_reference(cfg):
        param_bytes = 4 if cfg.zero.precision == "fp32" else 2
        per_worker = param_bytes * shape.params / cfg.num_workers / GIB
        reference = (f"a frozen copy in the loop: +{per_worker:.1f} GiB per worker (ZeRO-3 partitioned; "
                     "precompute it with prepare-preference reference.model_dir)")
    else:
        reference = "precomputed log-probs in the data (no reference model)"
    return f"  align     {loss}, each row holds whole pairs (chosen + rejected); reference: {reference}"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _row(mem: Memory, cfg: TrainConfig) -> str:
    cpu_ok = fits_cpu(mem, cfg)
    workers_on_node = min(cfg.plan.gpus_per_node, cfg.num_workers)
    return (f"    {mem.offload:<18}{mem.gpu_model_states / GIB:>13.1f}{mem.activations / GIB:>13.1f}"
            f"{mem.gpu_total / GIB:>11.1f}  {'fits' if fits_gpu(mem, cfg) else 'TOO BIG':<9}"
            f"{mem.cpu_per_node / workers_on_node / GIB:>11.1f}{mem.cpu_per_node / GIB:>10.1f}  "
            f"{'-' if cpu_ok is None else 'fits' if cpu_ok else 'TOO BIG'}")


def _verdict(mem: Memory, cfg: TrainConfig, fits: bool) -> str:
    gpu = f"{mem.gpu_total / GIB:.1f} of {cfg.plan.gpu_memory_gib:g} GiB per GPU"
    cpu = f", {mem.cpu_per_node / GIB:.0f} of {cfg.plan.cpu_memory_gib:g} GiB RAM per node" \
        if cfg.plan.cpu_memory_gib else ""
    if fits:
        return f"  VERDICT: fits with offload {mem.offload}: {gpu}{cpu}"
    hints = []
    if not fits_gpu(mem, cfg):
        if not cfg.model.gradient_checkpointing:
            hints.append("model.gradient_checkpointing=true")
        if cfg.micro_batch_size > 1:
            hints.append(f"micro_batch_size={cfg.micro_batch_size // 2} (keep global_batch_size)")
        if not (cfg.zero.offload_optimizer and cfg.zero.offload_params):
            hints.append("zero.offload_optimizer=true / zero.offload_params=true")
    if fits_cpu(mem, cfg) is False:
        hints.append("fewer workers per node or less offload (each worker loads the fp32 model)")
    return f"  VERDICT: DOES NOT FIT with offload {mem.offload}: {gpu}{cpu}; try {', '.join(hints)}"
