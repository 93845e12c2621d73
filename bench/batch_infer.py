"""Batch inference: prompts/s and generated tokens/s on 200 prompts for
(a) `lmforge batch-infer` (Ray Data + vLLM engine actors, CPU), (b) a plain loop of transformers
`generate` (batch 1), (c) transformers batched `generate` with left padding.

Model: one Llama built from a config with random weights (no weights can be downloaded here; the
speed of a forward pass does not depend on the values), saved once as a model directory the way
`lmforge convert` writes one (safetensors, tokenizer with the classic chat template, EOS in
generation_config) and used by all three engines. The tokenizer is a byte-level BPE (8k) trained by
`train_tokenizer` on the shared pretraining files. Prompts: the first 200 questions of the shared
ShareGPT medical set, in the chat template, tokenized once (the same ids for every engine). Greedy,
up to MAX_NEW_TOKENS tokens each; random weights rarely produce EOS, so nearly every answer is
MAX_NEW_TOKENS long, and each engine's tokens/s counts the tokens it really generated.

(a) is timed end to end, as a user's job runs on a Ray cluster that is up (the bench starts a local
Ray first): reading, tokenizing, starting the engine actor (vLLM's start-up: a fixed cost per job),
generating and writing Parquet. A second figure, "(a)
steady", subtracts the same job's time on ONE prompt (the fixed cost), as a longer job would see it.
The RESULT line uses the end-to-end figure.

    .venv/bin/python bench/batch_infer.py

Writes bench/results/batch_infer.txt; the last line printed is the RESULT line.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import time
from pathlib import Path

from lmforge import REPO_DIR as REPO  # the checkout

SHARED_DATA = Path(os.environ.get("LMFORGE_SHARED_DATA", REPO.parent / "shared" / "data"))
WORK = REPO / "bench" / "work" / "batch_infer"
RESULTS = REPO / "bench" / "results" / "batch_infer.txt"
N_PROMPTS = 200
MAX_NEW_TOKENS = 128
HF_BATCH = 32
# bench/serve_throughput.py's model: big enough that a decode step is real compute (a 7M model measured
# Python overheads: transformers' batch-1 loop and vLLM's fixed costs, not generation).
MODEL = {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 8, "num_attention_heads": 12,
         "num_key_value_heads": 12, "max_position_embeddings": 512}


def build_model() -> Path:
    """The model directory (cached): tokenizer trained on the shared text, random Llama weights."""
    import torch
    import transformers

    from lmforge.config import SourceConfig, TokenizerTrainConfig
    from lmforge.data.stages.train_tokenizer import train_tokenizer

    model_dir = WORK / "model"
    if (model_dir / "config.json").is_file():
        return model_dir
    tokenizer_dir = WORK / "tokenizer"
    train_tokenizer(
        TokenizerTrainConfig(
            sources=[
                SourceConfig(path=str(SHARED_DATA / "pretrain" / n)) for n in ("fever.txt", "c4_demo.jsonl")
            ],
            output_dir=str(tokenizer_dir),
            vocab_size=8000,
        )
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **MODEL,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir


def write_prompts() -> Path:
    path = WORK / "prompts.jsonl"
    with (SHARED_DATA / "sft" / "medical_sft_1K_format.jsonl").open(encoding="utf-8") as lines, \
            path.open("w", encoding="utf-8") as sink:
        for i, line in zip(range(N_PROMPTS), lines, strict=False):
            question = json.loads(line)["conversations"][0]["value"][:200]
            sink.write(json.dumps({"id": f"q{i:03d}", "prompt": question}, ensure_ascii=False) + "\n")
    return path


def run_job(model_dir: Path, prompts: Path, limit: int | None = None) -> tuple[float, int, int]:
    """(seconds, prompts answered, generated tokens) of `lmforge batch-infer` on a fresh output dir."""
    from lmforge.config import BatchInferConfig
    from lmforge.infer.batch_infer import run_batch_infer

    source = prompts
    if limit is not None:
        source = WORK / f"prompts_{limit}.jsonl"
        source.write_text(
            "".join(prompts.read_text(encoding="utf-8").splitlines(True)[:limit]), encoding="utf-8"
        )
    out = WORK / f"out_{limit or 'all'}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = BatchInferConfig.model_validate({
        "model_dir": str(model_dir), "sources": [{"path": str(source), "name": "prompts"}],
        "output_dir": str(out), "sampling": {"max_tokens": MAX_NEW_TOKENS},
        "engine": {"batch_size": 64, "max_concurrent_batches": 4,
                   "engine_kwargs": {"max_model_len": 512, "enforce_eager": True, "dtype": "float32"}},
        "ray": {"num_cpus": 4},
    })
    started = time.perf_counter()
    manifest = run_batch_infer(cfg)
    return time.perf_counter() - started, manifest.counts["answered"], manifest.counts["generated_tokens"]


def prompt_ids(model_dir: Path, prompts: Path) -> list[list[int]]:
    from lmforge.infer.prompts import PromptTokenizer

    tokenizer = PromptTokenizer(model_dir)
    return [tokenizer.encode_messages([{"role": "user", "content": json.loads(line)["prompt"]}])
            for line in prompts.read_text(encoding="utf-8").splitlines()]


def hf_generate(model_dir: Path, prompts: list[list[int]], batch: int) -> tuple[float, int]:
    """(seconds, generated tokens) of greedy transformers generate,
    `batch` prompts at a time (left-padded)."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    eos, pad = model.generation_config.eos_token_id, model.generation_config.pad_token_id
    generated = 0
    started = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(prompts), batch):
            group = prompts[i:i + batch]
            width = max(len(p) for p in group)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in group])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in group])
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=MAX_NEW_TOKENS,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=pad,
            )[:, width:]
            for row in out.tolist():  # tokens up to and including the first EOS
                generated += row.index(eos) + 1 if eos in row else len(row)
    return time.perf_counter() - started, generated


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    model_dir = build_model()
    prompts = write_prompts()
    ids = prompt_ids(model_dir, prompts)

    # The job runs on a Ray that is up, as `ray job submit` finds a cluster: Ray's own start is not its cost.
    from lmforge.config import RayConfig
    from lmforge.runtime import init_ray

    init_ray(RayConfig(num_cpus=4))
    job_s, job_n, job_tokens = run_job(model_dir, prompts)
    one_s, _, _ = run_job(model_dir, prompts, limit=1)
    loop_s, loop_tokens = hf_generate(model_dir, ids, batch=1)
    batched_s, batched_tokens = hf_generate(model_dir, ids, batch=HF_BATCH)
    steady_s = max(job_s - one_s, 1e-9)

    rows = [
        ("(a) lmforge batch-infer (Ray Data + vLLM), end to end", job_s, job_n, job_tokens),
        ("(a) steady: minus the 1-prompt job (engine start-up)", steady_s, job_n - 1, job_tokens),
        ("(b) transformers generate, loop, batch 1", loop_s, len(ids), loop_tokens),
        (f"(c) transformers generate, batch {HF_BATCH}, left padding", batched_s, len(ids), batched_tokens),
    ]
    import torch
    import transformers

    params = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_pretrained(model_dir).parameters())
    lines = [
        f"# Batch inference, {datetime.date.today()}",
        (f"machine: nproc {os.cpu_count()}, {platform.processor() or platform.machine()}; load average "
        f"{load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} at start; torch threads {torch.get_num_threads()}"),
        f"model: Llama {MODEL} ({params / 1e6:.1f}M parameters, vocab 8000), fp32, random weights, greedy",
        (f"prompts: {N_PROMPTS} (mean {sum(map(len, ids)) / len(ids):.0f} tokens in the chat template), "
        f"up to {MAX_NEW_TOKENS} new tokens each; 1-prompt job (fixed cost): {one_s:.1f} s"),
        "",
        f"| {'engine':<62} | {'seconds':>8} | {'prompts/s':>9} | {'gen tokens/s':>12} |",
        f"|{'-' * 64}|{'-' * 9}:|{'-' * 10}:|{'-' * 13}:|",
    ]
    lines += [f"| {name:<62} | {s:8.1f} | {n / s:9.2f} | {t / s:12.1f} |" for name, s, n, t in rows]
    a, b, c = job_n / job_s, len(ids) / loop_s, len(ids) / batched_s
    lines += ["", (f"steady-state speedup (a steady / b): {((job_n - 1) / steady_s) / b:.2f}x, "
              f"(a steady / c): {((job_n - 1) / steady_s) / c:.2f}x"),
              f"RESULT speedup_vs_hf_loop={a / b:.2f} speedup_vs_hf_batched={a / c:.2f}"]
    text = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text, encoding="utf-8")
    print(text, end="")


if __name__ == "__main__":
    main()
