"""Every common preference record schema into one `PreferenceExample`: a prompt and the answers to it.

    record_format = detect_file_record_format(path, first_fields)  # once per file, unless the config names it
    example = to_preference(fields, record_format, source.fields, source.system)   # or RecordError

Schemas; `field_map` renames any field, top-level or inside a message ({"chosen": "better"}):
    sharegpt_pair    {conversations: [{from, value}], chosen, rejected, system?, tools?}; chosen and rejected
                     are one message {from: gpt|function_call, value} (a list of them, or a plain string)
    pairwise_qa      {question|prompt|instruction, input?, response_chosen|chosen, response_rejected|rejected,
                      system?, history?: [[user, assistant], ...]}   (strings)
    messages_pair    {chosen: [messages], rejected: [messages]} (OpenAI roles): the prompt is their common
                     prefix, the answers what follows it (HH, UltraFeedback); or
                     {prompt: [messages] | str, chosen: [messages] | str, rejected: ..., system?}
    llamafactory_v1  {chosen_messages, rejected_messages}: messages {role, content: [{type: text, value}],
                     loss_weight}. The answer starts at the first message with loss_weight > 0 (a missing
                     weight: 1 on assistant messages, 0 on the others); the messages before it are the prompt
                     and must be the same in both. A later message with weight 0 (a tool result) is not
                     trained; any weight > 0 is (labels are on or off: the weight's size is not kept).
    kto              {messages, label: true|false}: the last assistant message is the completion, the
                     messages before it the prompt; or {prompt, completion, label} (strings or messages).
                     Unpaired: one answer and a label (true = desirable).

Message contents may be text or a list of text parts ({type: text, value|text}). Every example has a
prompt with a user turn that ends on a user or tool turn, and answers that start with an assistant
turn, are not empty, and (chosen vs rejected) differ; otherwise RecordError says which of these failed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, get_args

from lmforge.config.data import PreferenceRecordFormat
from lmforge.data.files.survey import check_choice
from lmforge.data.text.conversation import Conversation, Turn
from lmforge.data.text.sft_formats import (
    OPENAI_ROLES,
    Item,
    RecordFields,
    conversation_of,
    detect_file_schema,
    history_items,
    kind_of,
    openai_items,
    record_tools,
    sharegpt_items,
)
from lmforge.data.text.templates import RecordError

RECORD_FORMATS = tuple(name for name in get_args(PreferenceRecordFormat) if name != "auto")  # the config's
PAIRWISE_FIELDS = {
    "prompt": ("question", "prompt", "instruction"),
    "chosen": ("response_chosen", "chosen"),
    "rejected": ("response_rejected", "rejected"),
}
_PAIRWISE_ONLY = {"question", "instruction", "input", "history", "response_chosen", "response_rejected"}

# (prompt items, answers' items, system, tools, KTO label)
_Parsed = tuple[list[Item], list[list[Item]], str | None, list | None, bool | None]


@dataclass
class PreferenceExample:
    """A prompt and its answers: chosen and rejected, or (KTO) one completion and its label."""

    prompt: Conversation  # system, tools and every turn before the answers; ends on a user or tool turn
    chosen: list[Turn]  # KTO: the completion
    rejected: list[Turn] | None = None  # None: an unpaired KTO sample
    desirable: bool | None = None  # KTO's label; None for a pair

    @property
    def answers(self) -> list[list[Turn]]:
        return [self.chosen] if self.rejected is None else [self.chosen, self.rejected]

    def conversation(self, answer: list[Turn]) -> Conversation:
        """The prompt, none of it trained, then `answer`: what a ChatRenderer renders into one sequence."""
        prompt = [Turn(t.role, t.content, False) for t in self.prompt.turns]
        return Conversation(prompt + answer, self.prompt.system, self.prompt.tools)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> PreferenceExample:
        data = json.loads(text)
        rejected = data["rejected"]
        return cls(
            prompt=Conversation.from_json(json.dumps(data["prompt"])),
            chosen=[Turn(**t) for t in data["chosen"]],
            rejected=None if rejected is None else [Turn(**t) for t in rejected],
            desirable=data.get("desirable"),
        )


def detect_record_format(fields: dict) -> str | None:
    """The schema of one record, from its keys (and whether answers are lists); None when nothing fits."""
    keys = set(fields)
    if isinstance(fields.get("conversations"), list) and keys & {"chosen", "rejected"}:
        return "sharegpt_pair"
    if keys & {"chosen_messages", "rejected_messages"}:
        return "llamafactory_v1"
    if "label" in keys and keys & {"messages", "completion"}:
        return "kto"
    if any(isinstance(fields.get(name), list) for name in ("chosen", "rejected", "prompt")):
        return "messages_pair"
    has = [keys & set(names) for names in PAIRWISE_FIELDS.values()]
    if all(has) and keys & _PAIRWISE_ONLY:
        return "pairwise_qa"
    if all(has):  # {prompt, chosen, rejected} as strings: TRL's standard form
        return "messages_pair"
    return None


def detect_file_record_format(path: str, first_fields: dict | None) -> str:
    """The schema of a file from its first readable record; ValueError naming the file and what it saw."""
    return detect_file_schema(path, first_fields, detect_record_format, "preference", RECORD_FORMATS,
                              "{chosen: better, rejected: worse}")


def to_preference(fields: dict, record_format: str, field_map: dict[str, str] | None = None,
                  default_system: str | None = None) -> PreferenceExample:
    """One record as a PreferenceExample; RecordError with a short reason if it cannot be trained on."""
    check_choice("record_format", record_format, RECORD_FORMATS)
    prompt, answers, system, tools, label = _PARSERS[record_format](RecordFields(fields, field_map or {}))
    return _example(prompt, answers, system or default_system, tools, label)


def _sharegpt_pair(record: RecordFields) -> _Parsed:
    prompt = sharegpt_items(record, "conversations")
    answers = [_sharegpt_answer(record, side, len(prompt) + 1) for side in ("chosen", "rejected")]
    return prompt, answers, record.text("system", None), record_tools(record), None


def _sharegpt_answer(record: RecordFields, side: str, number: int) -> list[Item]:
    value = record.get(side)
    if isinstance(value, str):
        return [(number, "assistant", value, None)]
    if isinstance(value, dict):  # LLaMA-Factory: one message
        value = [value]
    if not isinstance(value, list):
        raise RecordError(f"field '{record.name(side)}' is {kind_of(value)}, not a message or text")
    return [(number + i, role, content, loss) for i, (_, role, content, loss)
            in enumerate(sharegpt_items(RecordFields({record.name(side): value}, record.field_map), side))]


def _pairwise_qa(record: RecordFields) -> _Parsed:
    question, extra = record.text(_pairwise_field(record, "prompt")), record.text("input", None)
    prompt = history_items(record)
    prompt.append((len(prompt) + 1, "user", f"{question}\n{extra}" if extra else question, None))
    answers = [[(len(prompt) + 1, "assistant", record.text(_pairwise_field(record, side)), None)]
               for side in ("chosen", "rejected")]
    return prompt, answers, record.text("system", None), None, None


def _pairwise_field(record: RecordFields, slot: str) -> str:
    """The first of the slot's names the record has (or the mapped one); missing: the first, for the error."""
    names = (slot,) if slot in record.field_map else PAIRWISE_FIELDS[slot]
    return next((n for n in names if record.name(n) in record.fields), names[0])


