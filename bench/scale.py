"""Corpora larger than memory: prepare-pretrain and one epoch of training reads with a small object store.

(a) prepare-pretrain on corpora of 250 MB, 500 MB and 1 GB (bench/data_pipeline.py's corpus: the
    shared pretraining files replicated with small random edits, one JSONL file under bench/work/,
    reused; its tokenizer; exact + near dedup, block 1024, 2 workers), each on a fresh local Ray with
    4 logical CPUs and a 512 MB object store (`ray.object_store_memory_mb`), so the corpus cannot fit
    and Ray spills. The driver is a child process that only starts Ray, runs an untimed 1 MB warm-up
    and then `run_prepare_pretrain`; this process samples memory meanwhile (every 0.2 s, psutil):
    the driver's RSS and that of every process in Ray's worker pool (`ray::...` processes below the
    driver). Spilled bytes are the raylet's own counters (store_stats.spilled_bytes_total, as Ray
    Data's stats read them), taken before and after the timed run.
(b) one epoch of training reads, without the model: token blocks of 250 MB and 1 GB (int32 tokens;
    the smallest prepare run's blocks tiled with new block ids, since dedup leaves only a few MB of
    any size of this corpus), ordered by `epoch_order`, dealt out by `worker_epoch_dataset` to 2
    actors standing in for Ray Train's workers; each iterates `ds.iterator().iter_batches` as
    train/loop.py does, with the DataConfig execution options train/run.py passes (preserve_order).

RSS counts a process's resident pages; "private" subtracts its shared ones (RssFile + RssShmem:
mapped libraries and object-store pages it read, which Ray's shared memory holds once for all).
Targets: (a) s per MB and driver peak RSS at 1 GB <= 1.2x those at 250 MB; the largest worker's peak
set by batch sizes (read.chunk_mb, tokenize.batch_size), not the corpus; (b) a reader's peak flat.

    flock /tmp/lmforge-heavy.lock .venv/bin/python bench/scale.py          # all sizes: ~25 min here
    .venv/bin/python bench/scale.py --sizes 20,40                          # quick check: ~3 min
    .venv/bin/python bench/scale.py --sizes 250 --train-sizes ""           # one size (saved)
    .venv/bin/python bench/scale.py --reuse                                # the report from saved runs

Each run is saved as JSON under bench/work/scale/ (with its log); --reuse takes a saved run instead
of measuring again, so a long bench can be run one size per command. Outputs are deleted after each
run; corpora stay in bench/work/ (git-ignored). Writes bench/results/scale.md; the last line printed
is the RESULT line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import ray
from data_pipeline import (
    LMFORGE_STAGES,
    SEED,
    WORK,
    StageClock,
    TreeCpu,
    build_corpus,
    build_tokenizer,
    code_version,
    machine,
    machine_busy_seconds,
)

from lmforge import REPO_DIR as REPO  # the checkout

SAVED = WORK / "scale"
RESULTS = REPO / "bench" / "results" / "scale.md"
SIZES_MB, OBJECT_STORE_MB, NUM_CPUS, WORKERS = (250, 500, 1000), 512, 4, 2
WARMUP_MB, MICRO_BATCH, BLOCK_SIZE = 1, 8, 1024
MB = 1e6


@dataclass
class Measured:
    """One run: what went in, how long it took, memory peaks (MB of 2^20 bytes), spilling."""

    kind: str  # "prepare" or "train-iter"
    size_mb: int  # the requested size
    mb: float = 0.0  # input: corpus text (prepare) or int32 tokens of the blocks (train-iter), 10^6 bytes
    seconds: float = 0.0
    tokens: int = 0  # output tokens (prepare) or tokens read by all ranks (train-iter)
    spilled_mb: float = 0.0
    restored_mb: float = 0.0
    driver_rss: float = 0.0
    driver_private: float = 0.0
    worker_rss: float = 0.0  # the largest process of Ray's worker pool
    worker_private: float = 0.0
    worker_title: str = ""  # what the worker with the largest private peak ran at that peak
    reader_rss: float = 0.0  # train-iter: the larger of the two stand-in training workers
    reader_private: float = 0.0
    cpu_seconds: float = 0.0
    machine_cores: float = 0.0  # busy CPUs of the whole machine meanwhile, other users included
    others_cores: float = 0.0  # the same less this run's own CPU: other users' load
    load: list[float] = field(default_factory=list)  # load average (1, 5 min) at the start
    # prepare: per step of run_prepare_pretrain, [seconds, driver peak RSS, driver peak private RSS]
    driver_steps: dict[str, list[float]] = field(default_factory=dict)
    code: str = ""


# ---------------------------------------------------------------------------------------------
# Memory


class PeakMemory:
    """Peak RSS and private RSS of a driver process and of each Ray worker-pool process below it."""

    def __init__(self, driver: psutil.Process, interval: float = 0.2):
        self.driver, self.interval = driver, interval
        self.peaks: dict[tuple[int, float], list] = {}  # (pid, start) -> [rss, private, title then]
        self.driver_series: list[tuple[float, int, int]] = []  # (perf_counter, rss, private)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._keep_polling, daemon=True)
        self._thread.start()

    def _sample(self, proc: psutil.Process, title: str) -> None:
        try:
            mem, key = proc.memory_info(), (proc.pid, proc.create_time())
        except psutil.Error:
            return
        peak = self.peaks.setdefault(key, [0, 0, title])
        peak[0] = max(peak[0], mem.rss)
        if mem.rss - mem.shared > peak[1]:
            peak[1], peak[2] = mem.rss - mem.shared, title
        if title == "driver":
            self.driver_series.append((time.perf_counter(), mem.rss, mem.rss - mem.shared))

    def _keep_polling(self) -> None:
        while not self._done.wait(self.interval):
            self._sample(self.driver, "driver")
            try:
                children = self.driver.children(recursive=True)
            except psutil.Error:
                continue
            for proc in children:
                try:
                    title = proc.cmdline()[0] if proc.cmdline() else ""
                except psutil.Error:
                    continue
                if title.startswith("ray::"):  # the worker pool: tasks, actors, idle workers
                    self._sample(proc, title.split()[0])

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def largest(self, match: str) -> tuple[float, float, str]:
        """The largest peak RSS and the largest peak private RSS (MB) among processes whose title at
        their private peak contains `match`, and that title of the process with the largest private peak."""
        found = [p for p in self.peaks.values() if match in p[2]]
        if not found:
            return 0.0, 0.0, ""
        _, private, title = max(found, key=lambda p: p[1])
        return max(p[0] for p in found) / 2**20, private / 2**20, title

    def driver_steps(self, marks: list[tuple[str, float]], end: float) -> dict[str, list[float]]:
        """Per step (marks: (label, start) in order, the last running to `end`): [seconds, driver peak
        RSS, driver peak private RSS], MB."""
        steps: dict[str, list[float]] = {}
        for (label, t0), (_, t1) in zip(marks, [*marks[1:], ("end", end)], strict=True):
            inside = [(rss, private) for t, rss, private in self.driver_series if t0 <= t <= t1] or [(0, 0)]
            row = steps.setdefault(label, [0.0, 0.0, 0.0])
            row[0] += t1 - t0
            row[1] = max(row[1], max(r for r, _ in inside) / 2**20)
            row[2] = max(row[2], max(p for _, p in inside) / 2**20)
        return steps


def measure(kind: str, size_mb: int, *args: str) -> Measured:
    """Run `kind` in a driver child process (this file, --driver), sampling its memory; the child
    reports mb, seconds, tokens and spilled bytes."""
    log = SAVED / f"{kind}-{size_mb}mb.log"
    load, cpu, busy, wall = os.getloadavg(), TreeCpu(), machine_busy_seconds(), time.perf_counter()
    with log.open("w") as err:
        child = subprocess.Popen([sys.executable, __file__, "--driver", kind, *args],
                                 stdout=subprocess.PIPE, stderr=err, text=True)
        peaks = PeakMemory(psutil.Process(child.pid))
        out, _ = child.communicate()
        peaks.stop()
    wall = time.perf_counter() - wall
    if child.returncode:
        raise RuntimeError(f"{kind} {size_mb} MB failed (exit {child.returncode}); see {log}")
    reported = json.loads(out.strip().splitlines()[-1])
    marks, end = reported.pop("marks", []), reported.pop("end", 0.0)
    run = Measured(kind, size_mb, **reported, load=list(load[:2]), code=code_version())
    run.driver_steps = peaks.driver_steps(marks, end)
    run.driver_rss, run.driver_private, _ = peaks.largest("driver")
    run.worker_rss, run.worker_private, run.worker_title = peaks.largest("ray::")
    run.reader_rss, run.reader_private, _ = peaks.largest("EpochReader")
    run.cpu_seconds, run.machine_cores = cpu.stop(), (machine_busy_seconds() - busy) / wall
    run.others_cores = max(run.machine_cores - run.cpu_seconds / wall, 0.0)
    print(f"{kind} {size_mb} MB: {run.seconds:.1f} s, {run.seconds / run.mb:.3f} s/MB, driver "
          f"{run.driver_rss:.0f} MB RSS, largest worker {run.worker_rss:.0f} MB ({run.worker_title}), "
          f"spilled {run.spilled_mb:.0f} MB, machine {run.machine_cores:.2f} cores busy", flush=True)
    return run


# ---------------------------------------------------------------------------------------------
# The driver child: `scale.py --driver prepare CORPUS OUT` or `--driver train-iter BLOCKS_DIR`


def start_ray(temp_dir: Path) -> None:
    """A private local Ray (never one already running here) with an object store smaller than the corpus;
    the stage's init_ray finds it initialized and uses it."""
    ray.init(address="local", num_cpus=NUM_CPUS, object_store_memory=OBJECT_STORE_MB * 2**20,
             include_dashboard=False, log_to_driver=False, _temp_dir=str(temp_dir))


