"""sft_formats: every SFT record schema becomes one Conversation; unusable records say why."""

from __future__ import annotations

import json
from collections import Counter
from functools import cache

import pytest
from file_helpers import GBK_CSV, read_all, write

from lmforge.data.text.conversation import Conversation, Turn
from lmforge.data.text.sft_formats import detect_file_record_format, detect_record_format, to_conversation
from lmforge.data.text.templates import RecordError

# Every file in shared/data/sft: its schema, record count, and the records rejected (reason -> count).
SHARED_SFT_FILES = {
    "alpaca_zh_demo.json": ("alpaca", 1000, {}),
    "medical_sft_1K_format.jsonl": ("sharegpt", 1000, {}),
    "sharegpt_zh_1K_format.jsonl": ("sharegpt", 1000, {"no assistant turn": 1}),  # a lone question, line 781
    "AdvertiseGen_fix_dev.json": ("chatglm3", 1070, {}),
    "AdvertiseGen_dev.json": ("advertisegen", 200, {}),
    "cognition_dev.json": ("chatglm3", 60, {}),
    GBK_CSV.removeprefix("sft/"): ("medical_csv", 7644, {}),
}


@cache
def _convert_file(path: str) -> tuple[str, list, dict[int, Conversation], Counter]:
    """(format, raw records, line -> conversation, rejection reason -> count) of one file."""
    records = read_all(path)
    record_format = detect_file_record_format(path, records[0].fields)
    conversations, rejected = {}, Counter()
    for record in records:
        assert record.error is None, f"{path}:{record.line}: {record.error}"
        try:
            conversations[record.line] = to_conversation(record.fields, record_format)
        except RecordError as error:
            rejected[str(error)] += 1
    return record_format, records, conversations, rejected


def _shared(shared_data, name: str):
    return _convert_file(str(shared_data / "sft" / name))


def _chat(*pairs: tuple[str, str]) -> list[Turn]:
    return [Turn(role, content) for role, content in pairs]


# --- real sample data -------------------------------------------------------------------------------


def test_every_shared_sft_file_has_an_expected_format_listed(shared_data):
    assert sorted(p.name for p in (shared_data / "sft").iterdir()) == sorted(SHARED_SFT_FILES)


@pytest.mark.parametrize("name", SHARED_SFT_FILES)
def test_shared_file_is_detected_as_its_schema(shared_data, name):
    assert _shared(shared_data, name)[0] == SHARED_SFT_FILES[name][0]


@pytest.mark.parametrize("name", SHARED_SFT_FILES)
def test_shared_file_converts_every_record_but_the_documented_rejects(shared_data, name):
    _, records, conversations, rejected = _shared(shared_data, name)
    _, count, expected_rejects = SHARED_SFT_FILES[name]
    assert len(records) == count
    assert dict(rejected) == expected_rejects
    assert len(conversations) == count - sum(expected_rejects.values())


def test_alpaca_demo_user_turn_is_the_instruction(shared_data):
    _, records, conversations, _ = _shared(shared_data, "alpaca_zh_demo.json")
    first = conversations[records[0].line]
    assert first.turns[0].role == "user"
    assert first.turns[0].content.startswith("识别并解释给定列表中的两个科学理论")
    assert first.turns[1].content == records[0].fields["output"].strip()


def test_alpaca_demo_input_follows_the_instruction_on_a_new_line(shared_data):
    _, records, conversations, _ = _shared(shared_data, "alpaca_zh_demo.json")
    record = next(r for r in records if r.fields["input"].strip())
    expected = f"{record.fields['instruction'].strip()}\n{record.fields['input'].strip()}"
    assert conversations[record.line].turns[0].content == expected


def test_medical_sharegpt_records_are_one_question_and_one_answer(shared_data):
    _, _, conversations, _ = _shared(shared_data, "medical_sft_1K_format.jsonl")
    assert {tuple(t.role for t in c.turns) for c in conversations.values()} == {("user", "assistant")}