def _messages_pair(record: RecordFields) -> _Parsed:
    chosen, rejected = _messages(record, "chosen", "assistant"), _messages(record, "rejected", "assistant")
    if record.name("prompt") in record.fields:
        prompt = _messages(record, "prompt", "user")
        answers = [_after(prompt, answer) for answer in (chosen, rejected)]
        return prompt, answers, record.text("system", None), record_tools(record), None
    shared = 0  # the common prefix, back to the last turn that is not the assistant's
    while shared < min(len(chosen), len(rejected)) and _same(chosen[shared], rejected[shared]):
        shared += 1
    while shared and chosen[shared - 1][1] == "assistant":
        shared -= 1
    return chosen[:shared], [chosen[shared:], rejected[shared:]], None, record_tools(record), None


def _llamafactory_v1(record: RecordFields) -> _Parsed:
    sides = [_v1_items(record, field) for field in ("chosen_messages", "rejected_messages")]
    starts = [_first_weighted(items, record.name(field))
              for items, field in zip(sides, ("chosen_messages", "rejected_messages"), strict=True)]
    prompts = [items[:start] for items, start in zip(sides, starts, strict=True)]
    if len(prompts[0]) != len(prompts[1]) or not all(map(_same, *prompts)):
        raise RecordError("chosen_messages and rejected_messages differ before their first message with "
                          "loss_weight > 0 (the prompt)")
    answers = [items[start:] for items, start in zip(sides, starts, strict=True)]
    return prompts[0], answers, None, record_tools(record), None


