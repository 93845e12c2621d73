"""`lmforge eval`: perplexity, multiple choice and open QA of several models, side by side.

    per model: its tokenizer and chat template -> requests of every task (eval_tasks)
      -> one pass through vLLM engine actors (ray.data.llm; one engine start per model)
      -> metrics per task -> report.json, report.md (a table per task, a row per model)
      -> open_qa.jsonl: each question, its reference and every model's answer, for review

Every model answers the same questions with the same prompts (few-shot counts may differ only when a
model's tokenizer makes a prompt too long); greedy by default, so a rerun gives the same report.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lmforge.config.infer import EvalConfig, EvalModelConfig
from lmforge.infer.engine import model_limits, run_request_list
from lmforge.infer.eval_tasks import (
    load_cases,
    load_questions,
    mcq_metrics,
    mcq_requests,
    open_qa_metrics,
    open_qa_requests,
    perplexity_metrics,
    perplexity_requests,
)
from lmforge.infer.prompts import PromptTokenizer
from lmforge.infer.report import write_report
from lmforge.manifest import Manifest
from lmforge.runtime import init_ray

log = logging.getLogger(__name__)


def run_eval(cfg: EvalConfig) -> Manifest:
    for model in cfg.models:
        max_len, _ = model_limits(model.path, cfg.engine)  # every model exists before any engine starts
        if cfg.perplexity and cfg.perplexity.window >= max_len:
            raise ValueError(f"perplexity.window {cfg.perplexity.window} leaves no room in max_model_len {max_len} "
                             f"of model {model.name}: set it to at most {max_len - 1}")
    questions = {task.name: load_questions(task.path, task.max_questions) for task in cfg.multiple_choice}
    dev = {task.name: load_questions(task.dev_path) if task.dev_path else [] for task in cfg.multiple_choice}
    cases = load_cases(cfg.open_qa) if cfg.open_qa else []
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    init_ray(cfg.ray)

    metrics: dict[str, dict[str, dict]] = {}
    answers: dict[str, list[str]] = {}
    for model in cfg.models:
        log.info("eval: model %s (%s)", model.name, model.path)
        for task, value in evaluate_model(cfg, model, questions, dev, cases, answers).items():
            metrics.setdefault(task, {})[model.name] = value
    _write_open_qa(out / "open_qa.jsonl", cases, answers)
    report = write_report(out, [m.model_dump() for m in cfg.models], metrics)
    manifest = Manifest(
        stage="eval", config=cfg.model_dump(),
        inputs=[{"model": m.name, "model_dir": str(Path(m.path).resolve())} for m in cfg.models],
        outputs={"dir": str(out.resolve()), "report": "report.json", "report_md": "report.md",
                 "open_qa": "open_qa.jsonl" if cases else None, "tasks": report["tasks"]},
        counts={"models": len(cfg.models), "questions": {n: len(q) for n, q in questions.items()},
                "open_qa_questions": len(cases)},
    )
    manifest.write(out)
    return manifest


def evaluate_model(cfg: EvalConfig, model: EvalModelConfig, questions: dict, dev: dict, cases: list[dict],
                   answers: dict[str, list[str]]) -> dict[str, dict]:
    """Every task's metrics for one model; its open QA answers go into `answers[model.name]`."""
    tokenizer = PromptTokenizer(model.path)
    max_len, _ = model_limits(model.path, cfg.engine)

    def encode_chat(text: str) -> list[int]:
        return tokenizer.encode_messages([{"role": "user", "content": text}])

    requests: list[dict] = []
    if cfg.perplexity:
        requests += perplexity_requests(cfg.perplexity, tokenizer.encode, tokenizer.tokenizer.eos_token_id)
    for task in cfg.multiple_choice:
        requests += mcq_requests(task, questions[task.name], dev[task.name], tokenizer.encode, encode_chat, max_len)
    if cfg.open_qa:
        requests += open_qa_requests(cfg.open_qa, cases, encode_chat)
    scoring = any(r["score_from"] >= 0 for r in requests)
    results = run_request_list(requests, model.path, cfg.engine, cfg.sampling, scoring=scoring)

    metrics = {}
    if cfg.perplexity:
        metrics["perplexity"] = perplexity_metrics(requests, results)
    for task in cfg.multiple_choice:
        metrics[f"multiple_choice/{task.name}"] = mcq_metrics(task, questions[task.name], results)
    if cfg.open_qa:
        metrics["open_qa"] = open_qa_metrics(cases, results)
        answers[model.name] = [results[f"qa:{i}"]["text"] or f"[{results[f'qa:{i}']['error']}]"
                               for i in range(len(cases))]
    return metrics


def _write_open_qa(path: Path, cases: list[dict], answers: dict[str, list[str]]) -> None:
    with path.open("w", encoding="utf-8") as sink:
        for i, item in enumerate(cases):
            record = {"case": item["case"], "title": item["title"], "question": item["question"],
                      "reference": item["reference"], "answers": {name: a[i] for name, a in answers.items()}}
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")