def test_multi_turn_sharegpt_keeps_every_turn_in_order(shared_data):
    _, records, conversations, _ = _shared(shared_data, "sharegpt_zh_1K_format.jsonl")
    roles = {"human": "user", "gpt": "assistant"}
    for record in records:
        if record.line in conversations:
            raw = [(roles[t["from"]], t["value"].strip()) for t in record.fields["conversations"]]
            while raw[-1][0] == "user":  # a trailing question has no answer to train on
                raw.pop()
            assert [(t.role, t.content) for t in conversations[record.line].turns] == raw
    assert max(len(c.turns) for c in conversations.values()) == 330


def test_sharegpt_trailing_question_is_dropped(shared_data):
    _, records, conversations, _ = _shared(shared_data, "sharegpt_zh_1K_format.jsonl")
    line_119 = next(r for r in records if r.line == 119)
    assert [t["from"] for t in line_119.fields["conversations"]] == ["human", "gpt", "human"]
    assert [t.role for t in conversations[119].turns] == ["user", "assistant"]


def test_advertisegen_and_its_chatglm3_copy_are_the_same_conversation(shared_data):
    _, plain_records, plain, _ = _shared(shared_data, "AdvertiseGen_dev.json")
    _, fixed_records, fixed, _ = _shared(shared_data, "AdvertiseGen_fix_dev.json")
    assert plain[plain_records[0].line] == fixed[fixed_records[0].line]
    assert plain[plain_records[0].line].turns[0].content.startswith("类型#上衣*材质#牛仔布")


def test_cognition_records_are_user_then_assistant(shared_data):
    _, records, conversations, _ = _shared(shared_data, "cognition_dev.json")
    assert conversations[records[0].line].turns == _chat(
        ("user", "你好"), ("assistant", records[0].fields["conversations"][1]["content"])
    )


def test_gbk_medical_csv_keeps_chinese_and_puts_department_in_meta(shared_data):
    _, records, conversations, _ = _shared(shared_data, GBK_CSV.removeprefix("sft/"))
    first = conversations[records[0].line]
    assert first.meta == {"department": "心血管科"}
    assert first.turns[0].content == (
        "高血压患者能吃党参吗？\n我有高血压这两天女婿来的时候给我拿了些党参泡水喝，"
        "您好高血压可以吃党参吗？"
    )
    assert first.turns[1].content.startswith("高血压病人可以口服党参的")


# --- detection --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fields, expected", [
    ({"conversations": [{"from": "human", "value": "q"}]}, "sharegpt"),
    ({"conversations": [{"role": "user", "content": "q"}]}, "chatglm3"),
    ({"messages": [{"role": "user", "content": "q"}]}, "openai"),
    ({"instruction": "q", "input": "", "output": "a"}, "alpaca"),
    ({"prompt": "q", "response": "a", "history": []}, "chatglm2"),
    ({"content": "q", "summary": "a"}, "advertisegen"),
    ({"department": "d", "title": "t", "ask": "q", "answer": "a"}, "medical_csv"),
    ({"问": "q", "答": "a"}, "qa"),
    ({"q": "q", "a": "a"}, "qa"),
    ({"text": "plain"}, None),
    ({"conversations": []}, None),
])
def test_record_format_is_detected_from_keys_and_turn_shape(fields, expected):
    assert detect_record_format(fields) == expected


def test_unrecognised_file_error_names_the_file_and_the_keys(tmp_path):
    path = write(tmp_path, "x.jsonl", b'{"foo": 1, "bar": 2}\n')
    with pytest.raises(
        ValueError, match=r"x\.jsonl: cannot tell the SFT format .* keys \['bar', 'foo'\].*record_format"
    ):
        detect_file_record_format(str(path), read_all(path)[0].fields)


def test_unrecognised_conversation_error_names_the_first_turn_keys(tmp_path):
    path = write(
        tmp_path, "x.jsonl", json.dumps({"conversations": [{"speaker": "A", "text": "hi"}]}).encode()
    )
    with pytest.raises(ValueError, match=r"keys \['conversations'\], first turn keys \['speaker', 'text'\]"):
        detect_file_record_format(str(path), read_all(path)[0].fields)