def _v1_items(record: RecordFields, field: str) -> list[Item]:
    items: list[Item] = []
    for number, turn in record.turns(field):
        role = turn.role("role", OPENAI_ROLES, number)
        weight = turn.get("loss_weight", None)
        if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))):
            raise RecordError(f"field '{turn.name('loss_weight')}' in turn {number} is {kind_of(weight)}, "
                              "not a number")
        trained = (role == "assistant") if weight is None else weight > 0
        items.append((number, role, _text_of_parts(turn.get("content")), trained))
    return items


def _first_weighted(items: list[Item], field: str) -> int:
    start = next((i for i, (_, _, _, trained) in enumerate(items) if trained), None)
    if start is None:
        raise RecordError(f"no message with loss_weight > 0 in '{field}': no answer to prefer")
    return start


def _kto(record: RecordFields) -> _Parsed:
    label = record.get("label")
    if not isinstance(label, bool):
        raise RecordError(f"field '{record.name('label')}' is {kind_of(label)}, not true/false")
    if record.name("completion") in record.fields:
        prompt = _messages(record, "prompt", "user")
        completion = _after(prompt, _messages(record, "completion", "assistant"))
        return prompt, [completion], record.text("system", None), record_tools(record), label
    messages = _messages(record, "messages", "user")
    while messages and messages[-1][1] != "assistant":  # nothing follows them to prefer
        messages.pop()
    return messages[:-1], [messages[-1:]], None, record_tools(record), label


_PARSERS = {
    "sharegpt_pair": _sharegpt_pair, "pairwise_qa": _pairwise_qa, "messages_pair": _messages_pair,
    "llamafactory_v1": _llamafactory_v1, "kto": _kto,
}


def _messages(record: RecordFields, field: str, text_role: str) -> list[Item]:
    """A field of OpenAI messages (contents as text or text parts), or a string: one `text_role` turn."""
    value = record.get(field)
    if isinstance(value, str):
        return [(1, text_role, value, None)]
    return [(number, role, _text_of_parts(content), loss)
            for number, role, content, loss in openai_items(record, field)]


def _after(prompt: list[Item], answer: list[Item]) -> list[Item]:
    """`answer` numbered on from `prompt` (turn numbers in errors count from the prompt's first turn)."""
    return [(len(prompt) + n, role, content, loss) for n, (_, role, content, loss) in enumerate(answer, 1)]


def _text_of_parts(content: Any) -> Any:
    """Text parts ([{type: text, value|text}]) joined; anything else as it is (conversation_of checks it)."""
    if not isinstance(content, list):
        return content
    texts = []
    for part in content:
        text = part.get("value", part.get("text")) if isinstance(part, dict) else None
        if not (isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(text, str)):
            what = repr(part.get("type")) if isinstance(part, dict) else kind_of(part)
            raise RecordError(f"content part {what} is not text; only text parts are supported")
        texts.append(text)
    return "".join(texts)


def _same(a: Item, b: Item) -> bool:
    """Two items are the same turn: role and (stripped) content."""
    def content(item: Item) -> Any:
        return item[2].strip() if isinstance(item[2], str) else item[2]
    return a[1] == b[1] and content(a) == content(b)


def _example(prompt: list[Item], answers: list[list[Item]], system: str | None, tools: list | None,
             label: bool | None) -> PreferenceExample:
    """Checks the prompt and the answers; strips contents."""
    sides = ("chosen", "rejected") if len(answers) == 2 else ("completion",)
    for side, answer in zip(sides, answers, strict=True):
        if not answer or any(role == "assistant" and isinstance(content, str) and not content.strip()
                             for _, role, content, _ in answer):
            raise RecordError(f"empty {side} answer")
        if answer[0][1] != "assistant":
            raise RecordError(f"the {side} answer starts with a {answer[0][1]} turn, not the assistant's")
    if not any(role == "user" for _, role, _, _ in prompt):
        raise RecordError("no prompt: no user turn before the answers")
    if prompt[-1][1] == "assistant":
        raise RecordError("the prompt ends with an assistant turn; answers must follow a user or tool turn")
    whole = [conversation_of(prompt + answer, system, tools, {}) for answer in answers]
    turns = sum(role != "system" for _, role, _, _ in prompt)
    parts = [conversation.turns[turns:] for conversation in whole]
    if len(parts) == 2 and [(t.role, t.content) for t in parts[0]] == [(t.role, t.content) for t in parts[1]]:
        raise RecordError("chosen and rejected are identical")
    first = whole[0]
    return PreferenceExample(Conversation(first.turns[:turns], first.system, first.tools), parts[0],
                             parts[1] if len(parts) == 2 else None, label)