def spilled_bytes() -> tuple[int, int]:
    """(spilled, restored) bytes so far, the raylet's counters (what Ray Data's stats report)."""
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    stats = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address)).store_stats
    return stats.spilled_bytes_total, stats.restored_bytes_total


def spilled_since(before: tuple[int, int]) -> dict:
    after = spilled_bytes()
    return {"spilled_mb": (after[0] - before[0]) / 2**20, "restored_mb": (after[1] - before[1]) / 2**20}


def prepare_config(corpus: Path, out: Path):
    from lmforge.config import PretrainDataConfig

    return PretrainDataConfig.model_validate({
        "sources": [{"name": "corpus", "path": str(corpus)}],
        "tokenizer": str(WORK / "tokenizer"),
        "output_dir": str(out),
        "workers": WORKERS,
        "seed": SEED,
        "clean": {"min_chars": 10},
        "dedup": {"exact": True, "near": True, "threshold": 0.8, "num_perm": 128, "ngram": 5},
        "pack": {"block_size": BLOCK_SIZE},
    })


def drive_prepare(corpus: Path, out: Path) -> dict:
    """The timed run, its steps marked as bench/data_pipeline.py marks them (perf_counter is one clock
    for all processes here, so the parent can match them with its memory samples)."""
    from lmforge.data.stages import prepare_pretrain as pretrain
    from lmforge.data.stages import source_records as read_sources
    from lmforge.data.steps import dedup as dedup_dataset

    warmup = WORK / f"corpus-{WARMUP_MB}mb-seed{SEED}.jsonl"
    pretrain.run_prepare_pretrain(prepare_config(warmup, out))
    shutil.rmtree(out)
    targets = [(module, name) for module in (read_sources, pretrain) for name in LMFORGE_STAGES
               if hasattr(module, name)]
    clock = StageClock([*targets, (dedup_dataset, "find_duplicate_clusters")])
    spilled, start = spilled_bytes(), time.perf_counter()
    try:
        manifest = pretrain.run_prepare_pretrain(prepare_config(corpus, out))
    finally:
        clock.restore()
    end = time.perf_counter()
    return {"mb": corpus.stat().st_size / MB, "seconds": end - start,
            "tokens": manifest.counts["total"]["output_tokens"], **spilled_since(spilled),
            "marks": [(LMFORGE_STAGES["start"], start)] + [(LMFORGE_STAGES[n], t) for n, t in clock.marks],
            "end": end}


