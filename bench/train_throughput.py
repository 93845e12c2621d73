"""Training throughput: lmforge's pretrain path (Ray Train + DeepSpeed ZeRO-3, 2 workers) against a plain
single-process PyTorch loop on the same model and batches, at ~1M, ~10M and ~50M parameters.

Data: the shared pretraining files, tokenized by a byte-level BPE (8k vocabulary, `train_tokenizer`)
and packed by `run_prepare_pretrain` into 1024-token blocks, both cached under bench/work/. Models:
Llama built from a config (`build_model`, fp32, untied head, head_dim 32), sizes in SIZES. Every run:
micro batch 2 rows x 1024 tokens; one optimizer step = 4 rows (4,096 tokens), AdamW (torch's fused
kernel, as run_pretrain builds it), gradient clipping 1.0, constant lr.

Why 2,048 tokens per micro batch (a quarter of configs/cluster's 4 x 2048): ZeRO-3's traffic per micro
batch (all-gather the parameters for the forward and again for the backward, reduce-scatter the
gradients) grows with the parameters, the compute with the tokens. At 512 tokens a 46M model spent
about as long in gloo (~0.55 s, the floor measured with bare all-gathers) as a third of its compute,
so the bench measured loopback TCP rather than training.

Measured one after the other, per size:
  ours      `run_pretrain`: 2 Ray Train workers x 1 CPU (Ray sets OMP_NUM_THREADS=1, so 1 torch thread
            each), gloo, fp32, ZeRO-3 / ZeRO-2 / stage 0, and ZeRO-3 with gradient checkpointing; a fresh
            run_name per run; tokens/s from the run's metrics.jsonl (all workers summed);
  plain     fresh processes (spawned, so a peak RSS is its own), the model from the same `build_model`,
            fused torch AdamW, the same rows in the same order (the run's epoch 0 order), 2 micro batches
            accumulated per step: 1 process x 1 thread (run before and after ours, the better counts),
            1 process x 2 threads, and 2 processes x 1 thread at once (each on the same rows).
tokens/s counts tokens with a label (as the training loop does); a step's time runs from fetching its
batch to the end of the optimizer step. Steady state: the median over the steps after WARMUP_STEPS.

Per core = tokens/s / cores used. The overhead is plain per core over ours per core, with both cores
busy in both: the better of plain at 2 threads and 2 plain processes at once (a data-parallel run with
no communication at all, the ceiling for ours). A lone 1-thread process runs 10-17% faster per core
than two at once here (50M: 242 vs 218 tokens/s in this bench, 252 vs 208-212 in a profile; the cores
share caches and memory bandwidth), so the table also gives the ratio against it ("alone"). RESULT uses the
largest size (compute dominates there; the small sizes show the fixed costs: gloo, ZeRO gathers, Ray Data).

    make bench                                              # .venv/bin/python bench/train_throughput.py
    .venv/bin/python bench/train_throughput.py --quick      # 1M only, fewer steps: a smoke check
    .venv/bin/python bench/train_throughput.py --sizes 50M  # only the size RESULT uses

Writes bench/results/train_throughput.txt; the last line printed is the RESULT line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
import transformers

from lmforge import REPO_DIR as REPO  # the checkout
from lmforge.config import ModelConfig
from lmforge.train.batches import model_inputs, pretrain_batch
from lmforge.train.model import build_model, flops_per_token, model_config

SHARED_DATA = Path(os.environ.get("LMFORGE_SHARED_DATA", REPO.parent / "shared" / "data"))
WORK = REPO / "bench" / "work" / "train_throughput"
RESULTS = REPO / "bench" / "results" / "train_throughput.txt"
RAY_TEMP = Path(f"/tmp/lmforge-bench-{os.getpid()}")  # short: Ray's socket paths are length-limited

BLOCK_SIZE, BLOCKS = 1024, 128
MICRO_BATCH, WORKERS = 2, 2
GLOBAL_BATCH = MICRO_BATCH * WORKERS  # accumulation 1 for ours, 2 micro batches per step for plain
LR, SEED, WARMUP_STEPS = 3e-4, 0, 2
_LLAMA = {"max_position_embeddings": 1024, "tie_word_embeddings": False}
SIZES = {  # head_dim 32 everywhere; parameters counted with the 8k vocabulary (embedding + head)
    "1M": {**_LLAMA, "hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2,
           "num_attention_heads": 2, "num_key_value_heads": 2},
    "10M": {**_LLAMA, "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 8,
            "num_attention_heads": 8, "num_key_value_heads": 8},
    "50M": {**_LLAMA, "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 12,
            "num_attention_heads": 16, "num_key_value_heads": 16},
}
STEPS = {"1M": 12, "10M": 8, "50M": 6}  # including WARMUP_STEPS; bigger models: fewer, longer steps
QUICK_STEPS = {"1M": 6}
PLAIN_ALONE = "plain torch, 1 process x 1 thread"
OURS = (("ZeRO-3", 3, False), ("ZeRO-2", 2, False), ("no ZeRO", 0, False), ("ZeRO-3 + grad ckpt", 3, True))


def prepare_data() -> Path:
    """bench/work/train_throughput/data: BLOCKS blocks of BLOCK_SIZE tokens (built once, then reused)."""
    from lmforge.config import PretrainDataConfig, SourceConfig, TokenizerTrainConfig
    from lmforge.data.stages.prepare_pretrain import run_prepare_pretrain
    from lmforge.data.stages.train_tokenizer import train_tokenizer

    tokenizer, data = WORK / "tokenizer", WORK / f"data-{BLOCK_SIZE}"
    sources = [SourceConfig(path=str(p)) for p in sorted((SHARED_DATA / "pretrain").iterdir())]
    if not (tokenizer / "tokenizer.json").is_file():
        train_tokenizer(TokenizerTrainConfig(sources=sources, output_dir=str(tokenizer), vocab_size=8000))
    if not (data / "manifest.json").is_file():
        run_prepare_pretrain(PretrainDataConfig(
            sources=sources, tokenizer=str(tokenizer), output_dir=str(data),
            pack={"block_size": BLOCK_SIZE}, mix={"total_tokens": BLOCKS * BLOCK_SIZE}))
    return data


def run_ours(data_dir: Path, size: str, steps: int, stage: int, checkpointing: bool) -> dict:
    """One `run_pretrain` under a fresh run name;
    steady tokens/s and peak worker RSS from its metrics.jsonl."""
    from lmforge.config import TrainConfig
    from lmforge.train.run import run_pretrain

    runs = WORK / "runs"
    name = f"{size}-zero{stage}{'-gc' if checkpointing else ''}-{time.strftime('%H%M%S')}"
    cfg = TrainConfig.model_validate({
        "run_name": name, "storage_path": str(runs),
        "model": {"architecture": "llama", "config": SIZES[size], "gradient_checkpointing": checkpointing},
        "data": {"dir": str(data_dir)},
        "zero": {"stage": stage, "precision": "fp32"},
        "optim": {"lr": LR, "schedule": "constant"},
        "num_workers": WORKERS, "global_batch_size": GLOBAL_BATCH, "micro_batch_size": MICRO_BATCH,
        "max_steps": steps, "seed": SEED,
        "checkpoint": {"every_steps": steps, "keep_last": 1},  # only the final save, after the timed steps
    })
    started = time.perf_counter()
    run_pretrain(cfg)
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in (runs / name / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(runs / name)  # ZeRO checkpoints of the 50M model are ~0.7 GB each
    steady = [row["tokens_per_s"] for row in rows if row["step"] > WARMUP_STEPS]
    return {"tokens_per_s": statistics.median(steady), "steps": len(steady), "cores": WORKERS,
            "peak_rss_mb": max(row["peak_rss_mb"] for row in rows), "wall_s": wall}


def epoch_rows(data_dir: Path, count: int) -> list[tuple]:
    """The first `count` (input_ids, doc_lens) rows of epoch 0 in the order `run_pretrain` trains on them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lmforge.train.data import epoch_order, load_train_data

    data = load_train_data(str(data_dir))
    wanted = epoch_order(data, 0, SEED, eval_rows=0)[:count]
    table = pa.concat_tables(pq.read_table(f, columns=["block", "input_ids", "doc_lens"]) for f in data.files)
    by_id = {block: i for i, block in enumerate(table.column("block").to_pylist())}
    ids, doc_lens = table.column("input_ids").to_pylist(), table.column("doc_lens").to_pylist()
    return [(ids[by_id[block]], doc_lens[by_id[block]]) for block in wanted.tolist()]