def test_file_without_a_readable_record_cannot_be_detected():
    with pytest.raises(ValueError, match="empty.jsonl: .*no readable record"):
        detect_file_record_format("empty.jsonl", None)


def test_unknown_record_format_is_a_config_error_not_a_record_error():
    with pytest.raises(ValueError, match="record_format must be one of") as error:
        to_conversation({"q": "q", "a": "a"}, "dolly")
    assert not isinstance(error.value, RecordError)


# --- schemas ----------------------------------------------------------------------------------------


def test_chatglm3_tool_step_becomes_a_trained_call_and_an_untrained_observation():
    record = {"tools": [{"name": "get_weather"}], "conversations": [
        {"role": "user", "content": "北京天气？"},
        {"role": "assistant", "content": "我来查一下。"},
        {"role": "tool", "name": "get_weather", "parameters": {"city": "北京"}, "observation": {"temp": 20}},
        {"role": "assistant", "content": "20度。"},
    ]}
    conversation = to_conversation(record, "chatglm3")
    assert conversation.turns[2:4] == [
        Turn("assistant", '{"name": "get_weather", "parameters": {"city": "北京"}}'),
        Turn("tool", '{"temp": 20}'),
    ]
    assert [t.trained for t in conversation.turns] == [False, True, True, False, True]
    assert conversation.tools == [{"name": "get_weather"}]


def test_chatglm3_loss_false_turn_is_not_trained():
    record = {"conversations": [
        {"role": "system", "content": "你是助手"}, {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b", "loss": False}, {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]}
    conversation = to_conversation(record, "chatglm3")
    assert conversation.system == "你是助手"
    assert [t.trained for t in conversation.turns] == [False, False, False, True]


def test_chatglm3_assistant_turn_with_metadata_keeps_its_content():
    record = {
        "conversations": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "metadata": "get_weather", "content": "tool_call(city='x')"},
            {"role": "observation", "content": "sunny"},
            {"role": "assistant", "content": "晴"},
        ]
    }
    assert [(t.role, t.content) for t in to_conversation(record, "chatglm3").turns] == [
        ("user", "q"), ("assistant", "tool_call(city='x')"), ("tool", "sunny"), ("assistant", "晴")]


def test_openai_system_message_becomes_the_system_prompt():
    record = {"messages": [{"role": "system", "content": " 简洁回答 "}, {"role": "user", "content": "1+1?"},
                           {"role": "assistant", "content": "2"}]}
    assert to_conversation(record, "openai") == Conversation(
        _chat(("user", "1+1?"), ("assistant", "2")), "简洁回答"
    )


def test_openai_tool_call_is_the_assistant_turn_content():
    call = {"name": "add", "arguments": '{"a": 1}'}
    record = {
        "messages": [
            {"role": "user", "content": "add"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "1", "type": "function", "function": call}],
            },
            {"role": "tool", "content": "1"},
            {"role": "assistant", "content": "It is 1.", "weight": 0},
            {"role": "user", "content": "thanks"},
            {"role": "assistant", "content": "welcome"},
        ]
    }
    turns = to_conversation(record, "openai").turns
    assert json.loads(turns[1].content) == call
    assert [t.trained for t in turns] == [False, True, False, False, False, True]


def test_sharegpt_roles_map_to_user_assistant_and_tool():
    record = {"tools": '[{"name": "search"}]', "conversations": [
        {"from": "system", "value": "sys"}, {"from": "human", "value": "q"},
        {"from": "function_call", "value": '{"name": "search"}'}, {"from": "observation", "value": "r"},
        {"from": "gpt", "value": "a"},
    ]}
    conversation = to_conversation(record, "sharegpt")
    assert conversation.system == "sys"
    assert conversation.tools == [{"name": "search"}]
    assert [(t.role, t.trained) for t in conversation.turns] == [
        ("user", False), ("assistant", True), ("tool", False), ("assistant", True)]


