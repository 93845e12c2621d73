"""ChatRenderer: SFT tokens and labels that match, token for token, what serving renders and generates."""

from __future__ import annotations

import json
import re
import time

import pytest
from transformers import AutoTokenizer

from lmforge.data.text.chat_render import ChatRenderer, NothingToTrain, SampleTooLong
from lmforge.data.text.conversation import Conversation, Turn

# A ChatML-like template in plain-text markers (the tiny tokenizer has no <|im_start|> tokens); like
# ChatML it puts a newline after each turn's end-of-turn token.
MARKER_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|' ~ message['role'] ~ '|>\\n' ~ message['content'] ~ eos_token ~ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif -%}"
)

SINGLE = Conversation([Turn("user", "头痛怎么办？"), Turn("assistant", "The patient should rest.")])
MULTI = Conversation([
    Turn("user", "头痛怎么办？"), Turn("assistant", "多休息。"),
    Turn("user", "还疼"), Turn("assistant", "去医院看看。"),
    Turn("user", "Which department?"), Turn("assistant", "Neurology."),
])
TOOLS = [{"name": "查询药品", "description": "查询药品说明", "parameters": {"type": "object"}}]


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    return AutoTokenizer.from_pretrained(str(tiny_tokenizer))


@pytest.fixture(scope="module")
def marker_tokenizer(tiny_tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    tokenizer.chat_template = MARKER_TEMPLATE
    return tokenizer


def trained_text(tokenizer, sample) -> str:
    return tokenizer.decode(sample.input_ids[sample.labels != -100])


def assistant_texts(conversation: Conversation) -> str:
    return "".join(t.content + "</s>" for t in conversation.turns if t.role == "assistant")


@pytest.mark.parametrize("conversation", [SINGLE, MULTI], ids=["single", "multi"])
def test_classic_labels_decode_to_the_assistant_texts_each_ending_in_eos(tokenizer, conversation):
    sample = ChatRenderer(tokenizer, "classic", 512).render(conversation)
    assert trained_text(tokenizer, sample) == assistant_texts(conversation)
    assert sample.input_ids.dtype == sample.labels.dtype == "int32"
    assert sample.labels[-1] == tokenizer.eos_token_id
    assert (sample.turns_kept, sample.turns_total) == (len(conversation.turns),) * 2


@pytest.mark.parametrize("conversation", [SINGLE, MULTI], ids=["single", "multi"])
def test_tokenizer_template_labels_decode_to_the_assistant_texts_each_ending_in_eos(marker_tokenizer,
                                                                                    conversation):
    renderer = ChatRenderer(marker_tokenizer, "tokenizer", 512)
    sample = renderer.render(conversation)
    assert renderer.chat_template == MARKER_TEMPLATE
    assert trained_text(marker_tokenizer, sample) == assistant_texts(conversation)
    # The newline after the last EOS is template text, kept but not trained.
    assert marker_tokenizer.decode(sample.input_ids) == marker_tokenizer.apply_chat_template(
        conversation.messages(), tokenize=False)


def test_decoded_input_is_the_classic_chat_text(tokenizer):
    renderer = ChatRenderer(tokenizer, "classic", 512)
    decoded = tokenizer.decode(renderer.render(MULTI).input_ids)
    assert decoded == (
        "User: 头痛怎么办？</s>\n Assistant: 多休息。</s>\n User: 还疼</s>\n Assistant: 去医院看看。</s>"
        "\n User: Which department?</s>\n Assistant: Neurology.</s>"
    )
    assert decoded == tokenizer.apply_chat_template(MULTI.messages(), tokenize=False,
                                                    chat_template=renderer.chat_template)


@pytest.mark.parametrize("template", ["classic", "tokenizer"])
def test_every_served_prompt_is_a_token_prefix_of_the_training_sample(marker_tokenizer, template):
    renderer = ChatRenderer(marker_tokenizer, template, 512)
    sample = renderer.render(MULTI)
    messages = MULTI.messages()
    for i in range(1, len(messages), 2):  # each assistant turn, as a served request would ask for it
        served_text = marker_tokenizer.apply_chat_template(
            messages[:i], tokenize=False, add_generation_prompt=True, chat_template=renderer.chat_template)
        served = marker_tokenizer.encode(served_text, add_special_tokens=False)
        assert sample.input_ids[: len(served)].tolist() == served
        assert sample.labels[len(served) - 1] == -100 and sample.labels[len(served)] != -100  # answer starts


def test_tokenizing_the_whole_text_at_once_would_not_match_serving(tokenizer):
    # Why the renderer tokenizes segment by segment: "Assistant: The" merges " The" into one token,
    # but a served prompt ends with "Assistant: " and the model generates "The" after it.
    renderer = ChatRenderer(tokenizer, "classic", 512)
    sample = renderer.render(SINGLE)
    text = tokenizer.apply_chat_template(
        SINGLE.messages(), tokenize=False, chat_template=renderer.chat_template
    )
    assert tokenizer.encode(text, add_special_tokens=False) != sample.input_ids.tolist()


def test_system_prompt_tools_and_tool_results_are_prompt_not_trained(tokenizer):
    conversation = Conversation(
        [
            Turn("user", "阿司匹林怎么吃？"),
            Turn("assistant", '{"name": "查询药品", "arguments": {"药品": "阿司匹林"}}'),
            Turn("tool", "每日一次，每次100mg。"),
            Turn("assistant", "每日一次，每次100mg。"),
        ],
        system="你是医生。",
        tools=TOOLS,
    )
    sample = ChatRenderer(tokenizer, "classic", 512).render(conversation)
    assert tokenizer.decode(sample.input_ids) == (
        "你是医生。\n\n可用工具:\n"
        + json.dumps(TOOLS, ensure_ascii=False)
        + "</s>\n User: 阿司匹林怎么吃？</s>"
        '\n Assistant: {"name": "查询药品", "arguments": {"药品": "阿司匹林"}}</s>'
        "\n Observation: 每日一次，每次100mg。</s>\n Assistant: 每日一次，每次100mg。</s>"
    )
    assert trained_text(tokenizer, sample) == assistant_texts(conversation)


def test_tools_without_a_system_prompt_open_the_text(tokenizer):
    conversation = Conversation(SINGLE.turns, tools=TOOLS)
    sample = ChatRenderer(tokenizer, "classic", 512).render(conversation)
    assert tokenizer.decode(sample.input_ids).startswith(
        "可用工具:\n" + json.dumps(TOOLS, ensure_ascii=False) + "</s>\n User: 头痛怎么办？</s>\n Assistant: ")
    assert trained_text(tokenizer, sample) == assistant_texts(SINGLE)


def test_loss_false_assistant_turn_is_not_trained(tokenizer):
    conversation = Conversation([Turn("user", "q1"), Turn("assistant", "bad answer", loss=False),
                                 Turn("user", "q2"), Turn("assistant", "good answer")])
    sample = ChatRenderer(tokenizer, "classic", 512).render(conversation)
    assert trained_text(tokenizer, sample) == "good answer</s>"


def test_loss_true_user_turn_is_trained_with_its_role_header(tokenizer):
    conversation = Conversation([Turn("user", "q1"), Turn("assistant", "a1"), Turn("user", "q2", loss=True),
                                 Turn("assistant", "a2")])
    sample = ChatRenderer(tokenizer, "classic", 512).render(conversation)
    assert trained_text(tokenizer, sample) == "a1</s>\n User: q2</s>a2</s>"


def test_truncation_keeps_whole_turns_and_ends_on_a_trained_turn(tokenizer):
    full = ChatRenderer(tokenizer, "classic", 512).render(MULTI)
    two_exchanges = len(tokenizer.encode(
        "User: 头痛怎么办？</s>\n Assistant: 多休息。</s>\n User: 还疼</s>\n Assistant: 去医院看看。</s>"))
    sample = ChatRenderer(tokenizer, "classic", two_exchanges + 3).render(MULTI)  # the third does not fit
    assert (sample.turns_kept, sample.turns_total) == (4, 6)
    assert len(sample.input_ids) == two_exchanges
    assert sample.input_ids.tolist() == full.input_ids[:two_exchanges].tolist()
    assert sample.labels[-1] == tokenizer.eos_token_id


def test_trailing_untrained_turns_are_dropped(tokenizer):
    conversation = Conversation([Turn("user", "q1"), Turn("assistant", "a1"), Turn("user", "q2"),
                                 Turn("assistant", "a2", loss=False)])
    sample = ChatRenderer(tokenizer, "classic", 512).render(conversation)
    assert (sample.turns_kept, sample.turns_total) == (2, 4)
    assert tokenizer.decode(sample.input_ids) == "User: q1</s>\n Assistant: a1</s>"


def test_first_exchange_longer_than_max_length_raises_sample_too_long(tokenizer):
    with pytest.raises(SampleTooLong, match="max_length=5"):
        ChatRenderer(tokenizer, "classic", 5).render(MULTI)


def test_conversation_without_a_trained_turn_raises(tokenizer):
    with pytest.raises(NothingToTrain):
        ChatRenderer(tokenizer, "classic", 512).render(Conversation([Turn("user", "q")]))


def test_tokenizer_template_without_eos_is_refused_naming_the_tokenizer(tiny_tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ValueError, match=f"tokenizer {re.escape(str(tiny_tokenizer))}.*no EOS"):
        ChatRenderer(tokenizer, "tokenizer", 512).render(SINGLE)


def test_template_that_rewrites_earlier_turns_is_refused(tiny_tokenizer):
    # Renders only the last assistant turn in full, as templates that drop past reasoning do.
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: "
        "{{ m['content'] if loop.last or m['role'] != 'assistant' else '...' }}{{ eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(ValueError, match="does not extend the rendering before it"):
        ChatRenderer(tokenizer, "tokenizer", 512).render(MULTI)


def test_tokenizer_without_a_chat_template_is_refused_by_name(tiny_tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match=f"tokenizer {re.escape(str(tiny_tokenizer))} has no"):
        ChatRenderer(tokenizer, "tokenizer", 512)


def test_330_turn_sharegpt_conversation_renders_whole(tokenizer, shared_data):
    lines = (shared_data / "sft" / "sharegpt_zh_1K_format.jsonl").read_text(encoding="utf-8").splitlines()
    longest = max((json.loads(line)["conversations"] for line in lines), key=len)
    conversation = Conversation([Turn("user" if m["from"] == "human" else "assistant", m["value"])
                                 for m in longest])
    assert len(conversation.turns) == 330
    for max_length in (10**6, 4096):
        renderer = ChatRenderer(tokenizer, "classic", max_length)
        started = time.perf_counter()
        sample = renderer.render(conversation)
        print(f"330 turns, max_length {max_length}: {len(sample.input_ids)} tokens, "
              f"{sample.turns_kept} turns kept, {1000 * (time.perf_counter() - started):.1f} ms")
    whole = ChatRenderer(tokenizer, "classic", 10**6).render(conversation)
    assert whole.turns_kept == 330
    assert trained_text(tokenizer, whole) == assistant_texts(conversation)
