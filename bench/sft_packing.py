"""SFT packing: row utilisation and speed of `pack_samples` ("packed", best-fit decreasing) against
padding every sample to max_length ("padded"), at max_length 1024 and 2048.

Samples: every record of every shared SFT file (/work/shared/data/sft: alpaca JSON array, ShareGPT
JSONL, ChatGLM3 JSONL, AdvertiseGen JSONL, the GBK medical CSV), duplicates kept (no dedup, no
mixture). Token lengths and labels are the real pipeline's, built as `lmforge prepare-sft` renders
them, in a plain loop instead of Ray: `survey_file` + `read_chunk` read each file,
`detect_file_record_format` + `to_conversation` turn records into conversations (unreadable records
and RecordErrors are counted, not used), and `ChatRenderer(tokenizer, "classic", max_length)`
renders input_ids and labels (-100 where not trained), keeping whole turns: a conversation whose
first trained exchange does not fit is dropped (SampleTooLong, counted), a longer one loses its
last turns (counted as turns cut). The tokenizer is a byte-level BPE (8k vocabulary) trained by
`train_tokenizer` on the shared pretraining files (cached in bench/work/sft_tokenizer), not a real
model's.

    .venv/bin/python bench/sft_packing.py

Writes bench/results/sft_packing.md; the last line printed is the RESULT line.
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from lmforge import REPO_DIR as REPO  # the checkout
from lmforge.data.files.records import read_chunk
from lmforge.data.files.survey import survey_file
from lmforge.data.steps.row_packing import pack_samples, utilisation
from lmforge.data.steps.tokenize import load_fast_tokenizer
from lmforge.data.text.chat_render import IGNORE_INDEX, ChatRenderer, NothingToTrain, SampleTooLong
from lmforge.data.text.conversation import Conversation
from lmforge.data.text.sft_formats import detect_file_record_format, to_conversation
from lmforge.data.text.templates import RecordError

SHARED_DATA = Path(os.environ.get("LMFORGE_SHARED_DATA", REPO.parent / "shared" / "data"))
WORK = REPO / "bench" / "work"
RESULTS = REPO / "bench" / "results" / "sft_packing.md"
MAX_LENGTHS = (1024, 2048)
REPEATS = 5


def read_conversations(sft_dir: Path) -> tuple[list[Conversation], list[dict], Counter]:
    """Every usable record of every file as the Conversation prepare-sft builds from it; per-file counts
    (records, unreadable, failed conversion) and the reasons conversions failed."""
    conversations: list[Conversation] = []
    files, reasons = [], Counter()
    for path in sorted(sft_dir.iterdir()):
        survey = survey_file(str(path))
        records = [record for chunk in survey.chunks for record in read_chunk(chunk)]
        first = next((record.fields for record in records if record.fields is not None), None)
        record_format = detect_file_record_format(str(path), first)
        stats = {"file": path.name, "format": f"{survey.format}, {survey.encoding}, {record_format}",
                 "records": len(records), "unreadable": 0, "failed": 0}
        for record in records:
            if record.error is not None:
                stats["unreadable"] += 1
                reasons[f"unreadable: {record.error}"] += 1
                continue
            try:
                conversations.append(to_conversation(record.fields, record_format))
            except RecordError as exc:
                stats["failed"] += 1
                reasons[str(exc)] += 1
        files.append(stats)
    return conversations, files, reasons


def build_tokenizer() -> Path:
    """bench/work/sft_tokenizer: byte-level BPE, 8k vocabulary, from the shared pretraining files (reused)."""
    from lmforge.config import SourceConfig, TokenizerTrainConfig
    from lmforge.data.stages.train_tokenizer import train_tokenizer

    out = WORK / "sft_tokenizer"
    if not (out / "tokenizer.json").is_file():
        sources = [SourceConfig(path=str(p)) for p in sorted((SHARED_DATA / "pretrain").iterdir())]
        train_tokenizer(TokenizerTrainConfig(sources=sources, output_dir=str(out), vocab_size=8000))
    return out


def render_samples(conversations: list[Conversation], tokenizer, max_length: int) -> tuple[pa.Table, Counter]:
    """input_ids and labels of each conversation, as prepare-sft renders them; counts of samples dropped
    (too_long, no_trained_turn) and of samples that lost their last turns (turns_cut)."""
    renderer = ChatRenderer(tokenizer, "classic", max_length)
    ids, labels, counts = [], [], Counter(too_long=0, no_trained_turn=0, turns_cut=0)
    for conversation in conversations:
        try:
            sample = renderer.render(conversation)
        except SampleTooLong:
            counts["too_long"] += 1
            continue
        except NothingToTrain:
            counts["no_trained_turn"] += 1
            continue
        ids.append(sample.input_ids)
        labels.append(sample.labels)
        counts["turns_cut"] += int(sample.turns_kept < sample.turns_total)
    counts["trained_tokens"] = int(sum((lab != IGNORE_INDEX).sum() for lab in labels))
    table = pa.table(
        {
            "key": pa.array(range(len(ids)), pa.int64()),
            "input_ids": pa.array(ids, pa.list_(pa.int32())),
            "labels": pa.array(labels, pa.list_(pa.int32())),
        }
    )
    counts["tokens"] = int(pc.sum(pc.list_value_length(table.column("input_ids"))).as_py() or 0)
    return table, counts


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


def report(results: list[dict], n_records: int, n_conversations: int, files: list[dict], reasons: Counter,
           host: str, wall: float) -> str:
    failed = sum(f["unreadable"] + f["failed"] for f in files)
    top = "; ".join(f"{reason} ({count:,})" for reason, count in reasons.most_common(3)) or "none"
    lines = [
        f"# SFT packing: utilisation and speed, {datetime.date.today().isoformat()}",
        "",
        f"- machine: {host}",
        (f"- samples: {n_records:,} records in every shared SFT file (duplicates kept, no dedup or mixture), "
         f"{n_conversations:,} conversations; run took {wall:.0f} s"),
        f"- not used: {failed:,} of {n_records:,} records (unreadable or RecordError); reasons: {top}",
        ("- token lengths and labels are the real pipeline's, as `lmforge prepare-sft` renders them: "
         "`survey_file` + `read_chunk`, `detect_file_record_format` + `to_conversation`, "
         "`ChatRenderer(tokenizer, \"classic\", max_length)` (whole turns only); the tokenizer is a "
         "byte-level BPE (8k) trained by `train_tokenizer` on the shared pretraining files, not a real "
         "model's"),
        ("- too long: conversations whose first trained exchange exceeds max_length (SampleTooLong), "
         "dropped; turns cut: samples that keep only their first whole turns; trained: tokens with a "
         "label (not -100); no trained turn (NothingToTrain, dropped): "
         + " / ".join(f"{r['no_trained_turn']:,}" for r in results)
         + " at max_length " + " / ".join(str(r["max_length"]) for r in results)),
        f"- pack s: best of {REPEATS} calls of `pack_samples` (Arrow table in, rows out), one process",
        "",
        "| file | format, encoding, record format | records | unreadable | failed conversion |",
        "|---|---|---:|---:|---:|",
        *(f"| {f['file']} | {f['format']} | {f['records']:,} | {f['unreadable']:,} | {f['failed']:,} |"
          for f in files),
        "",
        ("| max_length | samples | too long | turns cut | real tokens | trained | mode | rows | utilisation "
         "| pack s | samples/s |"),
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        for m in (r["packed"], r["padded"]):
            lines.append(f"| {r['max_length']} | {r['samples']:,} | {r['too_long']:,} | {r['turns_cut']:,} | "
                         f"{r['tokens']:,} | {r['trained_tokens']:,} | {m['mode']} | {m['rows']:,} | "
                         f"{m['utilisation']:.4f} | {m['seconds']:.3f} | {m['samples_per_s']:,.0f} |")
    header = (
        "| max_length | tokens per step, packed / padded | packed rows / fewest possible "
        "| packed util >= 0.95 |"
    )
    lines += ["", header, "|---:|---:|---:|---|"]
    for r in results:
        packed, padded = r["packed"], r["padded"]
        fewest = -(-r["tokens"] // r["max_length"])
        lines.append(
            f"| {r['max_length']} | {packed['utilisation'] / padded['utilisation']:.2f}x | "
            f"{packed['rows']:,} / {fewest:,} | {'yes' if packed['utilisation'] >= 0.95 else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    host, wall = machine(), time.perf_counter()
    tokenizer = load_fast_tokenizer(str(build_tokenizer()))
    conversations, files, reasons = read_conversations(SHARED_DATA / "sft")
    results = []
    for max_length in MAX_LENGTHS:
        samples, counts = render_samples(conversations, tokenizer, max_length)
        results.append({"max_length": max_length, "samples": samples.num_rows, **counts,
                        "packed": measure(samples, max_length, "packed"),
                        "padded": measure(samples, max_length, "padded")})
    n_records = sum(f["records"] for f in files)
    markdown = report(
        results, n_records, len(conversations), files, reasons, host, time.perf_counter() - wall
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(markdown, encoding="utf-8")
    print(markdown)
    packed, padded = results[0]["packed"], results[0]["padded"]
    print(
        f"RESULT packing_utilisation={packed['utilisation']:.4f} "
        f"padding_utilisation={padded['utilisation']:.4f} "
        f"speedup_tokens_per_step={packed['utilisation'] / padded['utilisation']:.2f}"
    )


if __name__ == "__main__":
    main()
