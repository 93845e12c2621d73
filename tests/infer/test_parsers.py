"""Parsers of generated text: well-formed, numbered, loosely formatted and garbage outputs; refusals."""

from __future__ import annotations

import pytest

from lmforge.infer.parsers import Unparsed, parse_choice, parse_dialogue, parse_qa_pairs, refusal_marker


def test_numbered_questions_pair_with_their_answers():
    text = ("问题1:什么是疟疾?\n答案1:疟疾是由疟原虫引起的传染病。\n"
            "问题2:疟疾怎么传播?\n答案2:主要经按蚊叮咬传播。")
    assert parse_qa_pairs(text) == [("什么是疟疾?", "疟疾是由疟原虫引起的传染病。"),
                                    ("疟疾怎么传播?", "主要经按蚊叮咬传播。")]


def test_full_width_colons_spaces_and_list_numbers_are_accepted():
    text = ("好的,以下是问题:\n1. 问题：伤寒的病原体是什么？\n   答案：伤寒沙门菌。\n"
            "2. 问：如何预防？\n答：接种疫苗。")
    assert parse_qa_pairs(text) == [("伤寒的病原体是什么？", "伤寒沙门菌。"), ("如何预防？", "接种疫苗。")]


def test_an_answer_keeps_its_lines_until_the_next_marker():
    text = "问题1:治疗原则?\n答案1:一、休息。\n二、补液。\n问题2:预后?\n答案2:良好。"
    assert parse_qa_pairs(text)[0] == ("治疗原则?", "一、休息。\n二、补液。")


def test_an_answer_numbered_for_another_question_is_not_paired():
    assert parse_qa_pairs("问题1:甲?\n答案2:乙。\n问题3:丙?\n答案3:丁。") == [("丙?", "丁。")]


def test_english_q_and_a_markers_work():
    assert parse_qa_pairs("Q1: What causes malaria?\nA1: Plasmodium.") == [
        ("What causes malaria?", "Plasmodium.")
    ]


@pytest.mark.parametrize("garbage", ["", "的的的 了了了 传染病传染病", "问题1:只有问题没有答案?",
                                     "答案1:只有答案。", "问题1:\n答案1:", "<unk></s> 4 8 ,,,"])
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


OPTIONS = {"A": "发热", "B": "咳嗽。", "C": "Headache", "D": "B超检查"}


@pytest.mark.parametrize(("text", "letter"), [
    ("A", "A"), (" C。", "C"), ("B\n因为咳嗽是主要症状", "B"), ("D\nBecause it is the test", "D"),
    ("(A)", "A"), ("（B）", "B"), ("【C】", "C"), ("[d] headache", "D"),
    ("A.", "A"), ("A. 发热", "A"), ("B、咳嗽", "B"), ("C:", "C"), ("D)", "D"), ("A,因为", "A"),
    ("B 咳嗽", "B"),
    ("Ａ", "A"), ("b) cough", "B"), ("c. headache", "C"),
    ("答案：A", "A"), ("答案:B", "B"), ("答案是C", "C"), ("答案为 D。", "D"), ("答案应该是（B）", "B"),
    ("选A", "A"), ("选A,因为", "A"), ("选择 B", "B"), ("正确答案为C", "C"), ("故正确选项为D", "D"),
    ("根据症状，答案是A。", "A"), ("The answer is D", "D"), ("the answer is (b)", "B"), ("Answer: C", "C"),
    ("发热", "A"), ("咳嗽", "B"), ("咳嗽。多见于上呼吸道感染", "B"), ("Headache and nausea", "C"),
    ("B超检查", "D"), ("A发热", "A"), ("D B超检查", "D"),
], ids=repr)
def test_parse_choice_reads_the_common_answer_shapes(text, letter):
    assert parse_choice(text, OPTIONS) == letter


@pytest.mark.parametrize("text", [
    "", "不知道", "ABC", "A patient with fever", "As the question says", "Because", "B超显示肝脏正常",
    "维生素B12缺乏", "CT检查", "D-二聚体升高", "乙肝病毒(HBV)", "The answer is a fever", "答案是E", "选择题",
    "I think so", "a patient", "头痛",
], ids=repr)
def test_parse_choice_finds_no_option_in_text_that_only_contains_letters(text):
    assert parse_choice(text, OPTIONS) is None


def test_parse_choice_takes_only_the_options_it_was_given():
    assert parse_choice("E", {"A": "", "B": "", "C": "", "D": "", "E": ""}) == "E"
    assert parse_choice("E", {"A": "", "B": ""}) is None


def test_parse_choice_prefers_the_longest_option_text_and_refuses_a_tie():
    assert parse_choice("是的，需要", {"A": "是", "B": "是的", "C": "否", "D": "不"}) == "B"
    assert parse_choice("发热", {"A": "发热", "B": "发热", "C": "咳嗽", "D": "头痛"}) is None


def test_a_refusal_is_told_by_a_few_specific_phrases_not_by_any_negation():
    assert refusal_marker("抱歉,作为医疗助手,我无法回答这个问题。") == "抱歉"
    assert refusal_marker("这个问题我不能回答。") == "不能回答"
    assert refusal_marker("I CAN'T help with stock tips.") == "i can't"
    assert refusal_marker("疟疾目前无法根治,但可以控制。") is None
    assert refusal_marker("Sorry to hear that; rest and drink water.") is None
