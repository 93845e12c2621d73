"""Preference record schemas -> PreferenceExample: the prompt, the answers, and why a record is refused."""

from __future__ import annotations

import json

import pytest

from lmforge.data.text.conversation import Turn
from lmforge.data.text.preference_formats import (
    PreferenceExample,
    detect_file_record_format,
    detect_record_format,
    to_preference,
)
from lmforge.data.text.templates import RecordError

SHARED_FILES = {
    "dpo_zh_demo.json": "sharegpt_pair", "kto_en_demo.json": "kto",
    "v1_dpo_demo.jsonl": "llamafactory_v1", "toolcall_dpo_zh_demo.jsonl": "sharegpt_pair",
}


def _records(path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.splitlines()]


def _turns(turns: list[Turn]) -> list[tuple[str, str]]:
    return [(t.role, t.content) for t in turns]


def _v1(role: str, text: str, weight: float | None) -> dict:
    message = {"role": role, "content": [{"type": "text", "value": text}]}
    return message if weight is None else {**message, "loss_weight": weight}


@pytest.mark.parametrize(("name", "record_format"), SHARED_FILES.items())
def test_every_record_of_the_shared_files_is_detected_and_read(shared_data, name, record_format):
    records = _records(shared_data / "preference" / name)
    assert detect_file_record_format(name, records[0]) == record_format
    examples = [to_preference(record, record_format) for record in records]
    assert all(e.prompt.turns[-1].role in ("user", "tool") for e in examples)
    assert all(e.chosen[0].role == "assistant" for e in examples)
    assert all((e.rejected is None) == (record_format == "kto") for e in examples)
    assert all(PreferenceExample.from_json(e.to_json()) == e for e in examples)


def test_sharegpt_pair_with_a_system_turn_keeps_it_as_the_system_prompt(shared_data):
    record = next(r for r in _records(shared_data / "preference" / "dpo_zh_demo.json")
                  if r["conversations"][0]["from"] == "system")
    example = to_preference(record, "sharegpt_pair")
    assert example.prompt.system == record["conversations"][0]["value"].strip()
    assert _turns(example.prompt.turns) == [("user", record["conversations"][1]["value"].strip())]
    assert _turns(example.chosen) == [("assistant", record["chosen"]["value"].strip())]
    assert _turns(example.rejected) == [("assistant", record["rejected"]["value"].strip())]


def test_a_tool_call_can_be_the_chosen_answer_and_tool_results_stay_in_the_prompt(shared_data):
    records = _records(shared_data / "preference" / "toolcall_dpo_zh_demo.jsonl")
    call = to_preference(records[0], "sharegpt_pair")
    assert call.chosen[0].content.startswith("Action: get_weather") and call.chosen[0].role == "assistant"
    assert call.prompt.tools[0]["name"] == "get_weather"  # `tools` was a JSON string
    after = to_preference(records[1], "sharegpt_pair")
    assert [t.role for t in after.prompt.turns] == ["user", "assistant", "tool"]  # function_call, observation


def test_a_sharegpt_function_call_message_is_an_assistant_answer_and_a_human_one_is_refused():
    record = {"conversations": [{"from": "human", "value": "查天气"}],
              "chosen": {"from": "function_call", "value": '{"name": "weather"}'},
              "rejected": {"from": "gpt", "value": "晴"}}
    assert to_preference(record, "sharegpt_pair").chosen[0].role == "assistant"
    with pytest.raises(RecordError, match="rejected answer starts with a user turn"):
        to_preference({**record, "rejected": {"from": "human", "value": "x"}}, "sharegpt_pair")


def test_pairwise_qa_reads_question_and_response_fields():
    record = {"question": "头痛怎么办？", "response_chosen": "多休息。", "response_rejected": "不知道。"}
    assert detect_record_format(record) == "pairwise_qa"
    example = to_preference(record, "pairwise_qa")
    assert _turns(example.prompt.turns) == [("user", "头痛怎么办？")]
    assert (_turns(example.chosen), _turns(example.rejected)) == ([("assistant", "多休息。")],
                                                                  [("assistant", "不知道。")])


def test_pairwise_qa_joins_instruction_and_input_after_the_history():
    record = {"instruction": "翻译", "input": "你好", "chosen": "Hello", "rejected": "Hi there friend",
              "system": "你是翻译", "history": [["在吗", "在的"]]}
    assert detect_record_format(record) == "pairwise_qa"
    example = to_preference(record, "pairwise_qa")
    assert example.prompt.system == "你是翻译"
    assert _turns(example.prompt.turns) == [("user", "在吗"), ("assistant", "在的"), ("user", "翻译\n你好")]


def test_messages_pair_takes_the_shared_prefix_as_the_prompt():
    prefix = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
              {"role": "user", "content": "How do I sleep better?"}]
    record = {"chosen": [*prefix, {"role": "assistant", "content": "Keep a schedule."}],
              "rejected": [*prefix, {"role": "assistant", "content": "Just don't."}]}
    assert detect_record_format(record) == "messages_pair"
    example = to_preference(record, "messages_pair")
    assert _turns(example.prompt.turns) == [(m["role"], m["content"]) for m in prefix]
    assert _turns(example.chosen) == [("assistant", "Keep a schedule.")]


