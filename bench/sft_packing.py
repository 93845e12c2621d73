"""SFT packing: row utilisation and speed of `pack_samples` ("packed", best-fit decreasing) against
padding every sample to max_length ("padded"), at max_length 1024 and 2048.

Samples: every record of every shared SFT file (/work/shared/data/sft: alpaca JSON array, ShareGPT
JSONL, ChatGLM3 JSONL, AdvertiseGen JSONL, the GBK medical CSV), duplicates kept. Token lengths are
an approximation that depends on no other lmforge reader or renderer: each record is turned into
turns here, rendered in the classic template "User: q</s>\\n Assistant: a</s>\\n User: ..." and
tokenized with a byte-level BPE tokenizer (8k vocabulary) trained by `train_tokenizer` on the shared
pretraining files (cached in bench/work/sft_tokenizer). Samples longer than max_length are cut to
max_length (counted). Labels are a copy of the ids: their values do not change packing.

    .venv/bin/python bench/sft_packing.py

Writes bench/results/sft_packing.md; the last line printed is the RESULT line.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from lmforge.data.sft_packing import pack_samples, utilisation

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LMFORGE_SHARED_DATA", REPO.parent / "shared" / "data"))
WORK = REPO / "bench" / "work"
RESULTS = REPO / "bench" / "results" / "sft_packing.md"
MAX_LENGTHS = (1024, 2048)
REPEATS = 5
ROLE_LABELS = {"human": "User: ", "user": "User: ", "gpt": "Assistant: ", "assistant": "Assistant: ", "system": ""}


def record_turns(record: dict) -> list[tuple[str, str]]:
    """(role, text) turns of one record, whatever its schema among the shared files."""
    if "conversations" in record:
        return [(t.get("from") or t["role"], t.get("value") or t.get("content") or "") for t in record["conversations"]]
    if "instruction" in record:
        question = "\n".join(p for p in (record["instruction"], record.get("input", "")) if p)
        return [("user", question), ("assistant", record["output"])]
    if "summary" in record:
        return [("user", record["content"]), ("assistant", record["summary"])]
    return [("user", f"{record['title']}\n{record['ask']}"), ("assistant", record["answer"])]  # medical CSV


def sft_records(sft_dir: Path) -> list[dict]:
    records = []
    for path in sorted(sft_dir.iterdir()):
        if path.suffix == ".csv":
            with path.open(encoding="gb18030", newline="") as f:
                records += list(csv.DictReader(f))
        elif path.read_text(encoding="utf-8").lstrip().startswith("["):
            records += json.loads(path.read_text(encoding="utf-8"))
        else:
            records += [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]
    return records


def render_classic(turns: list[tuple[str, str]], eos: str) -> str:
    return "\n ".join(f"{ROLE_LABELS[role]}{text}{eos}" for role, text in turns)


def build_tokenizer() -> Path:
    """bench/work/sft_tokenizer: byte-level BPE, 8k vocabulary, from the shared pretraining files (reused)."""
    from lmforge.config import SourceConfig, TokenizerTrainConfig
    from lmforge.data.tokenizer import train_tokenizer

    out = WORK / "sft_tokenizer"
    if not (out / "tokenizer.json").is_file():
        sources = [SourceConfig(path=str(p)) for p in sorted((SHARED_DATA / "pretrain").iterdir())]
        train_tokenizer(TokenizerTrainConfig(sources=sources, output_dir=str(out), vocab_size=8000))
    return out


def tokenize(texts: list[str], tokenizer_dir: Path) -> list[np.ndarray]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    return [np.asarray(e.ids, np.int32) for e in tokenizer.encode_batch_fast(texts)]


def samples_table(token_ids: list[np.ndarray], max_length: int) -> tuple[pa.Table, int]:
    cut = [ids[:max_length] for ids in token_ids]
    column = pa.array(cut, pa.list_(pa.int32()))
    table = pa.table({"key": pa.array(range(len(cut)), pa.int64()), "input_ids": column, "labels": column})
    return table, sum(ids.size > max_length for ids in token_ids)


def measure(samples: pa.Table, max_length: int, mode: str) -> dict:
    seconds = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        rows = pack_samples(samples, max_length, mode)
        seconds.append(time.perf_counter() - start)
    best = min(seconds)
    return {"mode": mode, "rows": rows.num_rows, "utilisation": utilisation(rows, max_length),
            "seconds": best, "samples_per_s": samples.num_rows / best}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"nproc {os.cpu_count()}, {cpu}, RAM {ram:.1f} GiB; load average {load} (1/5/15 min) at start"


def report(results: list[tuple[int, int, int, int, dict, dict]], n_samples: int, per_char: float, host: str,
           wall: float) -> str:
    lines = [
        f"# SFT packing: utilisation and speed, {datetime.date.today().isoformat()}",
        "",
        f"- machine: {host}",
        f"- samples: {n_samples:,} records, every shared SFT file (duplicates kept); run took {wall:.0f} s",
        ("- approximated: token lengths come from the classic template \"User: q</s>\\n Assistant: a</s>\\n ...\" "
        "rendered here (not lmforge's readers or chat renderer) and a byte-level BPE tokenizer (8k) trained "
        "by `train_tokenizer` on the shared pretraining files, not a real model's tokenizer "
        f"({per_char:.2f} tokens per character of rendered text); samples longer than max_length are cut "
        "to max_length"),
        f"- pack s: best of {REPEATS} calls of `pack_samples` (Arrow table in, rows out), one process",
        "",
        "| max_length | truncated | real tokens | mode | rows | utilisation | pack s | samples/s |",
        "|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for max_length, truncated, tokens, _, packed, padded in results:
        for r in (packed, padded):
            lines.append(f"| {max_length} | {truncated:,} | {tokens:,} | {r['mode']} | {r['rows']:,} | "
                         f"{r['utilisation']:.4f} | {r['seconds']:.3f} | {r['samples_per_s']:,.0f} |")
    header = "| max_length | tokens per step, packed / padded | packed rows / fewest possible | packed util >= 0.95 |"
    lines += ["", header, "|---:|---:|---:|---|"]
    for max_length, _, tokens, _, packed, padded in results:
        ratio = packed["utilisation"] / padded["utilisation"]
        fewest = -(-tokens // max_length)
        lines.append(f"| {max_length} | {ratio:.2f}x | {packed['rows']:,} / {fewest:,} | "
                     f"{'yes' if packed['utilisation'] >= 0.95 else 'NO'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    host, wall = machine(), time.perf_counter()
    tokenizer_dir = build_tokenizer()
    eos = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())["eos_token"]
    records = sft_records(SHARED_DATA / "sft")
    texts = [render_classic(record_turns(r), eos) for r in records]
    token_ids = tokenize(texts, tokenizer_dir)
    per_char = sum(ids.size for ids in token_ids) / sum(len(t) for t in texts)
    results = []
    for max_length in MAX_LENGTHS:
        samples, truncated = samples_table(token_ids, max_length)
        tokens = sum(min(ids.size, max_length) for ids in token_ids)
        packed, padded = measure(samples, max_length, "packed"), measure(samples, max_length, "padded")
        results.append((max_length, truncated, tokens, samples.num_rows, packed, padded))
    markdown = report(results, len(records), per_char, host, time.perf_counter() - wall)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(markdown, encoding="utf-8")
    print(markdown)
    packed, padded = results[0][4], results[0][5]
    print(f"RESULT packing_utilisation={packed['utilisation']:.4f} padding_utilisation={padded['utilisation']:.4f} "
          f"speedup_tokens_per_step={packed['utilisation'] / padded['utilisation']:.2f}")


if __name__ == "__main__":
    main()
