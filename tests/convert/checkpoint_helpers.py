"""Real ZeRO-3 checkpoints of tiny runs, made in this process (no Ray Train), laid out as a run writes them.

One gloo group of world size 1 on a FileStore, as Ray Train would create it; DeepSpeed reuses it. The SFT
run memorises two question/answer pairs, so a greedy generation ends in EOS after a known answer.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

# head_dim 32: the smallest vLLM's CPU attention takes (TINY_CONFIGS' 64 / 4 heads = 16 it refuses)
LLAMA = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
         "num_key_value_heads": 1, "max_position_embeddings": 256}
# Not the tokenizer's own (classic) template, so a test can tell which one convert shipped.
SFT_TEMPLATE = ("{%- for m in messages -%}{%- if m['role'] == 'user' -%}问：{{ m['content'] }}{{ eos_token }}"
                "{%- else -%}答：{{ m['content'] }}{{ eos_token }}{%- endif -%}{%- endfor -%}"
                "{%- if add_generation_prompt %}答：{% endif -%}")
QA = [("你是谁？", "我是医疗助手。"), ("头痛怎么办？", "多休息，多喝水。")]


@contextlib.contextmanager
def single_process_group(tmp: Path):
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LOCAL_RANK", "0")  # Ray Train sets it in each worker; deepspeed.initialize requires it
        dist.init_process_group("gloo", store=dist.FileStore(str(tmp / "store"), 1), rank=0, world_size=1)
        try:
            yield
        finally:
            release_process_group()


def release_process_group() -> None:
    """Destroy the group through DeepSpeed when it used it,
    so its cached subgroups go too (a later group is new)."""
    import deepspeed.comm

    if deepspeed.comm.is_initialized():
        deepspeed.comm.destroy_process_group()
    else:
        dist.destroy_process_group()


def sft_rows(tokenizer, template: str, qa: list[tuple[str, str]] = QA) -> list[list[int]]:
    """Prompt in `template` + answer + EOS,
    tokenized apart as prepare-sft does (the prompt's tail stays whole)."""
    rows = []
    for question, answer in qa:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}],
            chat_template=template,
            tokenize=False,
            add_generation_prompt=True,
        )
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        rows.append(ids + tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
    return rows


def make_run(run_dir: Path, tokenizer_dir: Path, *, architecture: str, config: dict, kind: str = "sft",
             lora: bool = False, steps: int = 40, save_at: tuple[int, ...] = (40,),
             qa: list[tuple[str, str]] = QA) -> Path:
    """Train `steps` steps on the `qa` rows with ZeRO-3 (fp32)
    and save checkpoint_* dirs + run.json like a run."""
    import transformers

    from lmforge.config import TrainConfig
    from lmforge.train.checkpoint import STATE_FILE, TrainerState
    from lmforge.train.data import TrainData
    from lmforge.train.deepspeed_config import deepspeed_config, patch_deepspeed_for_cpu
    from lmforge.train.model import apply_lora, build_model
    from lmforge.train.run_spec import write_run_spec

    patch_deepspeed_for_cpu()
    import deepspeed

    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = TrainConfig.model_validate(
        {
            "run_name": run_dir.name,
            "storage_path": str(run_dir.parent),
            "data": {"dir": "unused"},
            "model": {"architecture": architecture, "config": config},
            "lora": {"enabled": lora, "r": 4},
            "num_workers": 1,
            "global_batch_size": 1,
            "micro_batch_size": 1,
            "optim": {"lr": 1e-2 if lora else 5e-3},
            "zero": {"precision": "fp32"},
        }
    )
    data = TrainData(kind=kind, files=(), rows=len(qa), sequence_length=64, vocab_size=len(tokenizer),
                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                     tokenizer_dir=str(tokenizer_dir), chat_template=SFT_TEMPLATE if kind == "sft" else None)
    write_run_spec(run_dir, cfg, data)
    model = build_model(cfg.model, data.vocab_size, cfg.seed)
    if lora:
        model = apply_lora(model, cfg.lora)
    engine, *_ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=deepspeed_config(cfg, on_gpu=False, total_steps=steps),
    )
    engine.lr_scheduler.step(0)
    rows = sft_rows(tokenizer, SFT_TEMPLATE, qa)
    for step in range(1, steps + 1):
        ids = torch.tensor([rows[step % len(rows)]])
        engine.backward(engine(input_ids=ids, labels=ids, use_cache=False).loss)
        engine.step()
        if step in save_at:
            directory = run_dir / f"checkpoint_{step:06d}"
            engine.save_checkpoint(str(directory), tag=f"global_step{step}")
            (directory / STATE_FILE).write_text(json.dumps(asdict(TrainerState(step=step))))
    return run_dir
