"""Structured records become pretraining text as the original recipe renders them."""

import pytest

from lmforge.config import SourceConfig
from lmforge.data.text.templates import RecordError, render_text


def _source(**kwargs) -> SourceConfig:
    return SourceConfig(path="x.jsonl", **kwargs)


def test_qa_is_question_newline_answer_with_common_field_names():
    assert (
        render_text({"q": "发热怎么办？", "a": "多喝水。"}, _source(template="qa"))
        == "发热怎么办？\n多喝水。"
    )
    assert render_text({"问": "咳嗽？", "答": "看医生。"}, _source(template="qa")) == "咳嗽？\n看医生。"


def test_dialogue_labels_patient_and_doctor():
    record = {"conversations": [{"from": "human", "value": "头痛"}, {"from": "gpt", "value": "休息"},
                                {"role": "user", "content": "还疼"}]}
    assert render_text(record, _source(template="dialogue")) == "患者:头痛\n医生:休息\n患者:还疼"


def test_medical_csv_is_title_ask_then_answer():
    record = {
        "department": "心血管科",
        "title": "高血压能吃党参吗？",
        "ask": "我有高血压",
        "answer": "可以。",
    }
    assert render_text(record, _source(template="medical_csv")) == "高血压能吃党参吗？\n我有高血压\n可以。"


def test_field_mapping_and_format_strings():
    assert render_text({"body": "正文"}, _source(fields={"text": "body"})) == "正文"
    source = _source(template="format", format_string="患者:{ask}\n医生:{answer}")
    assert render_text({"ask": "问", "answer": "答"}, source) == "患者:问\n医生:答"


def test_missing_field_names_the_field():
    with pytest.raises(RecordError, match="missing field 'answer'"):
        render_text({"ask": "问"}, _source(template="format", format_string="{ask}{answer}"))
    with pytest.raises(RecordError, match="missing field for 'text'"):
        render_text({"body": "x"}, _source())


def test_plain_renders_a_record_without_text_but_with_question_and_answer_as_qa():
    assert render_text({"问": "发热怎么办？", "答": "多喝水。"}, _source()) == "发热怎么办？\n多喝水。"
    assert render_text({"text": "正文", "q": "问"}, _source()) == "正文"


def test_plain_still_wants_text_when_only_a_question_is_there():
    with pytest.raises(RecordError, match="missing field for 'text'"):
        render_text({"q": "问"}, _source())