def plain_torch_loop(model: dict, vocab_size: int, rows: list[tuple], threads: int) -> dict:
    """In a fresh process: the baseline loop; per-step tokens/s and this process's peak RSS."""
    torch.set_num_threads(threads)
    net = build_model(ModelConfig.model_validate(model), vocab_size, SEED)
    net.train()
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=LR, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, fused=True
    )
    accumulation = GLOBAL_BATCH // MICRO_BATCH
    per_step = []
    for first in range(0, len(rows) - GLOBAL_BATCH + 1, GLOBAL_BATCH):
        started, tokens = time.perf_counter(), 0
        for micro in range(first, first + GLOBAL_BATCH, MICRO_BATCH):
            ids, doc_lens = zip(*rows[micro:micro + MICRO_BATCH], strict=True)
            inputs = model_inputs("llama", pretrain_batch(ids, doc_lens), doc_lens)
            (net(**inputs).loss / accumulation).backward()
            tokens += int((inputs["labels"] != -100).sum())
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        per_step.append(tokens / (time.perf_counter() - started))
    return {"per_step": per_step, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_plain(rows: list[tuple], vocab_size: int, size: str, threads: int, processes: int = 1) -> dict:
    """`processes` fresh plain loops at once (each on the same rows, `threads` threads); tokens/s summed."""
    model = {"architecture": "llama", "config": SIZES[size]}
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=processes, mp_context=get_context("spawn")) as pool:
        runs = [pool.submit(plain_torch_loop, model, vocab_size, rows, threads) for _ in range(processes)]
        outs = [run.result() for run in runs]
    steady = [out["per_step"][WARMUP_STEPS:] for out in outs]
    return {"tokens_per_s": sum(statistics.median(s) for s in steady), "steps": len(steady[0]),
            "cores": threads * processes, "peak_rss_mb": max(out["peak_rss_mb"] for out in outs),
            "wall_s": time.perf_counter() - started}


