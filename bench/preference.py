"""Preference training cost: DPO against SFT on the same model, tokens and workers, and DPO with the
reference log-probs precomputed by prepare-preference against a frozen reference model in the loop.

Data: the shared Chinese DPO sample (dpo_zh_demo.json, 300 pairs) rendered by prepare-preference at 256
tokens a sequence, so a row holds whole pairs in 512 tokens; for SFT, prepare-sft renders the chosen side
of the same pairs (same prompts and answers, written out as ShareGPT conversations) into rows of 512
tokens. Tokenizer: a byte-level BPE with 8k entries learned from the shared pretraining files. Model: a
Llama of ~17M parameters built from a config and saved as the "SFT model" (fp32, untied head), which is
also the reference. Every run: `lmforge align` / `lmforge sft` code paths (Ray Train + DeepSpeed ZeRO-3,
fp32, gloo), 2 workers x 1 CPU, micro batch 1 row, 2 rows per step, STEPS steps; a fresh run each.

Measured per run, from its metrics.jsonl over the steps after WARMUP_STEPS (medians):
  step time     global_batch_size / samples_per_s (fetching the batch to the end of the optimizer step)
  tokens/s      rows/s x the data's tokens per row (every token forwarded, prompt included: a DPO row's
                prompts are there twice, once per answer, and cost as much as answers)
  peak RSS      the largest worker's ru_maxrss at the end (MB)
RESULT: dpo_overhead_vs_sft = SFT tokens/s per core / DPO (precomputed) tokens/s per core;
        ref_precompute_speedup = in-loop step time / precomputed step time;
        ref_memory_ratio = peak RSS precomputed / in-loop, explained against the reference's parameter bytes
        per worker (ZeRO-3 partitions the frozen copy like the policy: 4 N / workers bytes in fp32).

    .venv/bin/python bench/preference.py            # ~8 minutes on 2 cores
    .venv/bin/python bench/preference.py --quick    # 4 steps each: a smoke check

Writes bench/results/preference.txt; the last line printed is the RESULT line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import time
from pathlib import Path

from lmforge import REPO_DIR as REPO  # the checkout

SHARED_DATA = Path(os.environ.get("LMFORGE_SHARED_DATA", REPO.parent / "shared" / "data"))
WORK = REPO / "bench" / "work" / "preference"
RESULTS = REPO / "bench" / "results" / "preference.txt"
RAY_TEMP = Path(f"/tmp/lmforge-bench-{os.getpid()}")  # short: Ray's socket paths are length-limited

MAX_LENGTH = 256  # per sequence; a preference row holds 2 x MAX_LENGTH, an SFT row the same
WORKERS, GLOBAL_BATCH, STEPS, QUICK_STEPS, WARMUP_STEPS = 2, 2, 24, 4, 2
MODEL = {"hidden_size": 384, "intermediate_size": 1024, "num_hidden_layers": 6, "num_attention_heads": 12,
         "num_key_value_heads": 12, "max_position_embeddings": 1024, "tie_word_embeddings": False}


def prepare() -> tuple[Path, Path, Path]:
    """(model dir, preference rows with ref_logps, SFT rows), built once under bench/work/preference."""
    import transformers

    from lmforge.align.prepare import run_prepare_preference
    from lmforge.config import (
        ModelConfig,
        PreferenceDataConfig,
        SFTDataConfig,
        SourceConfig,
        TokenizerTrainConfig,
    )
    from lmforge.data.stages.prepare_sft import run_prepare_sft
    from lmforge.data.stages.train_tokenizer import train_tokenizer
    from lmforge.train.model import build_model

    tokenizer, model_dir = WORK / "tokenizer", WORK / "model"
    pairs, sft = WORK / "pairs", WORK / "sft"
    if not (tokenizer / "tokenizer.json").is_file():
        sources = [SourceConfig(path=str(p)) for p in sorted((SHARED_DATA / "pretrain").iterdir())]
        train_tokenizer(TokenizerTrainConfig(sources=sources, output_dir=str(tokenizer), vocab_size=8000))
    if not (model_dir / "config.json").is_file():
        vocab = len(transformers.AutoTokenizer.from_pretrained(tokenizer))  # special tokens included
        model = build_model(ModelConfig(architecture="llama", config=MODEL), vocab, seed=0)
        model.save_pretrained(model_dir)
        transformers.AutoTokenizer.from_pretrained(tokenizer).save_pretrained(model_dir)
    source = SHARED_DATA / "preference" / "dpo_zh_demo.json"
    if not (pairs / "manifest.json").is_file():
        run_prepare_preference(PreferenceDataConfig.model_validate({
            "tokenizer": str(model_dir), "output_dir": str(pairs), "max_length": MAX_LENGTH,
            "sources": [{"path": str(source)}], "reference": {"model_dir": str(model_dir), "workers": 2}}))
    if not (sft / "manifest.json").is_file():
        chosen = WORK / "chosen.jsonl"
        with chosen.open("w", encoding="utf-8") as sink:
            for record in json.loads(source.read_text(encoding="utf-8")):
                answer = record["chosen"]
                turns = [*record["conversations"], answer if isinstance(answer, dict) else
                         {"from": "gpt", "value": answer}]
                sink.write(json.dumps({"conversations": turns}, ensure_ascii=False) + "\n")
        run_prepare_sft(SFTDataConfig.model_validate({
            "tokenizer": str(model_dir), "output_dir": str(sft), "max_length": 2 * MAX_LENGTH,
            "sources": [{"path": str(chosen)}]}))
    return model_dir, pairs, sft


def run(kind: str, model_dir: Path, data_dir: Path, steps: int, **fields) -> dict:
    """One align or sft run under a fresh name; steady step time, tokens/s and peak worker RSS."""
    from lmforge.config import AlignTrainConfig, TrainConfig
    from lmforge.train.run import run_align, run_sft

    runs = WORK / "runs"
    name = f"{kind}-{time.strftime('%H%M%S')}"
    settings = {
        "run_name": name, "storage_path": str(runs), "model": {"path": str(model_dir)},
        "data": {"dir": str(data_dir)}, "zero": {"stage": 3, "precision": "fp32"},
        "optim": {"lr": 1e-5, "schedule": "constant"}, "num_workers": WORKERS,
        "global_batch_size": GLOBAL_BATCH, "micro_batch_size": 1, "max_steps": steps,
        "checkpoint": {"every_steps": steps, "keep_last": 1}, **fields,
    }
    started = time.perf_counter()
    if kind == "sft":
        run_sft(TrainConfig.model_validate(settings))
    else:
        run_align(AlignTrainConfig.model_validate(settings))
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in (runs / name / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(runs / name)
    manifest = json.loads((data_dir / "manifest.json").read_text())["outputs"]
    tokens_per_row = manifest["tokens"] / manifest["rows"]
    steady = [row for row in rows if row["step"] > WARMUP_STEPS]
    rows_per_s = statistics.median(row["samples_per_s"] for row in steady)
    return {"kind": kind, "step_s": GLOBAL_BATCH / rows_per_s, "tokens_per_s": rows_per_s * tokens_per_row,
            "tokens_per_row": tokens_per_row, "peak_rss_mb": max(row["peak_rss_mb"] for row in rows),
            "steps": len(steady), "wall_s": wall}


def start_ray() -> None:
    import ray

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # the final save waits for a poll
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             _temp_dir=str(RAY_TEMP))


def machine_load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) {five:.2f} (5 min) at the end"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="4 steps a run: a smoke check")
    args = parser.parse_args()
    steps = QUICK_STEPS if args.quick else STEPS
    start_ray()
    model_dir, pairs, sft = prepare()
    from lmforge.config import ModelConfig
    from lmforge.train.model import model_config

    config = model_config(ModelConfig(path=str(model_dir)), 0)
    import torch
    import transformers

    with torch.device("meta"):
        params = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_config(config).parameters())
    # SFT runs first and last and the faster counts: the first fit of a process pays for warm-ups the
    # later ones do not (measured: SFT first 1.39 s a step, DPO after it 1.08 s at the same row length)
    first_sft = run("sft", model_dir, sft, steps)
    precomputed = run("dpo-precomputed", model_dir, pairs, steps, reference="precomputed")
    in_loop = run("dpo-in-loop", model_dir, pairs, steps, reference="in_loop")
    last_sft = run("sft", model_dir, sft, steps)
    sft_run = max(first_sft, last_sft, key=lambda r: r["tokens_per_s"])
    results = [first_sft, last_sft, precomputed, in_loop]
    overhead = sft_run["tokens_per_s"] / precomputed["tokens_per_s"]  # same workers: per core cancels
    speedup = in_loop["step_s"] / precomputed["step_s"]
    memory = precomputed["peak_rss_mb"] / in_loop["peak_rss_mb"]
    reference_mb = 4 * params / WORKERS / 2**20
    header = (f"# bench/preference.py, {datetime.date.today()}, {WORKERS} workers x 1 CPU, {steps} steps "
              f"(median of steps > {WARMUP_STEPS}), model {params / 1e6:.1f}M parameters fp32, ZeRO-3")
    columns = (f"{'run':<18}{'step s':>8}{'tokens/s':>10}{'tokens/s/core':>15}{'tokens/row':>12}"
               f"{'peak RSS MB':>13}")
    table = [f"{r['kind']:<18}{r['step_s']:>8.2f}{r['tokens_per_s']:>10.0f}"
             f"{r['tokens_per_s'] / WORKERS:>15.0f}{r['tokens_per_row']:>12.0f}{r['peak_rss_mb']:>13.0f}"
             for r in results]
    notes = [
        (f"- DPO's overhead over SFT per core: {overhead:.2f} against the faster SFT run (a DPO row holds "
         "two answers to each prompt; the loss adds a per-sequence log-prob sum over the logits)"),
        (f"- reference in the loop: {in_loop['step_s'] - precomputed['step_s']:+.2f} s a step (one more "
         f"forward pass, no backward); peak RSS {in_loop['peak_rss_mb'] - precomputed['peak_rss_mb']:+.0f} "
         f"MB, against the frozen copy's fp32 partition of {reference_mb:.0f} MB per worker "
         f"(4 x {params / 1e6:.1f}M / {WORKERS}) plus the whole fp32 checkpoint ({2 * reference_mb:.0f} MB) "
         "that each worker reads while loading the copy before ZeRO-3 partitions it"),
        f"- machine: {machine_load()}",
    ]
    lines = [header, columns, *table, *notes]
    result = (f"RESULT dpo_overhead_vs_sft={overhead:.2f} ref_precompute_speedup={speedup:.2f} "
              f"ref_memory_ratio={memory:.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join([*lines, result]) + "\n", encoding="utf-8")
    print("\n".join(lines))
    print(result)


if __name__ == "__main__":
    main()