def test_messages_pair_whose_answers_start_alike_still_starts_them_at_the_assistant_turn():
    shared = [{"role": "user", "content": "Two steps?"}, {"role": "assistant", "content": "One."},
              {"role": "user", "content": "And?"}]
    record = {"chosen": [*shared, {"role": "assistant", "content": "Two."}],
              "rejected": [*shared, {"role": "assistant", "content": "None."}]}
    example = to_preference(record, "messages_pair")
    assert _turns(example.prompt.turns) == [("user", "Two steps?"), ("assistant", "One."), ("user", "And?")]
    assert _turns(example.rejected) == [("assistant", "None.")]


@pytest.mark.parametrize("prompt", ["What is 2+2?", [{"role": "user", "content": "What is 2+2?"}]],
                         ids=["text", "messages"])
def test_messages_pair_with_a_prompt_field_takes_text_or_messages(prompt):
    as_list = isinstance(prompt, list)
    record = {"prompt": prompt,
              "chosen": [{"role": "assistant", "content": "4"}] if as_list else "4",
              "rejected": [{"role": "assistant", "content": "5"}] if as_list else "5"}
    assert detect_record_format(record) == "messages_pair"
    example = to_preference(record, "messages_pair")
    assert _turns(example.prompt.turns) == [("user", "What is 2+2?")]
    assert (_turns(example.chosen), _turns(example.rejected)) == ([("assistant", "4")], [("assistant", "5")])


def test_llamafactory_v1_answer_starts_at_the_first_weighted_message_and_weight_0_is_not_trained():
    prompt = [_v1("system", "Be brief.", 0.0), _v1("user", "Weather?", 0.0)]
    record = {
        "chosen_messages": [*prompt, _v1("assistant", "calling", 1.0), _v1("tool", "sunny", 0.0),
                            _v1("assistant", "Sunny.", 0.5)],
        "rejected_messages": [*prompt, _v1("assistant", "No idea.", 1.0)],
    }
    example = to_preference(record, "llamafactory_v1")
    assert example.prompt.system == "Be brief." and _turns(example.prompt.turns) == [("user", "Weather?")]
    assert [(t.role, t.trained) for t in example.chosen] == [("assistant", True), ("tool", False),
                                                             ("assistant", True)]


def test_llamafactory_v1_with_different_prompts_is_refused():
    record = {"chosen_messages": [_v1("user", "A?", None), _v1("assistant", "a", None)],
              "rejected_messages": [_v1("user", "B?", None), _v1("assistant", "b", None)]}
    with pytest.raises(RecordError, match="differ before their first message with loss_weight > 0"):
        to_preference(record, "llamafactory_v1")


def test_kto_completion_is_the_last_assistant_message_and_the_label_is_kept():
    record = {"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                           {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}],
              "label": False}
    example = to_preference(record, "kto")
    assert _turns(example.prompt.turns) == [("user", "q1"), ("assistant", "a1"), ("user", "q2")]
    assert _turns(example.chosen) == [("assistant", "a2")] and example.rejected is None
    assert example.desirable is False and example.answers == [example.chosen]
    trl = to_preference({"prompt": "q", "completion": "a", "label": True}, detect_record_format(
        {"prompt": "q", "completion": "a", "label": True}))
    assert _turns(trl.prompt.turns) == [("user", "q")] and trl.desirable is True


def test_field_names_can_be_mapped():
    record = {"ask": "头痛？", "better": "休息。", "worse": "忍着。"}
    example = to_preference(record, "pairwise_qa", {"prompt": "ask", "chosen": "better", "rejected": "worse"})
    assert _turns(example.chosen) == [("assistant", "休息。")]


@pytest.mark.parametrize(("record", "record_format", "reason"), [
    ({"conversations": [{"from": "human", "value": "q"}], "chosen": "same", "rejected": " same "},
     "sharegpt_pair", "chosen and rejected are identical"),
    ({"conversations": [{"from": "system", "value": "s"}], "chosen": "a", "rejected": "b"},
     "sharegpt_pair", "no prompt: no user turn before the answers"),
    ({"question": "q", "response_chosen": "  ", "response_rejected": "b"}, "pairwise_qa",
     "empty chosen answer"),
    ({"question": "q", "response_chosen": "a"}, "pairwise_qa", "missing field 'response_rejected'"),
    ({"question": "q", "chosen": 3, "rejected": "b"}, "pairwise_qa", "field 'chosen' is a number, not text"),
    ({"conversations": "q", "chosen": "a", "rejected": "b"}, "sharegpt_pair",
     "field 'conversations' is a string, not a list of turns"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "label": "yes"},
     "kto", "field 'label' is a string, not true/false"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
      "chosen": "b", "rejected": "c"}, "sharegpt_pair", "the prompt ends with an assistant turn"),
    ({"chosen_messages": [_v1("user", "q", 0)], "rejected_messages": [_v1("user", "q", 0)]},
     "llamafactory_v1", "no message with loss_weight > 0 in 'chosen_messages'"),
])
def test_a_record_that_cannot_be_trained_on_says_why(record, record_format, reason):
    with pytest.raises(RecordError, match=reason):
        to_preference(record, record_format)


def test_a_record_of_no_known_schema_names_what_it_saw():
    assert detect_record_format({"text": "x"}) is None
    with pytest.raises(ValueError, match=r"f.jsonl: cannot tell the preference format from a record "
                                         r"with keys \['text'\]; set record_format:"):
        detect_file_record_format("f.jsonl", {"text": "x"})
