"""`lmforge batch-infer`: answer every prompt of a set with a converted model; rerunning resumes.

    survey files -> read prompts (a task per chunk; bad records to quarantine) -> drop ids already answered
      and repeated ids -> chat template + tokenize (Ray tasks) -> vLLM engine actors (ray.data.llm)
      -> each finished block written at once: data/part-RUN-*.parquet (answers), errors/ (failed rows)
      -> errors.jsonl + quarantine.jsonl + manifest.json

Resuming: answers are written block by block while the job runs (atomically: temporary name, then
rename), so a rerun of the same job (same output_dir) reads the ids in data/ and skips them; rows that
failed are retried, and errors.jsonl always lists the rows still failing. Per run the counts
reconcile: read = quarantined + repeated ids + already answered + answered now + failed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.data
from ray.data.expressions import col

from lmforge.config.infer import BatchInferConfig
from lmforge.data.files.sources import (
    PlannedChunk,
    input_record,
    list_source_files,
    plan_chunks,
    read_records,
    survey_source_file,
)
from lmforge.data.reports.counts import drop_keys, write_quarantine
from lmforge.infer.engine import model_limits, run_requests, too_long_result
from lmforge.infer.prompts import PromptTokenizer, prompt_record
from lmforge.manifest import Manifest
from lmforge.runtime import init_ray
from lmforge.stage_outputs import BatchAnswers

log = logging.getLogger(__name__)

PROMPT_SCHEMA = pa.schema([
    ("key", pa.int64()), ("source", pa.string()), ("line", pa.int64()), ("id", pa.string()),
    ("messages", pa.string()), ("reference", pa.string()), ("status", pa.string()), ("reason", pa.string()),
    ("raw", pa.string()),
])
ANSWER_SCHEMA = pa.schema([
    ("id", pa.string()), ("source", pa.string()), ("line", pa.int64()), ("text", pa.string()),
    ("prompt_tokens", pa.int64()), ("generated_tokens", pa.int64()), ("finish_reason", pa.string()),
    ("reference", pa.string()),
])
ANSWER_COLUMNS = tuple(ANSWER_SCHEMA.names)
JOB_FILE = "job.json"


def run_batch_infer(cfg: BatchInferConfig) -> Manifest:
    files = list_source_files(cfg.sources)
    model_limits(cfg.model_dir, cfg.engine)  # a missing model stops us before any work
    out = prepare_output_dir(cfg)
    answered = answered_ids(out / "data")
    init_ray(cfg.ray)
    started = time.perf_counter()

    survey = ray.remote(num_cpus=1)(survey_source_file)
    surveys = ray.get([survey.remote(f, 64 * 1024**2) for f in files])
    records = read_prompts(plan_chunks(files, surveys), cfg.read_workers).materialize()
    skipped_keys, counts = select_new_prompts(records, answered)
    counts["read"] += sum(isinstance(s, str) for s in surveys)  # an unreadable file is one quarantined record
    log.info("batch-infer: %d prompts to answer; %d answered by earlier runs, %d repeated ids skipped",
             counts["submitted"], counts["already_answered"], counts["repeated_ids"])
    run = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    totals = answer_prompts(records, skipped_keys, cfg, out, run) if counts["submitted"] else {}
    seconds = time.perf_counter() - started

    counts["answered"] = int(totals.get("sum(answered)") or 0)
    counts["failed"] = int(totals.get("sum(failed)") or 0)
    counts["quarantined"] = write_quarantine(records, files, surveys, out / "quarantine.jsonl")
    failures = merge_errors(out)
    counts["failed_by_reason"] = failures
    reconcile(counts)
    counts["in_output"] = len(answered) + counts["answered"]
    counts["generated_tokens"] = int(totals.get("sum(generated_tokens)") or 0)
    counts["prompt_tokens"] = int(totals.get("sum(prompt_tokens)") or 0)
    manifest = Manifest(
        stage="batch-infer",
        config=cfg.model_dump(),
        inputs=[input_record(f, s) for f, s in zip(files, surveys, strict=True)]
        + [{"model_dir": str(Path(cfg.model_dir).resolve())}],
        outputs=BatchAnswers(
            dir=str(out.resolve()), data="data/", format=cfg.output_format, run=run,
            columns=list(ANSWER_COLUMNS), errors="errors.jsonl", quarantine="quarantine.jsonl",
            seconds=round(seconds, 2),
            prompts_per_second=round(counts["answered"] / seconds, 3) if seconds else None,
            generated_tokens_per_second=round(counts["generated_tokens"] / seconds, 3) if seconds else None,
        ).model_dump(),
        counts=counts,
    )
    manifest.write(out)
    return manifest


def answer_prompts(records: ray.data.Dataset, skipped_keys: np.ndarray, cfg: BatchInferConfig, out: Path,
                   run: str) -> dict:
    """Tokenize, generate and write the new prompts; sums of answered, failed and token counts.

    Prompts that cannot fit the engine's max_model_len fail here, without an engine (a rerun whose
    only leftovers are such prompts starts none)."""
    max_len, _ = model_limits(cfg.model_dir, cfg.engine)
    todo = records.filter(expr=col("status") == "ok").map_batches(
        drop_keys, batch_format="pyarrow", fn_kwargs={"removed": skipped_keys})
    requests = todo.map_batches(
        PromptTokenizer, fn_constructor_kwargs={"model_dir": cfg.model_dir}, batch_format="pyarrow",
        concurrency=cfg.read_workers,
    ).map_batches(_request_columns, batch_format="pyarrow", fn_kwargs={"max_tokens": cfg.sampling.max_tokens})
    requests = requests.materialize()
    results = requests.filter(expr=col("prompt_tokens") >= max_len).map_batches(
        _too_long, batch_format="pyarrow", fn_kwargs={"max_len": max_len})
    fitting = requests.filter(expr=col("prompt_tokens") < max_len)
    if fitting.count():
        carry = ("source", "line", "reference")
        results = results.union(run_requests(fitting, cfg.model_dir, cfg.engine, cfg.sampling, carry=carry))
    written = results.map_batches(
        _write_block, batch_format="pyarrow", batch_size=None,
        fn_kwargs={"out_dir": str(out), "run": run, "output_format": cfg.output_format},
    )
    return written.sum(["answered", "failed", "generated_tokens", "prompt_tokens"])


def prepare_output_dir(cfg: BatchInferConfig) -> Path:
    """The output dir, checked to belong to this job (same model and sampling),
    cleared of a crash's debris."""
    out = Path(cfg.output_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    job = {"model_dir": str(Path(cfg.model_dir).resolve()), "sampling": cfg.sampling.model_dump(),
           "output_format": cfg.output_format, "model_files": _model_fingerprint(Path(cfg.model_dir))}
    job_file = out / JOB_FILE
    if job_file.is_file() and json.loads(job_file.read_text()) != job:
        raise FileExistsError(f"output_dir {out} holds answers of another job ({job_file} differs: "
                              "model, weights, sampling or format); "
                              "use a new output_dir, or delete it to start over")
    job_file.write_text(json.dumps(job, indent=2) + "\n")
    for debris in [*out.glob("data/.*.tmp"), *out.glob("errors/*.jsonl")]:  # failed rows are retried
        debris.unlink()
    return out


def _model_fingerprint(model_dir: Path) -> str:
    """Names and sizes of the weight files: a reconverted model is another job."""
    files = sorted(p for p in model_dir.glob("*.safetensors"))
    return hashlib.sha256("".join(f"{p.name}:{p.stat().st_size};" for p in files).encode()).hexdigest()[:16]


def answered_ids(data_dir: Path) -> set[str]:
    """Ids already answered by earlier runs of this job."""
    ids: set[str] = set()
    for path in sorted(data_dir.glob("part-*")):
        if path.suffix == ".parquet":
            ids.update(pq.read_table(path, columns=["id"]).column("id").to_pylist())
        else:
            with path.open(encoding="utf-8") as lines:
                ids.update(json.loads(line)["id"] for line in lines if line.strip())
    return ids


def read_prompts(chunks: list[PlannedChunk], workers: int) -> ray.data.Dataset:
    """One row per record: id, messages (JSON), reference; or status quarantined with the reason."""
    index = ray.data.from_items([{"chunk": c.index} for c in chunks], override_num_blocks=max(len(chunks), 1))
    return index.map_batches(_read_chunk_prompts, batch_size=1, batch_format="numpy",
                             fn_kwargs={"chunks": chunks}, concurrency=workers)


def _read_chunk_prompts(batch: dict, chunks: list[PlannedChunk]) -> pa.Table:
    rows = []
    for i in batch["chunk"]:
        for row in read_records(chunks[int(i)], convert=prompt_record):
            prompt = json.loads(row.pop("text")) if row["status"] == "ok" else {}
            row.pop("chunk")
            rows.append(row | {
                "id": prompt.get("id") or f"{row['source']}:{row['line']}",
                "messages": json.dumps(prompt.get("messages"), ensure_ascii=False) if prompt else None,
                "reference": prompt.get("reference"),
            })
    return pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA)