def test_alpaca_history_pairs_come_before_the_instruction():
    record = {"instruction": "再说一次", "input": "", "output": "好的", "system": "你是助手",
              "history": [["你好", "你好！"], ["介绍一下", "我是助手"]]}
    assert to_conversation(record, "alpaca") == Conversation(_chat(
        ("user", "你好"), ("assistant", "你好！"), ("user", "介绍一下"), ("assistant", "我是助手"),
        ("user", "再说一次"), ("assistant", "好的")), "你是助手")


def test_chatglm2_history_pairs_come_before_the_prompt_and_its_response():
    record = {"prompt": "还疼怎么办？", "response": "去医院。", "history": [["头痛", "休息一下"]]}
    assert to_conversation(record, detect_record_format(record)).turns == _chat(
        ("user", "头痛"), ("assistant", "休息一下"), ("user", "还疼怎么办？"), ("assistant", "去医院。"))


@pytest.mark.parametrize("history", [{}, {"history": None}, {"history": []}])
def test_chatglm2_history_may_be_missing_null_or_empty(history):
    record = {"prompt": "头痛", "response": "休息一下", **history}
    assert to_conversation(record, "chatglm2").turns == _chat(("user", "头痛"), ("assistant", "休息一下"))


def test_alpaca_instruction_holding_a_marked_dialogue_becomes_turns_when_asked():
    record = {
        "instruction": "<user>: 头痛\n<bot>: 休息一下",
        "input": "<user>: 还疼\n<bot>:",
        "output": "去医院。",
    }
    assert to_conversation(record, "alpaca", split_dialogue="auto").turns == _chat(
        ("user", "头痛"), ("assistant", "休息一下"), ("user", "还疼"), ("assistant", "去医院。"))
    assert len(to_conversation(record, "alpaca").turns) == 2  # never, unless the caller passes the setting


def test_chatglm2_prompt_holding_a_marked_dialogue_is_split_after_its_history():
    record = {"prompt": "患者：还疼\n医生：", "response": "去医院。", "history": [["头痛", "休息一下"]]}
    turns = to_conversation(record, "chatglm2", split_dialogue="auto").turns
    assert [t.content for t in turns] == ["头痛", "休息一下", "还疼", "去医院。"]


def test_field_map_reads_renamed_fields():
    record = {"prompt": "翻译", "context": "hello", "answer": "你好"}
    conversation = to_conversation(
        record, "alpaca", {"instruction": "prompt", "input": "context", "output": "answer"}
    )
    assert conversation.turns == _chat(("user", "翻译\nhello"), ("assistant", "你好"))


def test_field_map_also_renames_fields_inside_turns():
    record = {"dialog": [{"speaker": "human", "text": "q"}, {"speaker": "gpt", "text": "a"}]}
    field_map = {"conversations": "dialog", "from": "speaker", "value": "text"}
    assert to_conversation(record, "sharegpt", field_map).turns == _chat(("user", "q"), ("assistant", "a"))


def test_medical_csv_ask_that_repeats_the_title_is_used_alone():
    record = {"department": "内科", "title": "头痛怎么办", "ask": "头痛怎么办，已经三天了", "answer": "休息"}
    assert to_conversation(record, "medical_csv").turns[0].content == "头痛怎么办，已经三天了"


def test_qa_reads_any_of_the_common_question_and_answer_names():
    assert to_conversation({"问": "发烧？", "答": "多喝水"}, "qa").turns == _chat(
        ("user", "发烧？"), ("assistant", "多喝水")
    )


def test_default_system_applies_only_when_the_record_has_none():
    plain = {"q": "q", "a": "a"}
    assert to_conversation(plain, "qa", default_system="默认").system == "默认"
    own = {"instruction": "q", "output": "a", "system": "自带"}
    assert to_conversation(own, "alpaca", default_system="默认").system == "自带"


def test_contents_are_stripped():
    record = {"conversations": [{"from": "human", "value": "  q\n"}, {"from": "gpt", "value": "\ta  "}]}
    assert to_conversation(record, "sharegpt").turns == _chat(("user", "q"), ("assistant", "a"))