def measure_size(data_dir: Path, size: str, steps: int, vocab_size: int) -> list[dict]:
    """One row per setting, measured in the order: plain 1 thread, plain 2 threads, plain 2 processes at
    once, ours in every variant, plain 1 thread again (the better of its two runs counts)."""
    rows = epoch_rows(data_dir, steps * GLOBAL_BATCH)
    config = model_config(ModelConfig(architecture="llama", config=SIZES[size]), vocab_size)
    with torch.device("meta"):
        params = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_config(config).parameters())
    flops = flops_per_token(config, BLOCK_SIZE)
    plain = [(PLAIN_ALONE, lambda: run_plain(rows, vocab_size, size, 1)),
             ("plain torch, 1 process x 2 threads", lambda: run_plain(rows, vocab_size, size, 2)),
             ("plain torch, 2 processes x 1 thread at once", lambda: run_plain(rows, vocab_size, size, 1, 2))]
    ours = [
        (f"ours {label}, 2 workers x 1 thread", lambda s=stage, gc=gc: run_ours(data_dir, size, steps, s, gc))
        for label, stage, gc in OURS
    ]
    results: dict[str, dict] = {}
    for label, run in [*plain, *ours, plain[0]]:
        result = {"size": size, "params": params, "run": label, "runs": 1, **run()}
        result["per_core"] = result["tokens_per_s"] / result["cores"]
        result["gflops_per_core"] = result["per_core"] * flops / 1e9
        print(f"  {size} {label}: {result['tokens_per_s']:.0f} tokens/s, {result['per_core']:.0f} per core, "
              f"peak RSS {result['peak_rss_mb']:.0f} MB, {result['wall_s']:.0f} s", flush=True)
        if label in results:
            result["runs"] += results[label]["runs"]
            result = max(result, results[label], key=lambda r: r["tokens_per_s"]) | {"runs": result["runs"]}
        results[label] = result
    plain_busy = max(
        r["per_core"] for r in results.values() if r["run"].startswith("plain") and r["cores"] == WORKERS
    )
    for result in results.values():
        result["overhead"] = plain_busy / result["per_core"]
        result["overhead_alone"] = results[PLAIN_ALONE]["per_core"] / result["per_core"]
    return list(results.values())