def select_new_prompts(records: ray.data.Dataset, answered: set[str]) -> tuple[np.ndarray, dict]:
    """Keys of readable records not to send (id answered before, or repeated: the first copy counts)."""
    ok = (records.filter(expr=col("status") == "ok").select_columns(["key", "id"])
          .to_pandas().sort_values("key"))
    repeated = ok["id"].duplicated().to_numpy()
    done = ok["id"].isin(answered).to_numpy() & ~repeated
    skipped = np.sort(ok["key"].to_numpy()[repeated | done])
    counts = {"read": records.count(), "repeated_ids": int(repeated.sum()),
              "already_answered": int(done.sum()), "submitted": int(len(ok) - repeated.sum() - done.sum())}
    return skipped, counts


def _request_columns(batch: pa.Table, max_tokens: int) -> pa.Table:
    return pa.table({
        "id": batch.column("id"), "prompt_ids": batch.column("prompt_ids"),
        "max_tokens": pa.array(np.full(batch.num_rows, max_tokens), pa.int64()),
        "score_from": pa.array(np.full(batch.num_rows, -1), pa.int64()),
        "prompt_tokens": pc.list_value_length(batch.column("prompt_ids")).cast(pa.int64()),
        "source": batch.column("source"), "line": batch.column("line"),
        "reference": batch.column("reference"),
    })


