"""PreferenceRenderer: prompt + answer sequences whose prompt tokens are exactly what serving sends,
and cuts that keep the end of the prompt and the start of the answers."""

from __future__ import annotations

import numpy as np
import pytest
from test_chat_render import MARKER_TEMPLATE
from transformers import AutoTokenizer

from lmforge.data.text.conversation import Conversation, Turn
from lmforge.data.text.preference_formats import PreferenceExample, to_preference
from lmforge.data.text.preference_render import IdenticalWhenCut, PairTooLong, PreferenceRenderer

SYSTEM = "你是一名医生。"


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    return AutoTokenizer.from_pretrained(str(tiny_tokenizer))


def _pair(prompt: list[Turn], chosen: str, rejected: str, system: str = SYSTEM) -> PreferenceExample:
    return PreferenceExample(Conversation(prompt, system), [Turn("assistant", chosen)],
                             [Turn("assistant", rejected)])


def _served(tokenizer, prompt: Conversation) -> list[int]:
    """What a server tokenizes: the chat template with the generation prompt, then the whole text at once."""
    text = tokenizer.apply_chat_template(prompt.messages(), tools=prompt.tools, add_generation_prompt=True,
                                         tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _history(turns: int) -> list[Turn]:
    """A long dialogue: `turns` questions and answers, then the last question."""
    pairs = [[Turn("user", f"第{i}个问题：我头痛发热已经{i}天了，应该怎么办？"),
              Turn("assistant", f"第{i}个回答：多喝水，注意休息，观察{i}天。")] for i in range(turns)]
    return [turn for pair in pairs for turn in pair] + [Turn("user", "最后一个问题：需要去医院吗？")]


@pytest.mark.parametrize("template", ["classic", "tokenizer"])
def test_each_sequence_is_the_served_prompt_unlabelled_then_the_answer_labelled(tokenizer, template):
    if template == "tokenizer":
        tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
        tokenizer.chat_template = MARKER_TEMPLATE
    example = _pair(_history(2), "应该去医院看看。", "不用。")
    rendered = PreferenceRenderer(tokenizer, template, 512).render(example)
    prompt = rendered.prompt_length
    assert not rendered.truncated and prompt == len(_served(tokenizer, example.prompt))
    for (ids, labels), answer in zip(rendered.sequences, ["应该去医院看看。", "不用。"], strict=True):
        assert ids.tolist()[:prompt] == _served(tokenizer, example.prompt)
        assert (labels[:prompt] == -100).all() and (labels[prompt:] == ids[prompt:]).all()
        assert tokenizer.decode(ids[prompt:]) == answer + "</s>" and ids[-1] == tokenizer.eos_token_id


def test_tool_results_inside_an_answer_are_not_trained(tokenizer):
    example = PreferenceExample(Conversation([Turn("user", "北京天气？")]),
                                [Turn("assistant", "Action: weather"), Turn("tool", "晴，28度"),
                                 Turn("assistant", "北京今天晴。")],
                                [Turn("assistant", "不知道。")])
    (ids, labels), _ = PreferenceRenderer(tokenizer, "classic", 512).render(example).sequences
    trained = tokenizer.decode(ids[labels != -100])
    assert trained == "Action: weather</s>北京今天晴。</s>" and "晴，28度" in tokenizer.decode(ids)


def test_a_long_history_loses_its_earliest_turns_and_keeps_system_and_last_question(tokenizer):
    example = _pair(_history(12), "需要。" * 20, "不需要。" * 10)
    whole = PreferenceRenderer(tokenizer, "classic", 4096).render(example)
    rendered = PreferenceRenderer(tokenizer, "classic", 256).render(example)
    assert whole.prompt_length > 256 and rendered.truncated
    kept = next(prompt for prompt in (Conversation(example.prompt.turns[i:], SYSTEM) for i in range(0, 25, 2))
                if len(_served(tokenizer, prompt)) == rendered.prompt_length)
    assert kept.turns[-1].content == "最后一个问题：需要去医院吗？" and len(kept.turns) < 25
    for (ids, _), (whole_ids, _) in zip(rendered.sequences, whole.sequences, strict=True):
        assert ids.tolist()[:rendered.prompt_length] == _served(tokenizer, kept)  # the served prompt
        assert ids.tolist()[rendered.prompt_length:] == whole_ids.tolist()[whole.prompt_length:]  # uncut
        assert len(ids) <= 256


def test_a_question_too_long_alone_loses_its_start_and_the_answers_their_end(tokenizer):
    question = "".join(f"第{i}句：病人描述了很多症状。" for i in range(80)) + "请问这是什么病？"
    example = _pair([Turn("user", question)], "可能是感冒。" * 40, "不知道。" * 40)
    rendered = PreferenceRenderer(tokenizer, "classic", 128).render(example)
    assert rendered.truncated and rendered.prompt_length <= 64  # what the long answers leave: half
    (ids, _), (rejected, _) = rendered.sequences
    prompt = tokenizer.decode(ids[:rendered.prompt_length])
    assert prompt.startswith(SYSTEM + "</s>\n User: ")  # the template's control text stays whole
    assert prompt.endswith("请问这是什么病？</s>\n Assistant: ")
    cut = Conversation([Turn("user", prompt.split("User: ")[1].removesuffix("</s>\n Assistant: "))], SYSTEM)
    assert ids.tolist()[:rendered.prompt_length] == _served(tokenizer, cut)
    assert len(ids) == len(rejected) == 128 and ids[-1] != tokenizer.eos_token_id  # cut answers lose EOS
    assert tokenizer.decode(ids[rendered.prompt_length:]).startswith("可能是感冒。")


def test_max_prompt_length_bounds_a_prompt_even_when_the_pair_fits(tokenizer):
    example = _pair(_history(6), "去。", "不去。")
    assert PreferenceRenderer(tokenizer, "classic", 1024).render(example).prompt_length > 100
    rendered = PreferenceRenderer(tokenizer, "classic", 1024, max_prompt_length=100).render(example)
    assert rendered.truncated and rendered.prompt_length <= 100
    assert all(tokenizer.decode(ids[rendered.prompt_length:]) in ("去。</s>", "不去。</s>")
               for ids, _ in rendered.sequences)


def test_a_prompt_that_cannot_fit_even_cut_drops_the_pair(tokenizer):
    example = _pair([Turn("user", "问题")], "答", "不答", system="很长的系统提示。" * 100)
    with pytest.raises(PairTooLong, match="does not fit in 60 tokens"):  # what the 4-token answers leave
        PreferenceRenderer(tokenizer, "classic", 64).render(example)


def test_answers_that_only_differ_after_the_cut_drop_the_pair(tokenizer):
    example = _pair([Turn("user", "问题")], "相同的开头。" * 30 + "好", "相同的开头。" * 30 + "坏")
    with pytest.raises(IdenticalWhenCut):
        PreferenceRenderer(tokenizer, "classic", 64).render(example)


def test_a_kto_sample_renders_one_sequence(tokenizer):
    record = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}],
              "label": True}
    rendered = PreferenceRenderer(tokenizer, "classic", 64).render(to_preference(record, "kto"))
    (ids, labels), = rendered.sequences
    assert tokenizer.decode(ids[labels != -100]) == "Hello.</s>"
    prompt = Conversation([Turn("user", "Hi?")])
    assert np.array_equal(ids[:rendered.prompt_length], _served(tokenizer, prompt))
