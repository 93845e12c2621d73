"""dialogue_markers: a prompt written as a dialogue with role markers becomes turns before its answer."""

import pytest

from lmforge.data.text.dialogue_markers import MARKER_PAIRS, dialogue_turns, split_marked_dialogue


@pytest.mark.parametrize("user, assistant", MARKER_PAIRS)
def test_each_marker_pair_splits_a_prompt_into_alternating_turns(user, assistant):
    prompt = f"{user}: 头痛\n{assistant}: 休息一下\n{user}: 还疼\n{assistant}:"
    assert dialogue_turns(prompt, "去医院。", "auto") == [
        ("user", "头痛"), ("assistant", "休息一下"), ("user", "还疼"), ("assistant", "去医院。")]


def test_full_width_colons_indented_markers_and_any_case_are_markers_too():
    prompt = "患者：头痛\n  医生：休息一下\n\t患者 ：还疼"
    assert split_marked_dialogue(prompt, "auto") == [
        ("user", "头痛"),
        ("assistant", "休息一下"),
        ("user", "还疼"),
    ]
    assert split_marked_dialogue("HUMAN: hi\nassistant: hello", "auto") == [
        ("user", "hi"),
        ("assistant", "hello"),
    ]


def test_a_turn_over_several_lines_stays_one_turn():
    prompt = "Human: first line\nsecond line\nAssistant: answer\nmore answer\nHuman: next"
    assert split_marked_dialogue(prompt, "auto") == [
        ("user", "first line\nsecond line"), ("assistant", "answer\nmore answer"), ("user", "next")]


def test_a_prompt_ending_on_a_user_turn_is_answered_by_the_output():
    assert dialogue_turns("用户：你好\n助手：你好！\n用户：你是谁", "我是助手。", "auto")[-2:] == [
        ("user", "你是谁"), ("assistant", "我是助手。")]


def test_a_last_assistant_turn_equal_to_the_output_is_not_repeated():
    turns = dialogue_turns("患者：头痛\n医生：休息一下", "休息一下", "auto")
    assert turns == [("user", "头痛"), ("assistant", "休息一下")]


def test_auto_keeps_a_task_about_a_finished_dialogue_as_one_prompt():
    prompt = "患者：头痛\n医生：休息一下\n请总结这段对话。"
    assert dialogue_turns(prompt, "患者头痛，医生建议休息。", "auto") == [
        ("user", prompt), ("assistant", "患者头痛，医生建议休息。")]
    assert dialogue_turns(prompt, "总结", "always")[-1] == ("assistant", "总结")


def test_ordinary_text_with_a_colon_is_not_split():
    prompt = "注意：以下问题请用中文回答。\n问题：发热怎么办？"
    assert split_marked_dialogue(prompt, "auto") is None
    assert split_marked_dialogue(prompt, "always") is None


def test_assistant_named_in_mid_sentence_is_not_a_marker():
    prompt = "User: please reply as a polite Assistant: short and kind."
    assert split_marked_dialogue(prompt, "auto") is None
    assert dialogue_turns(prompt, "Sure.", "auto") == [("user", prompt), ("assistant", "Sure.")]


def test_auto_wants_the_prompt_to_start_with_a_user_marker_and_always_does_not():
    prompt = "下面是一段问诊记录。\n患者：头痛\n医生："
    assert split_marked_dialogue(prompt, "auto") is None
    assert dialogue_turns(prompt, "休息一下", "always") == [
        ("user", "下面是一段问诊记录。\n头痛"), ("assistant", "休息一下")]


def test_never_keeps_the_prompt_whole():
    assert dialogue_turns("<user>: hi\n<bot>:", "hello", "never") == [
        ("user", "<user>: hi\n<bot>:"),
        ("assistant", "hello"),
    ]
