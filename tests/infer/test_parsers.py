"""Parsers of generated text: well-formed, numbered, loosely formatted and garbage outputs."""

from __future__ import annotations

import pytest

from lmforge.infer.parsers import Unparsed, first_choice_letter, parse_dialogue, parse_qa_pairs


def test_numbered_questions_pair_with_their_answers():
    text = "问题1:什么是疟疾?\n答案1:疟疾是由疟原虫引起的传染病。\n问题2:疟疾怎么传播?\n答案2:主要经按蚊叮咬传播。"
    assert parse_qa_pairs(text) == [("什么是疟疾?", "疟疾是由疟原虫引起的传染病。"),
                                    ("疟疾怎么传播?", "主要经按蚊叮咬传播。")]


def test_full_width_colons_spaces_and_list_numbers_are_accepted():
    text = "好的,以下是问题:\n1. 问题：伤寒的病原体是什么？\n   答案：伤寒沙门菌。\n2. 问：如何预防？\n答：接种疫苗。"
    assert parse_qa_pairs(text) == [("伤寒的病原体是什么？", "伤寒沙门菌。"), ("如何预防？", "接种疫苗。")]


def test_an_answer_keeps_its_lines_until_the_next_marker():
    text = "问题1:治疗原则?\n答案1:一、休息。\n二、补液。\n问题2:预后?\n答案2:良好。"
    assert parse_qa_pairs(text)[0] == ("治疗原则?", "一、休息。\n二、补液。")


def test_an_answer_numbered_for_another_question_is_not_paired():
    assert parse_qa_pairs("问题1:甲?\n答案2:乙。\n问题3:丙?\n答案3:丁。") == [("丙?", "丁。")]


def test_english_q_and_a_markers_work():
    assert parse_qa_pairs("Q1: What causes malaria?\nA1: Plasmodium.") == [("What causes malaria?", "Plasmodium.")]


@pytest.mark.parametrize("garbage", ["", "的的的 了了了 传染病传染病", "问题1:只有问题没有答案?", "答案1:只有答案。",
                                     "问题1:\n答案1:", "<unk></s> 4 8 ,,,"])
def test_garbage_is_unparsed_with_a_reason(garbage):
    with pytest.raises(Unparsed):
        parse_qa_pairs(garbage)


def test_dialogue_turns_alternate_from_patient_to_doctor():
    text = "患者:那我需要吃药吗?\n医生:需要,按时服用抗生素。\n患者：多久能好？\n医生：一周左右。\n患者:谢谢"
    assert parse_dialogue(text) == [("user", "那我需要吃药吗?"), ("assistant", "需要,按时服用抗生素。"),
                                    ("user", "多久能好？"), ("assistant", "一周左右。")]


def test_dialogue_joins_consecutive_lines_of_one_speaker_and_skips_a_leading_doctor_line():
    text = "医生:补充一句。\n患者:第一行\n患者:第二行\n医生:好的。"
    assert parse_dialogue(text) == [("user", "第一行\n第二行"), ("assistant", "好的。")]


@pytest.mark.parametrize("garbage", ["", "随便说点什么", "患者:只有提问", "医生:只有回答"])
def test_dialogue_without_an_exchange_is_unparsed(garbage):
    with pytest.raises(Unparsed):
        parse_dialogue(garbage)


@pytest.mark.parametrize(("text", "letter"), [("B", "B"), (" C。", "C"), ("答案:D", "D"), ("选A,因为", "A"),
                                              ("ABC", None), ("不知道", None), ("Because", None)])
def test_first_choice_letter_takes_a_standalone_letter(text, letter):
    assert first_choice_letter(text) == letter
