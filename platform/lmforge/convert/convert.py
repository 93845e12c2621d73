"""`lmforge convert`: a ZeRO-3 training checkpoint -> a model directory that transformers and vLLM load.

    locate checkpoint + run.json -> check RAM -> consolidate (DeepSpeed's zero_to_fp32, weights-only)
      -> load into build_model (+ LoRA) -> greedy reference -> [save adapter] -> merge LoRA -> cast
      -> safetensors + config + generation_config + tokenizer with the run's chat template
      -> reload and verify -> manifest.json

The tokenizer carries the chat template the SFT data was rendered with, and generation_config the
EOS it ended answers with, so a server stops where training taught the model to stop.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
import transformers

from lmforge.config import ConvertConfig
from lmforge.convert.verify import greedy_ids, verification_prompt, verify_conversion
from lmforge.convert.zero_checkpoint import ZeroCheckpoint, check_memory, parameter_count
from lmforge.manifest import MANIFEST_NAME, Manifest
from lmforge.stage_outputs import ModelDir
from lmforge.train.model import apply_lora, build_model

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ADAPTER_DIR = "adapter"


def run_convert(cfg: ConvertConfig) -> Manifest:
    """Convert `cfg.checkpoint` into `cfg.output_dir`; the manifest records what was written and verified."""
    checkpoint = ZeroCheckpoint.locate(cfg.checkpoint)
    if checkpoint.train.model.trust_remote_code and not cfg.trust_remote_code:
        raise ValueError(f"checkpoint {checkpoint.directory}: the run's model runs code from "
                         f"{checkpoint.train.model.path}; set trust_remote_code=true if you trust it")
    parameters = parameter_count(checkpoint, cfg.trust_remote_code)
    ram_bytes = check_memory(parameters, checkpoint.directory)
    tokenizer = serving_tokenizer(checkpoint)
    out = prepare_output_dir(Path(cfg.output_dir))

    model = checkpoint_model(checkpoint, cfg.trust_remote_code)
    prompt = verification_prompt(tokenizer)
    checkpoint_ids = greedy_ids(model, prompt) if cfg.verify else []
    adapter = None
    if checkpoint.lora and (cfg.save_adapter or not cfg.merge_lora):  # unmerged: the adapter is the training
        adapter = out / ADAPTER_DIR
        model.save_pretrained(adapter)  # fp32, as trained
    if checkpoint.lora:
        model = model.merge_and_unload(safe_merge=True) if cfg.merge_lora else model.unload()
    model = model.to(DTYPES[cfg.dtype])
    save_model(model, tokenizer, checkpoint, out, cfg.max_shard_size)
    verification = None
    if cfg.verify:
        exact = cfg.dtype == "fp32" and (cfg.merge_lora or not checkpoint.lora)
        verification = verify_conversion(model, out, prompt, checkpoint_ids, require_checkpoint_match=exact)

    files = sorted(p for p in out.rglob("*") if p.is_file())
    manifest = Manifest(
        stage="convert",
        config=cfg.model_dump(),
        inputs=[{"checkpoint": str(checkpoint.directory), "tag": checkpoint.tag, "step": checkpoint.step,
                 "run_name": checkpoint.train.run_name, "kind": checkpoint.data.kind}],
        outputs=ModelDir(
            model_dir=str(out.resolve()),
            step=checkpoint.step,
            dtype=cfg.dtype,
            lora=checkpoint.lora,
            merged=checkpoint.lora and cfg.merge_lora,
            adapter_dir=str(adapter) if adapter else None,
            parameters=sum(p.numel() for p in model.parameters()),
            chat_template=tokenizer.chat_template,
            eos_token_id=tokenizer.eos_token_id,
            ram_estimate_bytes=ram_bytes,
            files=[{"name": str(p.relative_to(out)), "bytes": p.stat().st_size} for p in files],
            verification=verification,
        ).model_dump(),
        counts={"parameters": parameters, "files": len(files), "bytes": sum(p.stat().st_size for p in files)},
    )
    manifest.write(out)  # last: a directory without manifest.json is an unfinished conversion
    return manifest


def serving_tokenizer(checkpoint: ZeroCheckpoint) -> transformers.PreTrainedTokenizerBase:
    """The data's tokenizer with the chat template the SFT rows were rendered with (pretrain: its own)."""
    data = checkpoint.data
    if not Path(data.tokenizer_dir).is_dir():
        raise FileNotFoundError(f"tokenizer {data.tokenizer_dir} (from the run's data) is gone; restore it, "
                                "since the converted model must ship the tokenizer it was trained with")
    tokenizer = transformers.AutoTokenizer.from_pretrained(data.tokenizer_dir)
    if tokenizer.eos_token_id != data.eos_token_id:
        raise ValueError(f"tokenizer {data.tokenizer_dir}: eos_token_id {tokenizer.eos_token_id} differs "
                         f"from the {data.eos_token_id} the training data used; "
                         f"it changed after the data was prepared")
    if data.chat_template:
        tokenizer.chat_template = data.chat_template
    return tokenizer


def prepare_output_dir(out: Path) -> Path:
    """An empty `out`; a previous conversion there is replaced (stale shards would mix with new ones)."""
    if out.is_dir() and any(out.iterdir()):
        previous = out / MANIFEST_NAME
        if not (previous.is_file() and Manifest.read(out).stage == "convert"):
            raise FileExistsError(f"output_dir {out} is not empty and holds no earlier convert output; "
                                  "choose an empty or new directory")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def checkpoint_model(checkpoint: ZeroCheckpoint, trust_remote_code: bool) -> torch.nn.Module:
    """The trained model in fp32: the run's skeleton (build_model, + LoRA) with the consolidated weights."""
    train = checkpoint.train
    model = build_model(train.model.model_copy(update={"trust_remote_code": trust_remote_code}),
                        checkpoint.data.vocab_size, train.seed)
    if checkpoint.lora:
        model = apply_lora(model, train.lora)
    state = checkpoint.state_dict()
    result = model.load_state_dict(state, strict=False)
    own = model.state_dict()
    loaded = {own[name].data_ptr() for name in state if name in own}
    # tied: shares storage
    untied = [name for name in result.missing_keys if own[name].data_ptr() not in loaded]
    if result.unexpected_keys or untied:
        raise ValueError(f"checkpoint {checkpoint.directory}: its weights do not fit the model run.json "
                         f"describes: missing {untied[:5]}, unexpected {result.unexpected_keys[:5]}")
    model.config.use_cache = True  # training turned the KV cache off; generation and serving want it
    return model.eval()


def save_model(model: transformers.PreTrainedModel, tokenizer, checkpoint: ZeroCheckpoint, out: Path,
               max_shard_size: str) -> None:
    """safetensors (sharded above max_shard_size) + config + generation_config + tokenizer."""
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": checkpoint.data.eos_token_id,
               "pad_token_id": checkpoint.data.pad_token_id}
    for key, value in special.items():
        setattr(model.generation_config, key, value)
        if hasattr(model.config, key):
            setattr(model.config, key, value)
    model.save_pretrained(out, max_shard_size=max_shard_size)  # transformers 5 writes safetensors only
    tokenizer.save_pretrained(out)
    log.info("saved %s model to %s", model.dtype, out)
