"""report.json and report.md of an evaluation: a table per task, a row per model, a column per metric."""

from __future__ import annotations

import json
from pathlib import Path

PREDICTIONS = "predictions.jsonl"
_TASK_TITLES = {"perplexity": "Perplexity (held-out text; lower is better)",
                "open_qa": "Open QA (answers side by side in open_qa.jsonl)"}


def write_report(out: Path, models: list[dict], metrics: dict[str, dict[str, dict]]) -> dict:
    """Write both files; `metrics[task][model name]` is that model's metrics dict for the task."""
    report = {"models": models, "tasks": metrics}
    (out / "report.json").write_text(
        json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    (out / "report.md").write_text(render_markdown(models, metrics), encoding="utf-8")
    return report


def render_markdown(models: list[dict], metrics: dict[str, dict[str, dict]]) -> str:
    lines = ["# Evaluation report", "", "| model | path |", "|---|---|"]
    lines += [f"| {m['name']} | {m['path']} |" for m in models]
    if any(task.startswith("multiple_choice/") for task in metrics):
        lines += [
            "",
            (
                f"Per question and model (each option's log-likelihood, the generated text, the option "
                f"parsed from it, the gold answer): `{PREDICTIONS}`."
            ),
        ]
    for task, by_model in metrics.items():
        title = _TASK_TITLES.get(task) or f"Multiple choice: {task.split('/', 1)[-1]} (higher is better)"
        columns = list(next(iter(by_model.values())).keys())
        lines += ["", f"## {title}", "", "| model | " + " | ".join(columns) + " |",
                  "|---|" + "---:|" * len(columns)]
        for name, values in by_model.items():
            lines.append(f"| {name} | " + " | ".join(_cell(values.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
