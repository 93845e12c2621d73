"""prepare-pretrain throughput: lmforge's Ray Data pipeline against the single-process HF recipe.

Corpus: the shared pretraining files (fever.txt, c4_demo.jsonl, wiki_demo.txt) and the medical
CSV, each document once, then copies with 1-4 random character substitutions/insertions
(near-duplicates) up to 50 MB of UTF-8 text, as one seeded JSONL file under bench/work/ (reused).
Tokenizer: byte-level BPE, 8k vocabulary, trained by `train_tokenizer` on the same shared files.

Measured in one process, one after the other (wall clock; 1 MB = 10^6 bytes of UTF-8 text):
  (c) the bare fast tokenizer, `encode_batch_fast` over every text, 1 thread, then default
      threads: the ceiling;
  (b) the usual single-process recipe: `datasets` JSON load -> strip + min-length filter ->
      exact dedup (set of md5s) -> datasketch MinHash(128, character 5-grams, one `update` per
      5-gram) + MinHashLSH(0.8), query then insert per document -> `datasets.map(batched=True)`
      tokenize -> run_clm's group_texts into 1024-token blocks -> save_to_disk;
  (a) `run_prepare_pretrain` (exact + near dedup, 0.8, 128 perms, 5-grams, block 1024, other
      settings default) on a local Ray with 4 logical CPUs, at workers=1 and workers=2, after an
      untimed 1 MB warm-up run; then workers=2 at 2x and 4x the corpus (s per MB should stay flat).
  (d) datatrove 0.10.1, the peer: MinHash signatures (character 5-grams, 14 buckets x 8 hashes),
      buckets, clusters, filter + DocumentTokenizer (same tokenizer), 2 tasks on 2 JSONL shards, at
      20 and 100 MB (--quick: 20 MB); against (e) `lmforge prepare-pretrain` as a subprocess (workers 2,
      config defaults), start to exit; (e) on 1 MB is the fixed cost, also measured joining a running Ray.
Each measurement runs twice (--repeats) and the faster run counts: the machine may be shared.
docs/s and MB/s count input documents and bytes; tokens/s counts the tokens of the documents kept
after dedup ((c): of every document). Ratios compare MB/s on the same input. Stage times of (a)
are the gaps between the entries of run_prepare_pretrain's steps (Ray Data is lazy, so a step's
work runs before the next one starts); operator task times come from Ray Data's log.

    make bench                                          # .venv/bin/python bench/data_pipeline.py
    .venv/bin/python bench/data_pipeline.py --quick     # ~5 MB smoke check
    .venv/bin/python bench/data_pipeline.py --scale 2   # a 100 MB corpus (and 200, 400 for scaling)

Writes bench/results/data_pipeline.md; the last line printed is the RESULT line.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain, pairwise
from pathlib import Path

import psutil

from lmforge import REPO_DIR as REPO  # the checkout

SHARED_DATA = Path(os.environ.get("LMFORGE_SHARED_DATA", REPO.parent / "shared" / "data"))
WORK = REPO / "bench" / "work"
RESULTS = REPO / "bench" / "results" / "data_pipeline.md"
RAY_TEMP = Path(f"/tmp/lmforge-bench-{os.getpid()}")  # short: Ray's socket paths are length-limited
CSV_NAME = "样例_内科5000-6000.csv"
FULL_MB, QUICK_MB, WARMUP_MB = 50, 5, 1
PEER_MB = (20, 100)  # corpus sizes of the datatrove comparison (--quick: the first only)
BLOCK_SIZE, MIN_CHARS, SEED = 1024, 10, 0


@dataclass
class Run:
    """One measured run: what went in and came out, how long it took, where the time went."""

    name: str
    seconds: float
    docs: int
    mb: float
    tokens: int
    kept_docs: int | None = None
    cpu_seconds: float = 0.0  # this process and its descendants (Ray's workers), all threads
    machine_cores: float = 0.0  # busy CPUs of the whole machine meanwhile, other users included
    stages: dict[str, float] = field(default_factory=dict)
    operators: list[tuple[str, int, float, float]] = field(default_factory=list)  # see ray_data_operators
    tries: list[float] = field(default_factory=list)  # wall seconds of every repeat; this run is the best

    @property
    def mb_per_s(self) -> float:
        return self.mb / self.seconds


# ---------------------------------------------------------------------------------------------
# Corpus and tokenizer


def source_docs(data: Path) -> list[str]:
    """Every non-empty document of the shared files; CSV rows as 'title\\nask\\nanswer'."""
    pretrain = data / "pretrain"
    docs = (pretrain / "fever.txt").read_text(encoding="utf-8").splitlines()
    docs += [json.loads(line)["text"] for line in (pretrain / "c4_demo.jsonl").open(encoding="utf-8")]
    docs += (pretrain / "wiki_demo.txt").read_text(encoding="utf-8").splitlines()
    with (data / "sft" / CSV_NAME).open(encoding="gb18030", newline="") as f:
        docs += ["\n".join((r["title"], r["ask"], r["answer"])) for r in csv.DictReader(f)]
    return [d for d in docs if d.strip()]


def edited(text: str, rng: random.Random) -> str:
    """A near-duplicate: 1-4 characters substituted or inserted, each a character of the same text."""
    for _ in range(rng.randint(1, 4)):
        i, char = rng.randrange(len(text)), rng.choice(text)
        text = text[:i] + char + text[i + (rng.random() < 0.5) :]
    return text


def build_corpus(target_mb: float, seed: int = SEED) -> Path:
    """JSONL {"text"}: the source documents in random order, then edited copies, to target_mb; reused."""
    path = WORK / f"corpus-{target_mb:g}mb-seed{seed}.jsonl"
    if path.is_file():
        return path
    sources = source_docs(SHARED_DATA)
    rng = random.Random(seed)
    originals = iter(rng.sample(sources, len(sources)))
    docs, size = [], 0
    while size < target_mb * 1e6:
        docs.append(next(originals, None) or edited(rng.choice(sources), rng))
        size += len(docs[-1].encode())
    rng.shuffle(docs)
    WORK.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with partial.open("w", encoding="utf-8") as sink:
        sink.writelines(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in docs)
    partial.rename(path)  # only a complete file is ever reused
    return path


def corpus_texts(corpus: Path) -> list[str]:
    return [json.loads(line)["text"] for line in corpus.open(encoding="utf-8")]


def corpus_size(corpus: Path) -> tuple[int, float]:
    """(documents, MB of UTF-8 text)."""
    texts = corpus_texts(corpus)
    return len(texts), sum(len(t.encode()) for t in texts) / 1e6


def build_tokenizer() -> Path:
    """bench/work/tokenizer: byte-level BPE, 8k vocabulary, from the shared files (reused if present)."""
    from lmforge.config import SourceConfig, TokenizerTrainConfig
    from lmforge.data.stages.train_tokenizer import train_tokenizer

    out = WORK / "tokenizer"
    if not (out / "tokenizer.json").is_file():
        pretrain = SHARED_DATA / "pretrain"
        names = ("fever.txt", "c4_demo.jsonl", "wiki_demo.txt")
        sources = [SourceConfig(path=str(pretrain / name)) for name in names]
        csv_path = str(SHARED_DATA / "sft" / CSV_NAME)
        sources.append(SourceConfig(name="medical", path=csv_path, template="medical_csv"))
        train_tokenizer(TokenizerTrainConfig(sources=sources, output_dir=str(out), vocab_size=8000))
    return out


# ---------------------------------------------------------------------------------------------
# Measuring


class TreeCpu:
    """CPU seconds of this process and its descendants (Ray's workers, actors) from now to stop().

    Polled every 0.5 s, so an actor that exits keeps the time it had at its last poll.
    """

    def __init__(self):
        self._since = time.time()
        self._first: dict[tuple[int, float], float] = {}
        self._last: dict[tuple[int, float], float] = {}
        self._done = threading.Event()
        self._poll()
        self._thread = threading.Thread(target=self._keep_polling, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
            try:
                key, used = (proc.pid, proc.create_time()), sum(proc.cpu_times()[:2])
            except psutil.Error:
                continue
            self._first.setdefault(key, 0.0 if key[1] > self._since else used)  # born meanwhile: from zero
            self._last[key] = used

    def _keep_polling(self) -> None:
        while not self._done.wait(0.5):
            self._poll()

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        self._poll()
        return sum(self._last[k] - self._first[k] for k in self._last)


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent not idle since boot."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def measured(run: Callable[..., Run], *args, **kwargs) -> Run:
    """run(*args, **kwargs) (which times itself), plus the CPU it and the whole machine used meanwhile."""
    cpu, busy, wall = TreeCpu(), machine_busy_seconds(), time.perf_counter()
    result = run(*args, **kwargs)
    wall = time.perf_counter() - wall
    result.cpu_seconds = cpu.stop()
    result.machine_cores = (machine_busy_seconds() - busy) / wall
    print(f"{result.name}: {result.seconds:.1f} s, {result.mb:.1f} MB, {result.mb_per_s:.2f} MB/s, "
          f"{result.tokens / result.seconds:,.0f} tokens/s, {result.cpu_seconds:.0f} CPU s, "
          f"machine {result.machine_cores:.2f} cores busy", flush=True)
    return result


def best_of(repeats: int, run: Callable[..., Run], *args, **kwargs) -> Run:
    """The fastest of `repeats` measured runs (the machine may be shared), remembering every time."""
    runs = [measured(run, *args, **kwargs) for _ in range(repeats)]
    best = min(runs, key=lambda r: r.seconds)
    best.tries = [r.seconds for r in runs]
    return best


class StageClock:
    """Notes when each wrapped module function is entered; the gaps between entries are stage times."""

    def __init__(self, targets: list[tuple[object, str]]):
        self.marks: list[tuple[str, float]] = []
        self._saved = [(module, name, getattr(module, name)) for module, name in targets]
        for module, name, fn in self._saved:
            setattr(module, name, self._marking(name, fn))

    def _marking(self, name: str, fn: Callable) -> Callable:
        def marked(*args, **kwargs):
            self.marks.append((name, time.perf_counter()))
            return fn(*args, **kwargs)
        return marked

    def restore(self) -> None:
        for module, name, fn in self._saved:
            setattr(module, name, fn)

    def stages(self, start: float, end: float, labels: dict[str, str]) -> dict[str, float]:
        """Seconds per label, each mark running to the next one."""
        out: dict[str, float] = {}
        for (name, t0), (_, t1) in pairwise([("start", start), *self.marks, ("end", end)]):
            out[labels[name]] = out.get(labels[name], 0.0) + t1 - t0
        return out


# ---------------------------------------------------------------------------------------------
# (a) lmforge

# Entering each of these functions of run_prepare_pretrain starts the stage named here.
LMFORGE_STAGES = {
    "start": "survey file (sha256, encoding, chunks)",
    "_read_chunks": "read + clean",
    "find_duplicates": "dedup: MinHash + band buckets, shuffle, edges",
    "find_duplicate_clusters": "dedup: connected components (driver)",
    "tokenize_documents": "tokenize (tasks)",
    "per_source_totals": "per-source token counts (2 groupbys)",
    "mix_documents": "pack: mix, group sums, map_groups",
    "pack_documents": "pack: mix, group sums, map_groups",
    "stitch_fragments": "pack: stitch fragments (driver)",
    "write_shards": "write Parquet shards",
    "status_counts": "status counts (groupby)",
    "reconcile_counts": "quarantine, dup sample, manifest",
}


def run_lmforge(corpus: Path, tokenizer: Path, workers: int) -> Run:
    """run_prepare_pretrain on `corpus` with `workers` Ray workers, timed per stage."""
    from lmforge.config import PretrainDataConfig
    from lmforge.data.stages import prepare_pretrain as pretrain
    from lmforge.data.stages import source_records as read_sources
    from lmforge.data.steps import dedup as dedup_dataset

    cfg = PretrainDataConfig.model_validate({
        "sources": [{"name": "corpus", "path": str(corpus)}],
        "tokenizer": str(tokenizer),
        "output_dir": str(WORK / "out" / f"lmforge-{corpus.stem}-w{workers}"),
        "workers": workers,
        "seed": SEED,
        "clean": {"min_chars": MIN_CHARS},
        "dedup": {"exact": True, "near": True, "threshold": 0.8, "num_perm": 128, "ngram": 5},
        "pack": {"block_size": BLOCK_SIZE},
    })
    targets = [(module, name) for module in (read_sources, pretrain) for name in LMFORGE_STAGES
               if hasattr(module, name)]
    clock = StageClock([*targets, (dedup_dataset, "find_duplicate_clusters")])
    log_offset = RAY_DATA_LOG.stat().st_size if RAY_DATA_LOG.exists() else 0
    start = time.perf_counter()
    try:
        manifest = pretrain.run_prepare_pretrain(cfg)
    finally:
        clock.restore()
    end = time.perf_counter()
    total = manifest.counts["total"]
    return Run(f"(a) lmforge, {workers} worker{'s' * (workers > 1)}", end - start, *corpus_size(corpus),
               total["kept_tokens"], total["kept_documents"],
               stages=clock.stages(start, end, LMFORGE_STAGES), operators=ray_data_operators(log_offset))


def start_ray() -> None:
    """A private local Ray with 4 logical CPUs on this 2-core machine (the demo config's setting)."""
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             _temp_dir=str(RAY_TEMP))


RAY_DATA_LOG = RAY_TEMP / "session_latest" / "logs" / "ray-data" / "ray-data.log"
_OPERATOR_DONE = re.compile(r"Operator \w+\[(.+?)\] completed\. Operator Metrics:\n(\{.*)")


def ray_data_operators(offset: int) -> list[tuple[str, int, float, float]]:
    """(operator, tasks, seconds in the function body, seconds from submit to done), summed over tasks
    and datasets, from Ray Data's log past `offset`; the costliest first."""
    with RAY_DATA_LOG.open(encoding="utf-8", errors="replace") as log:
        log.seek(offset)
        text = log.read()
    totals: dict[str, list] = {}
    for name, metrics in _OPERATOR_DONE.findall(text):
        found = [re.search(rf"'{key}': ([\d.e-]+)", metrics)
                 for key in ("num_tasks_finished", "function_body_time_s", "task_completion_time_s")]
        if all(found) and float(found[0].group(1)):
            total = totals.setdefault(name, [0, 0.0, 0.0])
            for i, match in enumerate(found):
                total[i] += float(match.group(1))
    rows = [(name, int(n), body, task) for name, (n, body, task) in totals.items()]
    return sorted(rows, key=lambda row: -row[3])


# ---------------------------------------------------------------------------------------------
# (b) the single-process HF recipe


def run_baseline(corpus: Path, tokenizer_dir: Path) -> Run:
    """datasets + set of hashes + datasketch + datasets.map tokenize + group_texts, in one process."""
    import datasets
    import pyarrow.compute as pc
    from transformers import AutoTokenizer

    cache = WORK / "hf-cache"  # fresh each run: a warm datasets cache would skip the work
    shutil.rmtree(cache, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    stages, clock = {}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        stages[name], clock = time.perf_counter() - clock, time.perf_counter()

    ds = datasets.load_dataset("json", data_files=str(corpus), split="train", cache_dir=str(cache))
    lap("read JSONL (datasets)")
    ds = ds.map(lambda b: {"text": [t.strip() for t in b["text"]]}, batched=True)
    ds = ds.filter(lambda b: [len(t) >= MIN_CHARS for t in b["text"]], batched=True)
    lap("clean: strip + min length")
    ds = ds.filter(_first_copy(), batched=True)
    lap("exact dedup: set of md5")
    ds = ds.filter(_not_near_duplicate(), batched=True)
    lap("near dedup: datasketch MinHash + LSH")
    tokenized = ds.map(_tokenize_with_eos(tokenizer), batched=True, remove_columns=ds.column_names)
    lap("tokenize: datasets.map(batched)")
    blocks = tokenized.map(group_texts, batched=True)
    lap("group_texts into 1024 blocks")
    blocks.save_to_disk(str(WORK / "out" / f"baseline-{corpus.stem}"))
    lap("save_to_disk")
    tokens = pc.sum(pc.list_value_length(tokenized.data.column("input_ids"))).as_py()  # after the clock
    shutil.rmtree(cache, ignore_errors=True)
    return Run("(b) HF datasets + datasketch, 1 process", sum(stages.values()), *corpus_size(corpus),
               tokens, len(ds), stages=stages)


def _first_copy() -> Callable:
    seen: set[bytes] = set()

    def keep(batch: dict) -> list[bool]:
        out = []
        for text in batch["text"]:
            digest = hashlib.md5(text.encode()).digest()
            out.append(digest not in seen)
            seen.add(digest)
        return out
    return keep


def _not_near_duplicate() -> Callable:
    """The common datasketch recipe: one MinHash.update per distinct 5-gram; query, insert if new."""
    from datasketch import MinHash, MinHashLSH

    lsh, ids = MinHashLSH(threshold=0.8, num_perm=128), iter(range(1 << 62))

    def keep(batch: dict) -> list[bool]:
        out = []
        for text in batch["text"]:
            sketch = MinHash(num_perm=128)
            for shingle in {text[i : i + 5] for i in range(max(len(text) - 4, 1))}:
                sketch.update(shingle.encode("utf-8"))
            out.append(not lsh.query(sketch))
            if out[-1]:
                lsh.insert(next(ids), sketch)
        return out
    return keep


def _tokenize_with_eos(tokenizer) -> Callable:
    """run_clm's tokenize_function, plus an EOS per document as lmforge appends one."""
    eos = tokenizer.eos_token_id

    def tokenize(batch: dict) -> dict:
        out = tokenizer(batch["text"])
        out["input_ids"] = [ids + [eos] for ids in out["input_ids"]]
        out["attention_mask"] = [mask + [1] for mask in out["attention_mask"]]
        return out
    return tokenize


def group_texts(examples: dict) -> dict:
    """HF run_clm's group_texts: concatenate each column, cut BLOCK_SIZE blocks, drop the remainder."""
    concatenated = {k: list(chain(*examples[k])) for k in examples}
    total = len(concatenated["input_ids"]) // BLOCK_SIZE * BLOCK_SIZE
    result = {k: [t[i : i + BLOCK_SIZE] for i in range(0, total, BLOCK_SIZE)]
              for k, t in concatenated.items()}
    result["labels"] = result["input_ids"].copy()
    return result


# ---------------------------------------------------------------------------------------------
# (d) datatrove, the peer, and (e) the `lmforge prepare-pretrain` command


def shard_corpus(corpus: Path, shards: int) -> Path:
    """The corpus as `shards` JSONL files of whole lines in one folder (datatrove gives each task whole
    files), in corpus order; reused."""
    folder = WORK / f"{corpus.stem}-{shards}shards"
    if not folder.is_dir():
        lines = corpus.read_bytes().splitlines(keepends=True)
        partial = folder.with_suffix(".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        per_shard = -(-len(lines) // shards)
        for i in range(shards):
            (partial / f"{i:02d}.jsonl").write_bytes(b"".join(lines[i * per_shard : (i + 1) * per_shard]))
        partial.rename(folder)
    return folder


def character_tokenizer():
    """A datatrove word tokenizer whose words are characters, so its MinHash n-grams are character
    5-grams as lmforge's are (its language tokenizers split Chinese only at punctuation)."""
    from datatrove.utils.word_tokenizers import WordTokenizer

    class CharacterTokenizer(WordTokenizer):
        def word_tokenize(self, text: str) -> list[str]:
            return list(text)

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [(0, len(text))]

    return CharacterTokenizer()


def xxhash64_of_text(text: str) -> int:
    """datatrove's default shingle hash (xxhash64 of the text) for the xxhash 4 installed here, which
    hashes bytes only where datatrove passes a str."""
    import xxhash

    return xxhash.xxh64_intdigest(text.encode())


def run_datatrove(corpus: Path, tokenizer: Path, tasks: int = 2) -> Run:
    """datatrove's MinHash chain then DocumentTokenizer, each step a LocalPipelineExecutor of `tasks`
    processes (buckets: one task per bucket), timed per step."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer

    shards = str(shard_corpus(corpus, tasks))
    out = WORK / "out" / f"datatrove-{corpus.stem}"
    shutil.rmtree(out, ignore_errors=True)
    config = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)
    signature = MinhashDedupSignature(output_folder=str(out / "signatures"), config=config,
                                      language=character_tokenizer())
    signature._hash_func = xxhash64_of_text
    sigs, buckets, remove = (str(out / d) for d in ("signatures", "buckets", "remove"))
    steps = {
        "MinHash signatures (char 5-grams, 14x8)": ([JsonlReader(shards), signature], tasks),
        "buckets": ([MinhashDedupBuckets(input_folder=sigs, output_folder=buckets, config=config)],
                    config.num_buckets),
        "clusters": ([MinhashDedupCluster(input_folder=buckets, output_folder=remove, config=config)], 1),
        "filter + DocumentTokenizer": ([
            JsonlReader(shards),
            MinhashDedupFilter(input_folder=remove),
            DocumentTokenizer(output_folder=str(out / "tokens"),
                              tokenizer_name_or_path=str(tokenizer / "tokenizer.json"), eos_token="</s>"),
        ], tasks),
    }
    stages, start = {}, time.perf_counter()
    for name, (pipeline, n) in steps.items():
        lap = time.perf_counter()
        logs = str(out / "logs" / name[:8])
        LocalPipelineExecutor(pipeline=pipeline, tasks=n, workers=tasks, logging_dir=logs).run()
        stages[name] = time.perf_counter() - lap
    seconds = time.perf_counter() - start
    stats = json.loads((out / "logs" / "filter +" / "stats.json").read_text())
    kept = next(s for s in stats if "MinHash stage 4" in s["name"])["stats"]["forwarded"]
    tokens = next(s for s in stats if "TOKENIZER" in s["name"])["stats"]["tokens"]["total"]
    return Run(f"(d) datatrove 0.10.1, {tasks} tasks", seconds, *corpus_size(corpus), tokens, kept,
               stages=stages)


def run_cli(corpus: Path, tokenizer: Path, workers: int = 2, ray_address: str | None = None) -> Run:
    """`lmforge prepare-pretrain` as a user runs it: a new process from start to exit, config defaults
    but workers and seed; its own local Ray, or the running one at `ray_address`."""
    import yaml

    import lmforge

    name = f"cli-{corpus.stem}-w{workers}" + ("-joined" if ray_address else "")
    config, out = WORK / f"{name}.yaml", WORK / "out" / name
    config.write_text(yaml.safe_dump({
        "sources": [{"name": "corpus", "path": str(corpus)}], "tokenizer": str(tokenizer),
        "output_dir": str(out), "workers": workers, "seed": SEED,
    }), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(Path(lmforge.__file__).resolve().parents[1])  # the lmforge this bench imports
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "lmforge.cli", "prepare-pretrain", str(config)], env=env,
                            capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if result.returncode:
        raise RuntimeError(f"lmforge prepare-pretrain failed:\n{result.stderr[-3000:]}")
    total = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["counts"]["total"]
    how = "joins the running Ray" if ray_address else "starts its own Ray"
    return Run(f"(e) `lmforge prepare-pretrain`, {workers} workers, {how}", seconds, *corpus_size(corpus),
               total["kept_tokens"], total["kept_documents"])


# ---------------------------------------------------------------------------------------------
# (c) the bare tokenizer


def run_bare_tokenizer(texts: list[str], tokenizer_dir: Path, parallel: bool) -> Run:
    """encode_batch_fast over every text at once; parallel=False keeps the Rust tokenizer on one thread."""
    from transformers import AutoTokenizer

    backend = AutoTokenizer.from_pretrained(str(tokenizer_dir)).backend_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if parallel else "false"  # read at every call
    try:
        start = time.perf_counter()
        encodings = backend.encode_batch_fast(texts, add_special_tokens=False)
        seconds = time.perf_counter() - start
    finally:
        del os.environ["TOKENIZERS_PARALLELISM"]
    threads = f"{os.cpu_count()} threads (default)" if parallel else "1 thread"
    return Run(f"(c) bare encode_batch_fast, {threads}", seconds, len(texts),
               sum(len(t.encode()) for t in texts) / 1e6, sum(len(e) for e in encodings))


# ---------------------------------------------------------------------------------------------
# Report


def report(a2: Run, a1: Run, b: Run, c1: Run, cn: Run, scaling: list[tuple[int, Run]],
           header: list[str]) -> str:
    """Markdown: the main table, ratios, stage and operator times, the scaling check."""
    columns = ("| pipeline | wall s | docs/s | tokens/s | MB/s | kept docs | tokens | CPU s | "
               "machine busy cores | all runs, s |")
    lines = [*header, "", columns, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in (a2, a1, b, c1, cn):
        kept = f"{r.kept_docs:,}" if r.kept_docs is not None else "all"
        lines.append(f"| {r.name} | {r.seconds:.1f} | {r.docs / r.seconds:,.0f} | "
                     f"{r.tokens / r.seconds:,.0f} | {r.mb_per_s:.2f} | {kept} | {r.tokens:,} | "
                     f"{r.cpu_seconds:.0f} | {r.machine_cores:.2f} | {_times(r)} |")
    lines += [
        "",
        "docs/s, MB/s: input documents and UTF-8 MB per wall second. tokens/s: tokens of the documents kept "
        + "after dedup ((c): of all documents). CPU s: this process and its Ray workers over the whole call, "
        + "setup included. Machine busy cores: "
        + "every process on the machine, other users' included.",
        "",
        f"- a/b: **{a2.mb_per_s / b.mb_per_s:.2f}x** at 2 workers, "
        + f"{a1.mb_per_s / b.mb_per_s:.2f}x at 1 worker",
        f"- a/c at 2 workers: {a2.mb_per_s / c1.mb_per_s:.2f}x the 1-thread tokenizer, "
        + f"{a2.mb_per_s / cn.mb_per_s:.2f}x the default-threads one (a tokenizes only the kept documents)",
        f"- a, 2 workers / 1 worker: {a2.mb_per_s / a1.mb_per_s:.2f}x",
        "- CPU seconds per MB (less sensitive to other users' load than wall time): "
        + f"a {a2.cpu_seconds / a2.mb:.2f} at 2 workers, {a1.cpu_seconds / a1.mb:.2f} at 1; "
        + f"b {b.cpu_seconds / b.mb:.2f} (b/a: {b.cpu_seconds / a2.cpu_seconds:.1f}x)",
    ]
    for r in (a2, a1, b):
        lines += ["", f"Stages of {r.name} (wall):", "", "| stage | s | share |", "|---|---:|---:|"]
        lines += [f"| {k} | {v:.1f} | {v / r.seconds:.0%} |" for k, v in r.stages.items()]
    for r in (a2, a1):
        caption = (f"Ray Data operators of {r.name}, summed over tasks and datasets (function body: the "
                   "UDF's own time; task: submission to done, incl. waiting for a worker or an actor):")
        lines += ["", caption, "", "| operator | tasks | function body s | task s |", "|---|---:|---:|---:|"]
        lines += [f"| `{name}` | {n} | {body:.1f} | {task:.1f} |" for name, n, body, task in r.operators
                  if task >= 0.1]
    lines += ["", "Scaling of (a), 2 workers:", "",
              "| corpus | docs | MB | wall s | s per MB | all runs, s |", "|---|---:|---:|---:|---:|---|"]
    lines += [f"| {f}x | {r.docs:,} | {r.mb:.1f} | {r.seconds:.1f} | {r.seconds / r.mb:.2f} | {_times(r)} |"
              for f, r in scaling]
    return "\n".join(lines) + "\n"


def _times(run: Run) -> str:
    return ", ".join(f"{t:.1f}" for t in run.tries)


def code_version() -> str:
    """Which lmforge ran: the commit of the tree it was imported from (PYTHONPATH may point elsewhere)."""
    import lmforge

    root = Path(lmforge.__file__).resolve().parents[2]
    git = ["git", "-C", str(root)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    dirty = subprocess.run([*git, "status", "--porcelain", "platform"], capture_output=True, text=True,
                           check=False)
    marker = root / "COMMIT"  # a `git archive` snapshot has no .git: its commit is written beside it
    commit = head.stdout.strip() or (marker.read_text().strip() if marker.is_file() else "unknown commit")
    return f"lmforge {commit} from {root}" + (" + uncommitted changes" if dirty.stdout else "")


def machine() -> str:
    mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    return f"nproc {os.cpu_count()}, RAM {int(mem.split()[1]) / 1024**2:.1f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--scale", type=float, default=1.0, help="corpus size as a multiple of 50 MB")
    parser.add_argument("--quick", action="store_true", help="a ~5 MB corpus, for a smoke check")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each measurement; the best counts")
    args = parser.parse_args()
    n = args.repeats
    size_mb = QUICK_MB if args.quick else FULL_MB * args.scale
    started, load = time.perf_counter(), os.getloadavg()

    tokenizer, corpus = build_tokenizer(), build_corpus(size_mb)
    bigger = {f: build_corpus(size_mb * f) for f in (2, 4)}  # built now, so no timed run waits on it
    peer_corpora = {mb: build_corpus(mb) for mb in PEER_MB[: 1 if args.quick else None]}
    texts = corpus_texts(corpus)
    docs, mb = len(texts), sum(len(t.encode()) for t in texts) / 1e6
    print(f"corpus {corpus.name}: {docs:,} docs, {mb:.1f} MB; best of {n} runs each", flush=True)

    c1 = best_of(n, run_bare_tokenizer, texts, tokenizer, parallel=False)
    cn = best_of(n, run_bare_tokenizer, texts, tokenizer, parallel=True)
    del texts
    b = best_of(n, run_baseline, corpus, tokenizer)
    peer = {mb: (best_of(n, run_datatrove, path, tokenizer), best_of(n, run_cli, path, tokenizer))
            for mb, path in peer_corpora.items()}
    fixed = best_of(n, run_cli, build_corpus(WARMUP_MB), tokenizer)
    start_ray()
    warmup = measured(run_lmforge, build_corpus(WARMUP_MB), tokenizer, 2)
    a1 = best_of(n, run_lmforge, corpus, tokenizer, 1)
    a2 = best_of(n, run_lmforge, corpus, tokenizer, 2)
    scaling = [(1, a2)] + [(f, best_of(n, run_lmforge, path, tokenizer, 2)) for f, path in bigger.items()]
    joined = best_of(n, run_cli, build_corpus(WARMUP_MB), tokenizer, ray_address=running_ray_address())

    header = [
        f"# prepare-pretrain throughput, {datetime.date.today().isoformat()}",
        "",
        f"- machine: {machine()}; load average {load[0]:.2f} (1 min), {load[1]:.2f} (5 min) at the start; "
        + f"this run at nice {os.nice(0)}",
        f"- corpus: {docs:,} docs, {mb:.1f} MB of UTF-8 text, one JSONL file ({corpus.name})",
        f"- code: {code_version()}",
        "- tokenizer: byte-level BPE, 8k vocabulary, train_tokenizer on the shared files",
        f"- run: {time.perf_counter() - started:.0f} s in all; each number is the best of {n} runs; local "
        + f"Ray, num_cpus=4; (a) measured after a {WARMUP_MB} MB warm-up run ({warmup.seconds:.1f} s, which "
        + "starts Ray's workers)",
    ]
    text = report(a2, a1, b, c1, cn, scaling, header) + peer_report(peer, fixed, joined)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text, encoding="utf-8")
    print(text)
    speedup = a2.mb_per_s / b.mb_per_s
    vs_peer = {mb: d.seconds / e.seconds for mb, (d, e) in peer.items()}
    nan = float("nan")
    print(f"RESULT speedup_vs_baseline={speedup:.2f} speedup_vs_datatrove_20mb={vs_peer.get(20, nan):.2f} "
          f"speedup_vs_datatrove_100mb={vs_peer.get(100, nan):.2f} fixed_cost_s={fixed.seconds:.1f}")


def running_ray_address() -> str:
    """The GCS address of this process's Ray, which a CLI run joins through RAY_ADDRESS."""
    import ray

    return ray.get_runtime_context().gcs_address


def peer_report(peer: dict[float, tuple[Run, Run]], fixed: Run, joined: Run) -> str:
    """Markdown: the `lmforge prepare-pretrain` command against datatrove per size, and its fixed cost."""
    lines = ["", "The command against the peer (wall, start to exit; speedup = datatrove s / lmforge s):", "",
             "| corpus | datatrove s | lmforge s | speedup | datatrove tokens | lmforge tokens | runs s |",
             "|---|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {mb:g} MB | {d.seconds:.1f} | {e.seconds:.1f} | **{d.seconds / e.seconds:.2f}x** | "
              f"{d.tokens:,} | {e.tokens:,} | {_times(d)} / {_times(e)} |" for mb, (d, e) in peer.items()]
    lines += ["", (f"- fixed cost: a {fixed.mb:.1f} MB run of the command takes **{fixed.seconds:.1f} s** "
                   f"({_times(fixed)}) with its own Ray, {joined.seconds:.1f} s ({_times(joined)}) joining "
                   "a running Ray (this bench's, 4 logical CPUs, through RAY_ADDRESS)")]
    for mb, (d, _) in peer.items():
        lines += ["", f"Steps of datatrove at {mb:g} MB (wall):", "", "| step | s | share |",
                  "|---|---:|---:|"]
        lines += [f"| {k} | {v:.1f} | {v / d.seconds:.0%} |" for k, v in d.stages.items()]
    return "\n".join(lines) + "\n"

if __name__ == "__main__":
    main()
