"""`lmforge eval`: perplexity, multiple choice and open QA of several models, side by side.

    every task's data, loaded once (EvalData; its files go into the manifest with size and sha256)
    per model: its tokenizer and chat template -> requests of every task (eval_tasks)
      -> one pass through vLLM engine actors (ray.data.llm; one engine start per model)
      -> metrics per task -> report.json, report.md (a table per task, a row per model)
      -> predictions.jsonl: per model, task and multiple-choice question, each option's log-likelihood,
         the generated text, the option parsed from it and the gold answer
      -> open_qa.jsonl: each question, its reference and every model's answer, for review

Every model answers the same questions with the same prompts (few-shot counts may differ only when a
model's tokenizer makes a prompt too long); greedy by default, so a rerun gives the same report.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.config.infer import EvalConfig, EvalModelConfig
from lmforge.data.files.sources import LocalSources
from lmforge.infer.engine import model_limits, run_request_list
from lmforge.infer.eval_tasks import (
    judge_multiple_choice,
    load_cases,
    load_questions,
    mcq_requests,
    open_qa_metrics,
    open_qa_requests,
    perplexity_metrics,
    perplexity_requests,
    score_multiple_choice,
)
from lmforge.infer.prompts import PromptTokenizer
from lmforge.infer.report import PREDICTIONS, write_report
from lmforge.manifest import Manifest
from lmforge.runtime import init_ray
from lmforge.stage_outputs import EvalReport

log = logging.getLogger(__name__)


@dataclass
class EvalData:
    """What every model is asked, read once before any engine starts."""

    perplexity: LocalSources | None
    texts: list[str]  # perplexity documents
    questions: dict[str, list[dict]]  # multiple-choice task name -> its questions
    dev: dict[str, list[dict]]  # ... and its few-shot examples
    cases: list[dict]  # open QA items

    @classmethod
    def load(cls, cfg: EvalConfig) -> EvalData:
        ppl = LocalSources.survey(cfg.perplexity.sources) if cfg.perplexity else None
        return cls(
            perplexity=ppl, texts=list(ppl.texts(cfg.perplexity.max_documents)) if ppl else [],
            questions={task.name: load_questions(task.path, task.max_questions)
                       for task in cfg.multiple_choice},
            dev={task.name: load_questions(task.dev_path) if task.dev_path else []
                 for task in cfg.multiple_choice},
            cases=load_cases(cfg.open_qa) if cfg.open_qa else [],
        )

    def inputs(self, cfg: EvalConfig) -> list[dict]:
        """The manifest's records of every file read: perplexity sources, question and dev files,
        open QA cases."""
        records = [{"task": "perplexity", **r} for r in self.perplexity.inputs()] if self.perplexity else []
        for task in cfg.multiple_choice:
            records.append(_question_file(f"multiple_choice/{task.name}", "questions", task.path))
            if task.dev_path:
                records.append(_question_file(f"multiple_choice/{task.name}", "dev", task.dev_path))
        if cfg.open_qa:
            records.append(_question_file("open_qa", "cases", cfg.open_qa.path))
        return records


@dataclass
class ModelResults:
    metrics: dict[str, dict] = field(default_factory=dict)  # task -> its metrics
    predictions: list[dict] = field(default_factory=list)  # a record per multiple-choice question
    open_qa_answers: list[str] = field(default_factory=list)


def run_eval(cfg: EvalConfig) -> Manifest:
    """Evaluate every model on every task;
    write the reports, predictions.jsonl, open_qa.jsonl and the manifest."""
    for model in cfg.models:
        max_len, _ = model_limits(model.path, cfg.engine)  # every model exists before any engine starts
        if cfg.perplexity and cfg.perplexity.window >= max_len:
            raise ValueError(f"perplexity.window {cfg.perplexity.window} leaves no room in max_model_len "
                             f"{max_len} of model {model.name}: set it to at most {max_len - 1}")
    data = EvalData.load(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    init_ray(cfg.ray)

    metrics: dict[str, dict[str, dict]] = {}
    predictions: list[dict] = []
    answers: dict[str, list[str]] = {}
    for model in cfg.models:
        log.info("eval: model %s (%s)", model.name, model.path)
        result = evaluate_model(cfg, model, data)
        for task, value in result.metrics.items():
            metrics.setdefault(task, {})[model.name] = value
        predictions += result.predictions
        answers[model.name] = result.open_qa_answers
    if cfg.multiple_choice:
        _write_jsonl(out / PREDICTIONS, predictions)
    if cfg.open_qa:
        _write_jsonl(out / "open_qa.jsonl", _open_qa_records(data.cases, answers))
    report = write_report(out, [m.model_dump() for m in cfg.models], metrics)
    manifest = Manifest(
        stage="eval", config=cfg.model_dump(),
        inputs=[{"model": m.name, "model_dir": str(Path(m.path).resolve())} for m in cfg.models]
        + data.inputs(cfg),
        outputs=EvalReport(
            dir=str(out.resolve()), report="report.json", report_md="report.md",
            predictions=PREDICTIONS if cfg.multiple_choice else None,
            open_qa="open_qa.jsonl" if cfg.open_qa else None, tasks=report["tasks"],
        ).model_dump(),
        counts={"models": len(cfg.models), "perplexity_documents": len(data.texts),
                "questions": {n: len(q) for n, q in data.questions.items()},
                "open_qa_questions": len(data.cases)},
    )
    manifest.write(out)
    return manifest


def evaluate_model(cfg: EvalConfig, model: EvalModelConfig, data: EvalData) -> ModelResults:
    """Every task's metrics for one model, its multiple-choice predictions and its open QA answers."""
    tokenizer = PromptTokenizer(model.path)
    max_len, _ = model_limits(model.path, cfg.engine)

    def encode_chat(text: str) -> list[int]:
        return tokenizer.encode_messages([{"role": "user", "content": text}])

    requests: list[dict] = []
    if cfg.perplexity:
        requests += perplexity_requests(cfg.perplexity, data.texts, tokenizer.encode,
                                        tokenizer.tokenizer.eos_token_id)
    for task in cfg.multiple_choice:
        requests += mcq_requests(task, data.questions[task.name], data.dev[task.name], tokenizer.encode,
                                 encode_chat, max_len)
    if cfg.open_qa:
        requests += open_qa_requests(cfg.open_qa, data.cases, encode_chat)
    scoring = any(r["score_from"] >= 0 for r in requests)
    results = run_request_list(requests, model.path, cfg.engine, cfg.sampling, scoring=scoring)

    out = ModelResults()
    if cfg.perplexity:
        out.metrics["perplexity"] = perplexity_metrics(requests, results)
    for task in cfg.multiple_choice:
        judged = judge_multiple_choice(task, data.questions[task.name], results)
        out.metrics[f"multiple_choice/{task.name}"] = score_multiple_choice(judged)
        out.predictions += [{"model": model.name, "task": task.name, **record} for record in judged]
    if cfg.open_qa:
        out.metrics["open_qa"] = open_qa_metrics(data.cases, results)
        out.open_qa_answers = [results[f"qa:{i}"]["text"] or f"[{results[f'qa:{i}']['error']}]"
                               for i in range(len(data.cases))]
    return out


def _question_file(task: str, role: str, path: str) -> dict:
    content = Path(path).read_bytes()  # question files are small
    return {"task": task, "role": role, "path": str(Path(path).resolve()), "size": len(content),
            "sha256": hashlib.sha256(content).hexdigest()}


def _open_qa_records(cases: list[dict], answers: dict[str, list[str]]) -> list[dict]:
    return [{"case": item["case"], "title": item["title"], "question": item["question"],
             "reference": item["reference"], "answers": {name: a[i] for name, a in answers.items()}}
            for i, item in enumerate(cases)]


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as sink:
        for record in records:
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")