def drive_train_iter(blocks: Path) -> dict:
    """One epoch of `blocks` read by WORKERS stand-in training workers, as train/run.py hands it out."""
    from ray.data import ExecutionOptions

    from lmforge.train.data import epoch_order, load_train_data, share_epoch_order, worker_epoch_dataset

    data = load_train_data(str(blocks))
    spilled, start = spilled_bytes(), time.perf_counter()
    order = share_epoch_order(epoch_order(data, epoch=0, seed=SEED, eval_rows=0))
    iterators = []
    for rank in range(WORKERS):
        ds = worker_epoch_dataset(data, order, rank, WORKERS, MICRO_BATCH)
        ds = ds.copy(ds)  # what Ray Train's DataConfig.configure does with each dataset
        ds.context.execution_options = ExecutionOptions(preserve_order=True)
        iterators.append(ds.iterator())
    readers = [EpochReader.remote() for _ in range(WORKERS)]
    tokens = sum(ray.get([r.read_epoch.remote(it, MICRO_BATCH) for r, it in zip(readers, iterators,
                                                                                 strict=True)]))
    seconds = time.perf_counter() - start
    return {"mb": data.rows * data.sequence_length * 4 / MB, "seconds": seconds, "tokens": tokens,
            **spilled_since(spilled)}