def table(results: list[dict]) -> list[str]:
    lines = [
        (
            "| size | params | run | tokens/s | cores | tokens/s per core | model GFLOP/s per core "
            "| plain on both cores / this, per core | plain alone on 1 core / this | peak RSS MB per process "
            "| steps timed | runs (best) | wall s |"
        ),
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['size']} | {r['params'] / 1e6:.1f}M | {r['run']} | {r['tokens_per_s']:,.0f} "
            f"| {r['cores']} | {r['per_core']:,.0f} | {r['gflops_per_core']:.1f} | {r['overhead']:.2f}x "
            f"| {r['overhead_alone']:.2f}x | {r['peak_rss_mb']:,.0f} | {r['steps']} | {r['runs']} "
            f"| {r['wall_s']:.0f} |"
        )
    return lines


def start_ray() -> None:
    """A private local Ray with 4 logical CPUs on this 2-core machine (as the tests and the demo use)."""
    import ray

    # Ray Train polls its workers every 2 s and the final checkpoint waits for a poll: only the wall
    # time of a run shrinks, not the timed steps (Ray processes inherit this from the driver).
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    ray.init(
        address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, _temp_dir=str(RAY_TEMP)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="only the 1M model, 6 steps: a smoke check")
    parser.add_argument("--sizes", nargs="+", choices=list(STEPS), default=list(STEPS),
                        help="model sizes to measure (RESULT uses the largest given); default: all")
    args = parser.parse_args()
    steps = QUICK_STEPS if args.quick else {size: STEPS[size] for size in STEPS if size in args.sizes}
    started, load = time.perf_counter(), os.getloadavg()
    start_ray()
    data_dir = prepare_data()
    from lmforge.train.data import load_train_data

    vocab_size = load_train_data(str(data_dir)).vocab_size
    results = []
    for size, count in steps.items():
        print(f"{size}: {count} steps ({WARMUP_STEPS} warm-up) per run", flush=True)
        results += measure_size(data_dir, size, count, vocab_size)
    largest = [r for r in results if r["size"] == list(steps)[-1]]
    ours = next(r for r in largest if r["run"].startswith("ours ZeRO-3,"))
    text = "\n".join(
        [
            f"# Training throughput, {datetime.date.today().isoformat()}",
            "",
            (
                f"- machine: nproc {os.cpu_count()}; load average {load[0]:.1f} / {load[1]:.1f} (1 / 5 min) "
                f"at the start, {os.getloadavg()[0]:.1f} at the end (other jobs share the 2 cores); run "
                f"took {time.perf_counter() - started:.0f} s"
            ),
            (
                f"- data: shared pretraining files, byte-level BPE 8k vocabulary, {BLOCK_SIZE}-token "
                f"blocks; micro batch {MICRO_BATCH}, {GLOBAL_BATCH} rows ({GLOBAL_BATCH * BLOCK_SIZE} "
                "tokens) per optimizer step; fp32; AdamW; tokens/s = median over the steps after "
                f"{WARMUP_STEPS} warm-up steps"
            ),
            (
                "- ours: run_pretrain, 2 Ray Train workers x 1 CPU (OMP_NUM_THREADS=1); plain: fresh "
                "processes, torch.set_num_threads(1 or 2); per core = tokens/s / cores used; overhead = "
                "best plain per core with both cores busy (2 threads, or 2 processes at once) / this per "
                "core; 'alone' = plain 1 process x 1 thread (the other core idle) / this"
            ),
            (
                f"- RESULT uses the {ours['size']} model ({ours['params'] / 1e6:.1f}M parameters), ours = "
                "ZeRO-3 without gradient checkpointing"
            ),
            "",
            *table(results),
        ]
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text + "\n", encoding="utf-8")
    print(text)
    print(
        f"ours ZeRO-3 against plain alone on 1 core (the other idle): {ours['overhead_alone']:.2f}x per core"
    )
    result = f"RESULT overhead_vs_plain_torch={ours['overhead']:.2f} tokens_per_s={ours['tokens_per_s']:.0f}"
    with RESULTS.open("a", encoding="utf-8") as sink:
        sink.write("\n" + result + "\n")
    print(result)


if __name__ == "__main__":
    main()