def test_trailing_tool_turn_is_dropped():
    record = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "call"},
                           {"role": "tool", "content": "result"}]}
    assert [t.role for t in to_conversation(record, "openai").turns] == ["user", "assistant"]


# --- unusable records -------------------------------------------------------------------------------


def _sharegpt(*turns: tuple[str, object]) -> dict:
    return {"conversations": [{"from": role, "value": value} for role, value in turns]}


def test_missing_field_is_named():
    with pytest.raises(RecordError, match="missing field 'output'"):
        to_conversation({"instruction": "q"}, "alpaca")


def test_missing_mapped_field_names_the_record_field_and_the_schema_field():
    with pytest.raises(RecordError, match=r"missing field 'answer' \(mapped from 'output'\)"):
        to_conversation({"instruction": "q"}, "alpaca", {"output": "answer"})


def test_empty_assistant_turn_is_rejected():
    with pytest.raises(RecordError, match="^empty assistant turn 2$"):
        to_conversation(_sharegpt(("human", "q"), ("gpt", "  ")), "sharegpt")


def test_consecutive_user_turns_are_out_of_order():
    with pytest.raises(RecordError, match="^role out of order: user after user at turn 3$"):
        to_conversation(_sharegpt(("system", "s"), ("human", "q"), ("human", "q2"), ("gpt", "a")), "sharegpt")


def test_conversation_starting_with_the_assistant_is_out_of_order():
    with pytest.raises(
        RecordError, match="role out of order: assistant at turn 1; the first turn must be user"
    ):
        to_conversation(_sharegpt(("gpt", "a"), ("human", "q"), ("gpt", "a")), "sharegpt")


def test_tool_turn_after_a_user_turn_is_out_of_order():
    with pytest.raises(RecordError, match="^role out of order: tool after user at turn 2$"):
        to_conversation(_sharegpt(("human", "q"), ("observation", "r"), ("gpt", "a")), "sharegpt")


def test_system_turn_after_the_first_is_out_of_order():
    with pytest.raises(RecordError, match="role out of order: system at turn 3"):
        to_conversation(
            _sharegpt(("human", "q"), ("gpt", "a"), ("system", "s"), ("human", "q"), ("gpt", "a")), "sharegpt"
        )


def test_unknown_role_is_rejected():
    with pytest.raises(RecordError, match="unknown role 'bot' at turn 2"):
        to_conversation(_sharegpt(("human", "q"), ("bot", "a")), "sharegpt")


def test_non_string_content_is_rejected():
    with pytest.raises(RecordError, match="turn 2 content is a list, not text"):
        to_conversation(_sharegpt(("human", "q"), ("gpt", ["a"])), "sharegpt")


def test_non_string_field_is_rejected():
    with pytest.raises(RecordError, match="field 'summary' is a number, not text"):
        to_conversation({"content": "q", "summary": 3}, "advertisegen")


def test_record_with_only_a_question_has_no_assistant_turn():
    with pytest.raises(RecordError, match="^no assistant turn$"):
        to_conversation(_sharegpt(("human", "q")), "sharegpt")


def test_record_whose_answers_all_have_loss_off_has_nothing_to_train():
    record = {
        "conversations": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a", "loss": False},
        ]
    }
    with pytest.raises(RecordError, match="no trained turn"):
        to_conversation(record, "chatglm3")


def test_prepare_sft_splits_a_marked_dialogue_by_default_and_keeps_it_whole_when_told_never():
    from lmforge.config import SFTSourceConfig
    from lmforge.data.stages.prepare_sft import (
        _conversation_json,  # the converter prepare-sft reads every record with
    )

    record = {"instruction": "Human: 头痛\nAssistant: 休息一下\nHuman: 还疼", "output": "去医院。"}
    split = Conversation.from_json(
        _conversation_json(record, SFTSourceConfig(path="x.json", record_format="alpaca"))
    )
    whole = SFTSourceConfig(path="x.json", record_format="alpaca", split_dialogue="never")
    assert [t.role for t in split.turns] == ["user", "assistant", "user", "assistant"]
    assert len(Conversation.from_json(_conversation_json(record, whole)).turns) == 2
