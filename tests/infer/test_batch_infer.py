"""lmforge batch-infer on real Ray Data + vLLM (CPU) with the tiny chat model: ids, resume, failures."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from checkpoint_helpers import QA

from lmforge.config import BatchInferConfig, EngineConfig, PromptSourceConfig, SamplingConfig

N_PROMPTS = 50


@pytest.fixture(scope="module")
def prompt_files(tmp_path_factory):
    """50 prompts (the two trained questions, alternately), one over-long prompt, one broken line,
    and two ShareGPT conversations in a second file."""
    root = tmp_path_factory.mktemp("prompts")
    lines = [
        json.dumps({"id": f"p{i:02d}", "prompt": QA[i % 2][0]}, ensure_ascii=False) for i in range(N_PROMPTS)
    ]
    lines.insert(10, json.dumps({"id": "too-long", "prompt": "头痛怎么办？" * 200}, ensure_ascii=False))
    lines.insert(20, '{"id": "broken", "prompt": ')
    (root / "prompts.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    sharegpt = [
        {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]} for q, a in QA
    ]
    (root / "chats.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sharegpt),
                                      encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def runs(ray_local, chat_model_dir, prompt_files, tmp_path_factory):  # noqa: ARG001 - starts Ray first
    """The job run twice on the same output_dir: the manifests of both runs and the output dir."""
    from lmforge.infer.batch_infer import run_batch_infer

    cfg = BatchInferConfig(
        model_dir=str(chat_model_dir),
        sources=[PromptSourceConfig(path=str(prompt_files / "prompts.jsonl")),
                 PromptSourceConfig(path=str(prompt_files / "chats.jsonl"))],
        output_dir=str(tmp_path_factory.mktemp("batch") / "out"),
        sampling=SamplingConfig(max_tokens=32),
        engine=EngineConfig(min_engines=1, max_engines=1, batch_size=16),
    )
    first = run_batch_infer(cfg)
    second = run_batch_infer(cfg)
    return first, second, cfg


def _answers(out_dir) -> list[dict]:
    return pq.read_table(out_dir / "data").to_pylist()


def test_every_prompt_id_is_answered_exactly_once(runs):
    first, _, cfg = runs
    ids = [row["id"] for row in _answers(Path(cfg.output_dir))]
    expected = {f"p{i:02d}" for i in range(N_PROMPTS)} | {"chats:1", "chats:2"}
    assert sorted(ids) == sorted(expected)
    assert first.counts["answered"] == len(expected) == first.counts["in_output"]


def test_answers_are_the_trained_replies_in_the_chat_template_and_stop_at_eos(runs):
    rows = {row["id"]: row for row in _answers(Path(runs[2].output_dir))}
    # greedy: the same every time
    assert {rows[f"p{i:02d}"]["text"] for i in range(0, N_PROMPTS, 2)} == {QA[0][1]}
    assert len({rows[f"p{i:02d}"]["text"] for i in range(1, N_PROMPTS, 2)}) == 1
    assert rows["p00"]["finish_reason"] == "stop" and 0 < rows["p00"]["generated_tokens"] < 32
    assert rows["p00"]["prompt_tokens"] > 0 and rows["p00"]["source"] == "prompts"
    # a conversation's last assistant turn is the reference; the turns before it the prompt
    assert rows["chats:1"]["reference"] == QA[0][1] and rows["chats:1"]["text"] == QA[0][1]


def test_an_over_long_prompt_and_a_broken_line_are_reported_not_fatal(runs):
    first, _, cfg = runs
    out = Path(cfg.output_dir)
    [error] = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert error["id"] == "too-long" and error["reason"].startswith("too_long:")
    [bad] = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert bad["line"] == 21 and "invalid JSON" in bad["reason"]
    assert first.counts["failed"] == 1 and first.counts["failed_by_reason"] == {"too_long": 1}
    assert first.counts["quarantined"] == 1


def test_counts_reconcile(runs):
    for manifest in runs[:2]:
        c = manifest.counts
        assert c["read"] == N_PROMPTS + 2 + 2  # 50 prompts, too-long, broken, two conversations
        assert (
            c["read"]
            == c["quarantined"] + c["repeated_ids"] + c["already_answered"] + c["answered"] + c["failed"]
        )


def test_a_rerun_skips_every_answered_id_and_retries_only_the_failed_one(runs):
    _, second, cfg = runs
    assert second.counts["already_answered"] == N_PROMPTS + 2
    assert second.counts["answered"] == 0 and second.counts["failed"] == 1  # the over-long prompt, again
    assert second.counts["in_output"] == N_PROMPTS + 2
    assert len(_answers(Path(cfg.output_dir))) == N_PROMPTS + 2  # nothing written twice


def test_an_output_dir_of_another_job_is_refused(runs):
    from lmforge.infer.batch_infer import prepare_output_dir

    cfg = runs[2].model_copy(update={"sampling": SamplingConfig(max_tokens=7)})
    with pytest.raises(FileExistsError, match="holds answers of another job"):
        prepare_output_dir(cfg)
