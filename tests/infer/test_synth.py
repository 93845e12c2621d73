"""lmforge synth: recipes on strings,
and a QA-from-passages job on real Ray Data + vLLM feeding prepare-sft."""

from __future__ import annotations

import json

import pytest
from conftest import PASSAGES, WRITER_REPLIES

from lmforge.config import (
    EngineConfig,
    SamplingConfig,
    SFTDataConfig,
    SFTSourceConfig,
    SourceConfig,
    SynthConfig,
)
from lmforge.infer.parsers import Unparsed
from lmforge.infer.synth import conversations_from, split_passages


def _cfg(recipe: str, **kw) -> SynthConfig:
    return SynthConfig(
        recipe=recipe, model_dir="m", sources=[SourceConfig(path="x.txt")], output_dir="o", **kw
    )


def _result(text: str, finish_reason: str = "stop", error: str = "") -> dict:
    return {"text": text, "finish_reason": finish_reason, "error": error}


def test_passages_keep_whole_sentences_up_to_the_limit():
    text = "第一句话。第二句话比较长一些！第三句？" + "长" * 25
    assert split_passages(text, max_chars=12) == [
        "第一句话。",
        "第二句话比较长一些！",
        "第三句？",
        "长" * 12,
        "长" * 12,
        "长",
    ]
    assert split_passages("一。二。三。", max_chars=12) == ["一。二。三。"]


def test_a_parsed_answer_becomes_one_conversation_per_pair_with_the_passage_as_provenance():
    item = {
        "id": "fever:3:0",
        "passage": "...",
        "provenance": {"source": "fever", "line": 3, "passage_id": "fever:3:0"},
    }
    text = "问题1:疟疾由什么引起?\n答案1:疟原虫。\n问题2:疟疾怎么传播?\n答案2:按蚊叮咬。"
    records = conversations_from(_cfg("qa_from_passages"), item, _result(text))
    assert [r["id"] for r in records] == ["fever:3:0#1", "fever:3:0#2"]
    assert records[0]["conversations"] == [
        {"from": "human", "value": "疟疾由什么引起?"},
        {"from": "gpt", "value": "疟原虫。"},
    ]
    assert (
        records[1]["provenance"]["passage_id"] == "fever:3:0"
        and records[1]["provenance"]["recipe"] == "qa_from_passages"
    )


@pytest.mark.parametrize(("result", "match"), [
    (_result("这段内容很好。"), "no 问题/答案"),
    (_result("问题1:截断的", finish_reason="length"), "truncated"),
    (_result("", error="too_long: the prompt has 300 tokens"), "too_long"),
])
def test_an_unusable_generation_raises_with_its_reason(result, match):
    item = {"id": "a", "passage": "p", "provenance": {}}
    with pytest.raises(ValueError, match=match):
        conversations_from(_cfg("qa_from_passages"), item, result)


def test_a_refusal_keeps_the_question_and_the_answer():
    item = {"id": "q:1", "question": "帮我订一张机票", "provenance": {}}
    [record] = conversations_from(_cfg("polite_refusal"), item, _result(" 抱歉,我是医疗助手,无法订票。 "))
    assert [t["value"] for t in record["conversations"]] == ["帮我订一张机票", "抱歉,我是医疗助手,无法订票。"]
    with pytest.raises(Unparsed, match="empty"):
        conversations_from(_cfg("polite_refusal"), item, _result("  "))


def test_multi_turn_extends_the_pair_and_drops_a_repeated_opening():
    item = {"id": "d:1", "question": "头痛怎么办?", "answer": "多休息。", "provenance": {}}
    text = "患者:头痛怎么办?\n医生:多休息。\n患者:要吃药吗?\n医生:疼得厉害可以吃止痛药。"
    [record] = conversations_from(_cfg("multi_turn"), item, _result(text))
    assert [t["value"] for t in record["conversations"]] == [
        "头痛怎么办?",
        "多休息。",
        "要吃药吗?",
        "疼得厉害可以吃止痛药。",
    ]
    with pytest.raises(Unparsed, match="only repeats"):
        conversations_from(_cfg("multi_turn"), item, _result("患者:头痛怎么办?\n医生:多休息。"))


def test_a_template_without_its_slot_is_a_config_error():
    with pytest.raises(ValueError, match=r"must contain \{passage\}"):
        _cfg("qa_from_passages", prompts={"qa_from_passages": "提出问题"})


@pytest.fixture(scope="module")
def synth_run(ray_local, qa_writer_model_dir, tmp_path_factory):  # noqa: ARG001 - starts Ray first
    from lmforge.infer.synth import run_synth

    root = tmp_path_factory.mktemp("synth")
    # the two trained passages, a heading (too short), a passage of rare characters too long for the engine
    too_long = "".join(chr(0x4E00 + 7 * i) for i in range(380))
    (root / "book.txt").write_text(
        "\n".join([PASSAGES[0], "第一章", PASSAGES[1], too_long]) + "\n", encoding="utf-8"
    )
    cfg = SynthConfig(recipe="qa_from_passages", model_dir=str(qa_writer_model_dir),
                      sources=[SourceConfig(path=str(root / "book.txt"))], output_dir=str(root / "out"),
                      passage_chars=400, min_passage_chars=10, sampling=SamplingConfig(max_tokens=64),
                      engine=EngineConfig(batch_size=8))
    return run_synth(cfg), root / "out"


def test_the_qa_job_keeps_parsed_pairs_and_quarantines_the_rest_with_counts_that_reconcile(synth_run):
    manifest, out = synth_run
    c = manifest.counts
    assert c["read"] == 4 and c["skipped_short_passages"] == 1 and c["items"] == 3
    assert (c["kept_items"], c["unparsed_items"], c["failed_items"]) == (1, 1, 1)
    assert c["sft_records"] == 1
    quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert sorted(q["stage"] for q in quarantine) == ["failed", "unparsed"]
    assert {q["provenance"]["passage_id"] for q in quarantine} == {"book:3:0", "book:4:0"}
    assert len((out / "generations.jsonl").read_text().splitlines()) == 3


def test_the_synthetic_records_go_straight_into_prepare_sft(synth_run, tiny_tokenizer, tmp_path):
    from lmforge.data.stages.prepare_sft import run_prepare_sft

    _, out = synth_run
    [record] = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    assert record["provenance"]["passage_id"] == "book:1:0"
    question, answer = WRITER_REPLIES[0].split("\n")
    assert [t["value"] for t in record["conversations"]] == [question[4:], answer[4:]]
    manifest = run_prepare_sft(SFTDataConfig(
        sources=[SFTSourceConfig(path=str(out / "sft.jsonl"))], tokenizer=str(tiny_tokenizer),
        output_dir=str(tmp_path / "sft_data"), max_length=128, workers=1,
    ))
    assert manifest.inputs[0]["record_format"] == "sharegpt"
    assert manifest.counts["total"]["read"] == 1 and manifest.counts["total"]["quarantined"] == 0
    assert manifest.outputs["samples"] >= 1
