"""lmforge synth: recipes on strings, a QA-from-passages job on real Ray Data + vLLM feeding prepare-sft,
and a preference job (refusals and references) whose pairs are pairwise_qa records."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from checkpoint_helpers import QA
from conftest import PASSAGES, WRITER_REPLIES

from lmforge.config import (
    EngineConfig,
    SamplingConfig,
    SFTDataConfig,
    SFTSourceConfig,
    SourceConfig,
    SynthConfig,
)
from lmforge.data.text.templates import RecordError
from lmforge.infer.parsers import Unparsed
from lmforge.infer.synth import (
    PolicyRefused,
    SameAsReference,
    _read_preference_input,
    conversations_from,
    item_requests,
    preference_pair,
    split_passages,
)
from lmforge.manifest import Manifest
from lmforge.stage_outputs import SynthData


def _cfg(recipe: str, **kw) -> SynthConfig:
    return SynthConfig(
        recipe=recipe, model_dir="m", sources=[SourceConfig(path="x.txt")], output_dir="o", **kw
    )


def assert_pairwise_qa(record: dict) -> None:
    """The shape prepare-preference reads as pairwise_qa: question, chosen, rejected (non-empty strings,
    the answers different), an optional system prompt; id and provenance ride along."""
    assert set(record) <= {"id", "question", "chosen", "rejected", "system", "provenance"}, record
    for field in ("question", "chosen", "rejected", *(("system",) if "system" in record else ())):
        assert isinstance(record[field], str) and record[field].strip(), (field, record)
    assert record["chosen"].strip() != record["rejected"].strip(), record


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


def test_a_direct_answer_that_already_refuses_or_repeats_the_refusal_is_no_rejected_side():
    item = {"id": "q:1", "branch": "refusals", "question": "帮我订一张机票", "provenance": {}}
    refusal = _result("抱歉,我是医疗助手,无法订票。")
    pair = preference_pair(_cfg("preference"), item, {"chosen": refusal, "rejected": _result("好的,已订。")})
    assert (pair["chosen"], pair["rejected"]) == ("抱歉,我是医疗助手,无法订票。", "好的,已订。")
    with pytest.raises(PolicyRefused, match="already refuses .'抱歉'"):
        preference_pair(_cfg("preference"), item, {"chosen": refusal, "rejected": _result("很抱歉,我不会。")})
    with pytest.raises(PolicyRefused, match="the refusal itself"):
        preference_pair(_cfg("preference"), item,
                        {"chosen": _result("我只回答医疗问题。"), "rejected": _result("我只回答医疗问题")})


def test_an_answer_equal_to_the_reference_but_for_spaces_and_punctuation_is_same_as_reference():
    item = {"id": "qa:1", "branch": "references", "question": "头痛怎么办？", "answer": "多休息，多喝水。",
            "provenance": {}}
    with pytest.raises(SameAsReference):
        preference_pair(_cfg("preference"), item, {"rejected": _result(" 多休息, 多喝水 ")})
    pair = preference_pair(_cfg("preference"), item, {"rejected": _result("多喝热水。")})
    assert (pair["chosen"], pair["rejected"]) == ("多休息，多喝水。", "多喝热水。")
    assert pair["provenance"]["branch"] == "references" and pair["provenance"]["chosen_model_dir"] is None


def test_a_cut_or_failed_side_names_itself_in_the_reason():
    item = {"id": "q:1", "branch": "refusals", "question": "q", "provenance": {}}
    with pytest.raises(Unparsed, match="rejected: truncated"):
        preference_pair(_cfg("preference"), item,
                         {"chosen": _result("抱歉。"), "rejected": _result("好", finish_reason="length")})
    with pytest.raises(ValueError, match="rejected: too_long"):
        preference_pair(_cfg("preference"), item, {"chosen": _result("", finish_reason="length"),
                                                   "rejected": _result("", error="too_long: 300 tokens")})


def test_the_policy_is_asked_the_bare_question_with_the_records_system_prompt():
    cfg = _cfg("preference", policy_model_dir="sft")
    reference = {"id": "a:1", "branch": "references", "question": "头痛怎么办？", "answer": "多休息。",
                 "system": "你是医生。", "provenance": {}}
    messages = [{"role": "system", "content": "你是医生。"}, {"role": "user", "content": "头痛怎么办？"}]
    assert item_requests(cfg, reference) == {"rejected": ("sft", messages)}
    question = {"id": "q:1", "branch": "refusals", "question": "今天股市会涨吗？", "provenance": {}}
    requests = item_requests(cfg, question)
    assert requests["rejected"] == ("sft", [{"role": "user", "content": "今天股市会涨吗？"}])
    assert requests["chosen"][0] == "m" and "今天股市会涨吗？" in requests["chosen"][1][0]["content"]


def test_a_record_goes_to_the_branch_its_shape_says_unless_preference_from_names_one():
    source = SourceConfig(path="x.jsonl")
    alpaca = {"instruction": "头痛怎么办？", "input": "", "output": "多休息。"}
    assert json.loads(_read_preference_input({"text": " 今天股市会涨吗？"}, source, "both")) == {
        "branch": "refusals", "question": "今天股市会涨吗？"}
    assert json.loads(_read_preference_input(alpaca, source, "both")) == {
        "branch": "references", "question": "头痛怎么办？", "answer": "多休息。", "system": None}
    with pytest.raises(RecordError, match="not an SFT record"):
        _read_preference_input({"text": "今天股市会涨吗？"}, source, "references")


def test_preference_settings_default_to_model_dir_and_belong_to_the_preference_recipe():
    assert _cfg("preference").policy_model_dir == "m"
    assert _cfg("polite_refusal").policy_model_dir is None
    with pytest.raises(ValueError, match="policy_model_dir: only recipe preference"):
        _cfg("polite_refusal", policy_model_dir="sft")


def test_a_dumped_synth_config_of_any_recipe_loads_again():
    for recipe in ("polite_refusal", "preference"):
        cfg = _cfg(recipe)
        assert SynthConfig.model_validate(cfg.model_dump()) == cfg


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


# Off-topic questions for the refusals branch, and QA records for the references branch: the chat model's
# greedy answer to QA[0]'s question is its trained answer, so a reference equal to it but for spacing and
# punctuation is same_as_reference; QA[1]'s question gets a reference the model does not give.
OFFTOPIC = ["今天股市会涨吗？", "帮我写一首关于秋天的诗。", "推荐一部好看的电影。"]
OWN_ANSWER = QA[0][1].replace("。", " ")
OTHER_REFERENCE = "头痛时先量血压，持续不缓解请就医。"


@pytest.fixture(scope="module")
def preference_run(ray_local, qa_writer_model_dir, chat_model_dir, tmp_path_factory):  # noqa: ARG001 - Ray
    """model_dir: the QA writer (its 'refusals' are QA-shaped gibberish, but never refuse); policy_model_dir:
    the chat model. Two models, so one engine each; with one model both request lists would share one."""
    from lmforge.infer.synth import run_synth

    root = tmp_path_factory.mktemp("synth_preference")
    (root / "offtopic.txt").write_text("\n".join(OFFTOPIC) + "\n", encoding="utf-8")
    turns = [{"from": "human", "value": QA[1][0]}, {"from": "gpt", "value": OTHER_REFERENCE}]
    qa = [{"instruction": QA[0][0], "input": "", "output": OWN_ANSWER}, {"conversations": turns}]
    (root / "qa.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in qa),
                                   encoding="utf-8")
    cfg = SynthConfig(recipe="preference", model_dir=str(qa_writer_model_dir),
                      policy_model_dir=str(chat_model_dir),
                      sources=[SourceConfig(path=str(root / name)) for name in ("offtopic.txt", "qa.jsonl")],
                      output_dir=str(root / "out"), sampling=SamplingConfig(max_tokens=32),
                      engine=EngineConfig(batch_size=8))
    manifest = run_synth(cfg)
    records = [json.loads(line) for line in (root / "out" / "preference.jsonl").read_text().splitlines()]
    generations = [json.loads(line) for line in (root / "out" / "generations.jsonl").read_text().splitlines()]
    return manifest, root / "out", records, generations


def test_the_preference_job_writes_pairwise_qa_records_where_the_manifest_says(preference_run):
    manifest, out, records, _ = preference_run
    outputs = SynthData.model_validate(Manifest.read(out).outputs)
    assert outputs.sft is None and outputs.prepare_sft_source is None
    assert outputs.prepare_preference_source == {"path": str((out / "preference.jsonl").resolve()),
                                                 "record_format": "pairwise_qa"}
    assert outputs.record_format == "pairwise_qa" and (out / outputs.preference).is_file()
    assert records and manifest.counts["preference_records"] == len(records)
    for record in records:
        assert_pairwise_qa(record)


def test_refusal_pairs_prefer_the_writers_refusal_over_the_policys_own_answer(
    preference_run, qa_writer_model_dir, chat_model_dir
):
    _, _, records, generations = preference_run
    text = {(g["id"], g["side"]): g["text"].strip() for g in generations}
    refusals = [r for r in records if r["provenance"]["branch"] == "refusals"]
    assert [r["question"] for r in refusals] == OFFTOPIC
    for record in refusals:
        assert record["chosen"] == text[record["id"], "chosen"]
        assert record["rejected"] == text[record["id"], "rejected"]
        assert record["provenance"]["chosen_model_dir"] == str(qa_writer_model_dir.resolve())
        assert record["provenance"]["rejected_model_dir"] == str(chat_model_dir.resolve())
        assert record["provenance"]["recipe"] == "preference"
        assert record["provenance"]["file"].endswith("offtopic.txt")


def test_reference_pairs_keep_the_reference_and_skip_an_answer_equal_to_it(preference_run):
    manifest, out, records, generations = preference_run
    [pair] = [r for r in records if r["provenance"]["branch"] == "references"]
    [answer] = [g["text"].strip() for g in generations if g["id"] == "qa:2"]
    assert (pair["question"], pair["chosen"], pair["rejected"]) == (QA[1][0], OTHER_REFERENCE, answer)
    assert pair["provenance"]["line"] == 2 and pair["provenance"]["chosen_model_dir"] is None
    assert manifest.counts["same_as_reference_items"] == 1
    assert all(q["stage"] != "same_as_reference" for q in map(json.loads, (out / "quarantine.jsonl").open()))


def test_the_preference_counts_reconcile(preference_run):
    manifest, out, records, _ = preference_run
    c = Counter(manifest.counts)
    assert c["read"] == c["ok_records"] == c["items"] == 5
    assert c["items_by_branch"] == {"refusals": 3, "references": 2}
    assert (c["kept_items"], c["same_as_reference_items"]) == (len(records), 1) == (4, 1)
    outcomes = ("kept", "unparsed", "failed", "policy_refused", "same_as_reference")
    assert sum(c[f"{outcome}_items"] for outcome in outcomes) == c["items"]
    assert (out / "quarantine.jsonl").read_text() == ""


def test_the_preference_records_go_straight_into_prepare_preference(preference_run, chat_model_dir, tmp_path):
    """The loop closed: synth's pairs, read as the manifest's prepare_preference_source says, become rows."""
    from lmforge.align.prepare import run_prepare_preference
    from lmforge.config import PreferenceDataConfig

    _, out, records, _ = preference_run
    source = SynthData.model_validate(Manifest.read(out).outputs).prepare_preference_source
    manifest = run_prepare_preference(PreferenceDataConfig.model_validate({
        "sources": [source], "tokenizer": str(chat_model_dir), "output_dir": str(tmp_path / "pairs"),
        "max_length": 128, "workers": 1,
    }))
    assert manifest.inputs[0]["record_format"] == "pairwise_qa"
    assert manifest.counts["total"]["read"] == len(records) and manifest.counts["total"]["quarantined"] == 0
    assert manifest.outputs["pairs"] == len(records)