@ray.remote(num_cpus=1)
class EpochReader:
    """A training worker without the model: train/loop.py's iteration of its epoch dataset."""

    def read_epoch(self, iterator, micro_batch: int) -> int:
        tokens = 0
        for batch in iterator.iter_batches(batch_size=micro_batch, batch_format="numpy", drop_last=True):
            tokens += sum(len(ids) for ids in batch["input_ids"])
        return tokens


def drive(kind: str, args: list[str]) -> None:
    temp = Path(f"/tmp/lmforge-scale-{os.getpid()}")  # short: Ray's socket paths are length-limited
    start_ray(temp)
    try:
        if kind == "prepare":
            result = drive_prepare(Path(args[0]), Path(args[1]))
        else:
            result = drive_train_iter(Path(args[0]))
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# Token blocks for (b)


def tile_blocks(seed_dir: Path, size_mb: int, out: Path) -> Path:
    """A prepare-pretrain output of `size_mb` MB of int32 tokens: seed_dir's blocks repeated, renumbered."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = json.loads((seed_dir / "manifest.json").read_text())
    outputs = manifest["outputs"]
    seed = pa.concat_tables([pq.read_table(seed_dir / s["file"]) for s in outputs["shards"]]).sort_by("block")
    blocks, per_shard = int(size_mb * MB / (outputs["block_size"] * 4)), 8192
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shards = []
    for shard, first in enumerate(range(0, blocks, per_shard)):
        ids = np.arange(first, min(first + per_shard, blocks))
        table = seed.take(pa.array(ids % seed.num_rows)).set_column(0, "block", pa.array(ids, pa.int64()))
        name = f"blocks-{shard:05d}.parquet"
        pq.write_table(table, out / name, compression="zstd")
        shards.append({"shard": shard, "file": name, "blocks": len(ids), "first_block": int(first)})
    outputs.update(dir=str(out), shards=shards, blocks=blocks, tokens=blocks * outputs["block_size"])
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


# ---------------------------------------------------------------------------------------------
# Runs, report


def run_prepare(size_mb: int) -> Measured:
    corpus, out = build_corpus(size_mb), WORK / "out" / f"scale-{size_mb}mb"
    shutil.rmtree(out, ignore_errors=True)
    try:
        run = measure("prepare", size_mb, str(corpus), str(out))
        seed_blocks = SAVED / "seed-blocks"
        if not seed_blocks.is_dir():  # (b)'s blocks come from the first prepared output
            shutil.copytree(out, seed_blocks)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return run


def run_train_iter(size_mb: int) -> Measured:
    seed_blocks = SAVED / "seed-blocks"
    if not seed_blocks.is_dir():
        raise SystemExit(f"{seed_blocks} is missing: run a prepare size first (e.g. --sizes 20)")
    blocks = tile_blocks(seed_blocks, size_mb, WORK / "out" / f"scale-blocks-{size_mb}mb")
    try:
        return measure("train-iter", size_mb, str(blocks))
    finally:
        shutil.rmtree(blocks, ignore_errors=True)


def saved_or_measured(kind: str, size_mb: int, reuse: bool) -> Measured:
    path = SAVED / f"{kind}-{size_mb}mb.json"
    if reuse and path.is_file():
        return Measured(**json.loads(path.read_text()))
    run = run_prepare(size_mb) if kind == "prepare" else run_train_iter(size_mb)
    path.write_text(json.dumps(asdict(run), indent=1))
    return run


def growth(runs: list[Measured], value) -> float:
    return value(runs[-1]) / value(runs[0])


def report(prepare: list[Measured], train: list[Measured]) -> str:
    """Markdown: the table, growth ratios, and the RESULT line last."""
    lines = [
        f"# Corpora larger than memory, {datetime.date.today().isoformat()}",
        "",
        f"- machine: {machine()}; each run on a fresh local Ray, num_cpus={NUM_CPUS}, object store "
        + f"{OBJECT_STORE_MB} MB; prepare: {WORKERS} workers, block {BLOCK_SIZE}, exact + near dedup; "
        + f"train-iter: {WORKERS} readers, micro batch {MICRO_BATCH}",
        f"- code: {(prepare or train)[0].code} (each run's commit in the last column)",
        "- memory in MB (2^20 bytes): peak RSS / peak private RSS (RSS less shared pages: libraries and "
        + "object-store memory the process read); largest worker: the Ray worker-pool process with the "
        + "largest peak; other users' cores: the machine's busy cores less this run's own CPU per "
        + "second (0: quiet)",
        "",
        "| run | input MB | wall s | s per MB | output tokens | spilled MB | driver RSS | driver private | "
        + "largest worker RSS | worker private | reader RSS | reader private | load at start | "
        + "other users' cores | commit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in (*prepare, *train):
        reader = f"{r.reader_rss:.0f} | {r.reader_private:.0f}" if r.kind == "train-iter" else "- | -"
        lines.append(f"| {r.kind} {r.size_mb} MB | {r.mb:.0f} | {r.seconds:.1f} | {r.seconds / r.mb:.3f} | "
                     f"{r.tokens:,} | {r.spilled_mb:.0f} | {r.driver_rss:.0f} | {r.driver_private:.0f} | "
                     f"{r.worker_rss:.0f} | {r.worker_private:.0f} | {reader} | {r.load[0]:.2f} | "
                     f"{r.others_cores:.2f} | {r.code.split()[1]} |")
    if prepare and prepare[-1].driver_steps:
        r = prepare[-1]
        lines += ["", f"Driver memory per step of prepare {r.size_mb} MB (steps as bench/data_pipeline.py "
                  + "times them):", "", "| step | s | driver peak RSS | driver peak private |",
                  "|---|---:|---:|---:|"]
        for label, (s, rss, private) in r.driver_steps.items():  # -: shorter than a memory sample
            memory = f"{rss:.0f} | {private:.0f}" if rss else "- | -"
            lines.append(f"| {label} | {s:.1f} | {memory} |")
    lines += ["", "What the worker with the largest private peak ran at that peak:", ""]
    lines += [f"- {r.kind} {r.size_mb} MB: {r.worker_title}" for r in (*prepare, *train)]
    result = ["RESULT"]
    if len(prepare) > 1:
        a, b = prepare[0].size_mb, prepare[-1].size_mb
        result += [f"s_per_mb_growth={growth(prepare, lambda r: r.seconds / r.mb):.2f}",
                   f"driver_rss_growth={growth(prepare, lambda r: r.driver_rss):.2f}",
                   f"worker_rss_growth={growth(prepare, lambda r: r.worker_rss):.2f}"]
        lines += ["", f"Growth from {a} MB to {b} MB (targets: s per MB and driver RSS <= 1.20; the largest "
                  + "worker flat):",
                  f"- s per MB {growth(prepare, lambda r: r.seconds / r.mb):.2f}x; driver RSS "
                  + f"{growth(prepare, lambda r: r.driver_rss):.2f}x (private "
                  f"{growth(prepare, lambda r: r.driver_private):.2f}x); largest worker RSS "
                  f"{growth(prepare, lambda r: r.worker_rss):.2f}x (private "
                  f"{growth(prepare, lambda r: r.worker_private):.2f}x)"]
    if prepare:
        result.append(f"spilled_mb={prepare[-1].spilled_mb:.0f}")
    if train:
        result.append("train_iter_worker_rss_mb=" + ",".join(f"{r.reader_rss:.0f}" for r in train))
    if len(train) > 1:
        result.append(f"train_iter_rss_growth={growth(train, lambda r: r.reader_rss):.2f}")
        lines.append(f"- train-iter {train[0].size_mb} MB -> {train[-1].size_mb} MB: reader RSS "
                     f"{growth(train, lambda r: r.reader_rss):.2f}x (private "
                     f"{growth(train, lambda r: r.reader_private):.2f}x)")
    return "\n".join([*lines, "", " ".join(result)]) + "\n"


def sizes(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--driver":
        drive(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", type=sizes, default=list(SIZES_MB), help="corpora to prepare, MB: 20,40")
    parser.add_argument("--train-sizes", type=sizes, default=None,
                        help="MB of token blocks train-iter reads; default: the smallest and largest --sizes")
    parser.add_argument("--reuse", action="store_true", help="take runs saved in bench/work/scale if present")
    args = parser.parse_args()
    train_sizes = args.train_sizes if args.train_sizes is not None else sorted({min(args.sizes),
                                                                                 max(args.sizes)})
    SAVED.mkdir(parents=True, exist_ok=True)
    build_tokenizer()
    build_corpus(WARMUP_MB)
    prepare = [saved_or_measured("prepare", s, args.reuse) for s in sorted(args.sizes)]
    train = [saved_or_measured("train-iter", s, args.reuse) for s in sorted(train_sizes)]
    text = report(prepare, train)
    if set(args.sizes) == set(SIZES_MB):  # only the full bench replaces the committed results
        RESULTS.write_text(text, encoding="utf-8")
    print(text, end="")  # its last line is the RESULT line


if __name__ == "__main__":
    main()