def _too_long(batch: pa.Table, max_len: int) -> pa.Table:
    """Failed results for prompts that leave no room for an answer in max_len tokens."""
    rows = [too_long_result(i, t, max_len)
            for i, t in zip(batch.column("id").to_pylist(), batch.column("prompt_tokens").to_pylist(),
                            strict=True)]
    table = pa.Table.from_pylist(rows)
    for name in ("source", "line", "reference"):
        table = table.append_column(name, batch.column(name))
    return table


def _write_block(block: pa.Table, out_dir: str, run: str, output_format: str) -> pa.Table:
    """Answers to data/, failures to errors/, as soon as the engine returns the block (resumable)."""
    failed = pc.not_equal(block.column("error"), "")
    answers = block.filter(pc.invert(failed)).select(list(ANSWER_COLUMNS)).cast(ANSWER_SCHEMA)
    errors = block.filter(failed)
    name = f"part-{run}-{uuid.uuid4().hex[:12]}"
    if answers.num_rows:
        target = Path(out_dir) / "data" / f"{name}.{output_format}"
        temporary = target.with_name(f".{target.name}.tmp")
        if output_format == "parquet":
            pq.write_table(answers, temporary)
        else:
            temporary.write_text("".join(_json_line(r) for r in answers.to_pylist()), encoding="utf-8")
        os.replace(temporary, target)  # a crash never leaves a half-written part that a rerun would trust
    if errors.num_rows:
        (Path(out_dir) / "errors").mkdir(exist_ok=True)
        (Path(out_dir) / "errors" / f"{name}.jsonl").write_text("".join(_json_line(
            {"id": r["id"], "source": r["source"], "line": r["line"], "prompt_tokens": r["prompt_tokens"],
             "reason": r["error"]}) for r in errors.to_pylist()), encoding="utf-8")
    return pa.table({"answered": [answers.num_rows], "failed": [errors.num_rows],
                     "generated_tokens": [pc.sum(answers.column("generated_tokens")).as_py() or 0],
                     "prompt_tokens": [pc.sum(answers.column("prompt_tokens")).as_py() or 0]})


def merge_errors(out: Path) -> dict[str, int]:
    """errors/*.jsonl of this run -> errors.jsonl sorted by id; failures counted by kind (too_long, ...)."""
    rows = [json.loads(line) for part in sorted(out.glob("errors/*.jsonl"))
            for line in part.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows.sort(key=lambda r: r["id"])
    (out / "errors.jsonl").write_text("".join(_json_line(r) for r in rows), encoding="utf-8")
    for part in out.glob("errors/*.jsonl"):
        part.unlink()
    kinds: dict[str, int] = {}
    for row in rows:
        kind = row["reason"].split(":", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def reconcile(counts: dict) -> None:
    """read = quarantined + repeated + already answered + answered now + failed, or the run is wrong."""
    accounted = (counts["quarantined"] + counts["repeated_ids"] + counts["already_answered"]
                 + counts["answered"] + counts["failed"])
    if accounted != counts["read"] or counts["answered"] + counts["failed"] != counts["submitted"]:
        raise RuntimeError(f"batch-infer: counts do not reconcile: {counts}")
    if sum(counts["failed_by_reason"].values()) != counts["failed"]:
        raise RuntimeError(f"batch-infer: errors.jsonl does not hold every failed row: {counts}")


def _json_line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"
