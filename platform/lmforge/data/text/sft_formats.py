"""Every common SFT record schema into one `Conversation` (lmforge.data.text.conversation).

    record_format = detect_file_record_format(path, first_fields)  # once per file, unless the config names it
    conversation = to_conversation(fields, record_format, source.fields, source.system,
                                   split_dialogue=source.split_dialogue)   # or RecordError

Schemas; `field_map` renames any field, top-level or inside a turn ({"instruction": "prompt"}):
    alpaca        {instruction, input?, output, system?, history?: [[user, assistant], ...]}
    chatglm2      {prompt, response, history?: [[user, assistant], ...]}   (ChatGLM-6B and ChatGLM2-6B)
    sharegpt      {conversations: [{from: human|gpt|system|function_call|observation, value}],
                   system?, tools?}
    chatglm3      {conversations: [{role: system|user|assistant|observation|tool, content, loss?}], tools?}
    openai        {messages: [{role: system|user|assistant|tool, content, tool_calls?, weight?}], tools?}
    advertisegen  {content, summary}
    medical_csv   {department, title, ask, answer}
    qa            {question|q|问, answer|a|答}

An alpaca instruction (with its input) or a chatglm2 prompt may hold a whole dialogue written with
role markers ("<user>: ...\n<bot>: ..."); `split_dialogue` turns it into turns before the answer
(lmforge.data.text.dialogue_markers says when and how).

Every conversation: an optional system prompt (only as the first turn), then a user turn; a tool turn
follows an assistant turn (or another tool turn: parallel calls). Contents are stripped, and trailing
user/tool turns are dropped, since nothing follows them to train on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, get_args

from lmforge.config.data import SFTRecordFormat
from lmforge.data.files.survey import check_choice
from lmforge.data.text.conversation import Conversation, Turn
from lmforge.data.text.dialogue_markers import SPLIT_MODES, dialogue_turns
from lmforge.data.text.templates import RecordError

RECORD_FORMATS = tuple(name for name in get_args(SFTRecordFormat) if name != "auto")  # the config's

QA_FIELDS = {"question": ("question", "q", "问"), "answer": ("answer", "a", "答")}
SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "function_call": "assistant", "observation": "tool", "tool": "tool",
}
CHATGLM3_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "observation": "tool"}
OPENAI_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
# The roles a turn may follow; None is the start (after any system prompt).
_MAY_FOLLOW = {
    "user": {None, "assistant"},
    "assistant": {"user", "assistant", "tool"},
    "tool": {"assistant", "tool"},
}
_KINDS = {type(None): "null", str: "a string", list: "a list", dict: "an object", bool: "a boolean",
          int: "a number", float: "a number"}
_REQUIRED = object()

Item = tuple[int, str, Any, bool | None]  # (turn number in the record, from 1; role; content; loss)


def detect_record_format(fields: dict) -> str | None:
    """The schema of one record, from its keys and the keys of its first turn; None when nothing fits."""
    turns = fields.get("conversations")
    if isinstance(turns, list) and turns and isinstance(turns[0], dict):
        if {"from", "value"} <= turns[0].keys():
            return "sharegpt"
        if "role" in turns[0]:
            return "chatglm3"
    keys = set(fields)
    if isinstance(fields.get("messages"), list):
        return "openai"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if {"prompt", "response"} <= keys:
        return "chatglm2"
    if {"content", "summary"} <= keys:
        return "advertisegen"
    if {"title", "ask", "answer"} <= keys:
        return "medical_csv"
    if keys & set(QA_FIELDS["question"]) and keys & set(QA_FIELDS["answer"]):
        return "qa"
    return None


def detect_file_record_format(path: str, first_fields: dict | None) -> str:
    """The SFT schema of a file from its first readable record; ValueError naming the file and what it saw."""
    return detect_file_schema(path, first_fields, detect_record_format, "SFT", RECORD_FORMATS,
                              "{instruction: prompt, output: answer}")


def detect_file_schema(path: str, first_fields: dict | None, detect: Callable[[dict], str | None], kind: str,
                       formats: tuple[str, ...], fields_example: str) -> str:
    """`detect` of a file's first readable record (SFT, preference); ValueError naming the file, what it saw
    (keys, and its first turn's) and the `formats` to set instead."""
    found = detect(first_fields) if first_fields is not None else None
    if found:
        return found
    if first_fields is None:
        seen = "no readable record"
    else:
        seen = f"a record with keys {sorted(first_fields)}"
        turns = first_fields.get("conversations", first_fields.get("messages"))
        if isinstance(turns, list) and turns:
            first = turns[0]
            seen += (
                f", first turn keys {sorted(first)}"
                if isinstance(first, dict)
                else f", first turn {kind_of(first)}"
            )
    raise ValueError(
        f"{path}: cannot tell the {kind} format from {seen}; set record_format: "
        f"(one of {', '.join(formats)}) and, if the names differ, fields: (e.g. {fields_example})"
    )


def to_conversation(
    fields: dict,
    record_format: str,
    field_map: dict[str, str] | None = None,
    default_system: str | None = None,
    *,
    split_dialogue: str = "never",
) -> Conversation:
    """One record as a Conversation; RecordError with a short reason if it cannot be trained on.

    split_dialogue (auto, always, never): for alpaca and chatglm2, whether a prompt written as a
    dialogue with role markers becomes turns; never, the default, keeps it one user turn.
    """
    check_choice("record_format", record_format, RECORD_FORMATS)
    check_choice("split_dialogue", split_dialogue, SPLIT_MODES)
    record = RecordFields(fields, field_map or {})
    parse = _PARSERS[record_format]
    if record_format in ("alpaca", "chatglm2"):
        parse = partial(parse, split_dialogue=split_dialogue)
    items, system, tools, meta = parse(record)
    return conversation_of(items, system or default_system, tools, meta)


class RecordFields:
    """A record, or one turn of it, read through the field map; errors name the field (and the turn)."""

    def __init__(self, fields: dict, field_map: dict[str, str], where: str = "") -> None:
        self.fields, self.field_map, self.where = fields, field_map, where

    def name(self, field: str) -> str:
        return self.field_map.get(field, field)

    def get(self, field: str, default: Any = _REQUIRED) -> Any:
        name = self.name(field)
        if name in self.fields:
            return self.fields[name]
        if default is not _REQUIRED:
            return default
        mapped = f" (mapped from '{field}')" if name != field else ""
        raise RecordError(f"missing field '{name}'{mapped}{self.where}; has {sorted(self.fields)[:8]}")

    def text(self, field: str, default: Any = _REQUIRED) -> str | None:
        """The field's text, stripped; `default` (e.g. None) if it is absent or null and optional."""
        value = self.get(field, default)
        if value is None and default is not _REQUIRED:
            return default
        if not isinstance(value, str):
            raise RecordError(f"field '{self.name(field)}'{self.where} is {kind_of(value)}, not text")
        return value.strip()

    def turns(self, field: str) -> Iterator[tuple[int, RecordFields]]:
        """(number from 1, the turn) for each turn in a list-of-objects field."""
        turns = self.get(field)
        if not isinstance(turns, list):
            raise RecordError(f"field '{self.name(field)}' is {kind_of(turns)}, not a list of turns")
        for number, turn in enumerate(turns, 1):
            if not isinstance(turn, dict):
                raise RecordError(f"turn {number} is {kind_of(turn)}, not an object")
            yield number, RecordFields(turn, self.field_map, f" in turn {number}")

    def role(self, field: str, roles: dict[str, str], number: int) -> str:
        role = self.get(field)
        if not isinstance(role, str) or role not in roles:
            raise RecordError(f"unknown role {role!r} at turn {number}; expected one of {sorted(roles)}")
        return roles[role]


def _alpaca(record: RecordFields, split_dialogue: str) -> tuple[list[Item], str | None, None, dict]:
    instruction, extra = record.text("instruction"), record.text("input", None)
    user = f"{instruction}\n{extra}" if extra else instruction
    return (
        _history_then(record, user, record.text("output"), split_dialogue),
        record.text("system", None),
        None,
        {},
    )


def _chatglm2(record: RecordFields, split_dialogue: str) -> tuple[list[Item], None, None, dict]:
    return (
        _history_then(record, record.text("prompt"), record.text("response"), split_dialogue),
        None,
        None,
        {},
    )


def _history_then(record: RecordFields, prompt: str, answer: str, split_dialogue: str) -> list[Item]:
    """The record's history pairs, then the prompt (split at role markers, if so) and its answer."""
    items = history_items(record)
    turns = dialogue_turns(prompt, answer, split_dialogue)
    return items + [(len(items) + n, role, text, None) for n, (role, text) in enumerate(turns, 1)]


def history_items(record: RecordFields) -> list[Item]:
    """The items of the record's optional `history`: [[user, assistant], ...] (alpaca, chatglm2)."""
    history = record.get("history", None) or []
    if not isinstance(history, list):
        raise RecordError(
            f"field '{record.name('history')}' is {kind_of(history)}, not [[user, assistant], ...]"
        )
    items: list[Item] = []
    for i, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise RecordError(f"history item {i + 1} is not a [user, assistant] pair")
        items += [(2 * i + 1, "user", pair[0], None), (2 * i + 2, "assistant", pair[1], None)]
    return items


def _sharegpt(record: RecordFields) -> tuple[list[Item], str | None, list | None, dict]:
    return sharegpt_items(record, "conversations"), record.text("system", None), record_tools(record), {}


def sharegpt_items(record: RecordFields, field: str) -> list[Item]:
    """The items of a list of ShareGPT turns in `field` ({from, value})."""
    return [(number, turn.role("from", SHAREGPT_ROLES, number), turn.get("value"), None)
            for number, turn in record.turns(field)]


def _chatglm3(record: RecordFields) -> tuple[list[Item], None, list | None, dict]:
    items: list[Item] = []
    for number, turn in record.turns("conversations"):
        loss = turn.get("loss", None)
        if loss is not None and not isinstance(loss, bool):
            raise RecordError(
                f"field '{turn.name('loss')}' in turn {number} is {kind_of(loss)}, not true/false"
            )
        if turn.get("role") == "tool":  # one step of ChatGLM3's tool use: the model's call, then the result
            call = {"name": turn.get("name"), "parameters": turn.get("parameters")}
            observation = turn.get("observation")
            if not isinstance(observation, str):
                observation = json.dumps(observation, ensure_ascii=False)
            items += [(number, "assistant", json.dumps(call, ensure_ascii=False), loss),
                      (number, "tool", observation, None)]
        else:
            items.append((number, turn.role("role", CHATGLM3_ROLES, number), turn.get("content"), loss))
    return items, None, record_tools(record), {}


def _openai(record: RecordFields) -> tuple[list[Item], None, list | None, dict]:
    return openai_items(record, "messages"), None, record_tools(record), {}


def openai_items(record: RecordFields, field: str) -> list[Item]:
    """The items of a list of OpenAI messages in `field` ({role, content, tool_calls?, weight?})."""
    items: list[Item] = []
    for number, turn in record.turns(field):
        role = turn.role("role", OPENAI_ROLES, number)
        calls = turn.get("tool_calls", None) if role == "assistant" else None
        if calls:  # a tool call: the turn's content is the call, as the model writes it
            content = turn.get("content", None)
            functions = [call.get("function", call) if isinstance(call, dict) else call for call in calls]
            call_text = json.dumps(functions[0] if len(functions) == 1 else functions, ensure_ascii=False)
            content = f"{content}\n{call_text}" if isinstance(content, str) and content.strip() else call_text
        else:
            content = turn.get("content")
        weight = turn.get("weight", None)  # OpenAI fine-tuning: weight 0 leaves an assistant turn untrained
        items.append((number, role, content, None if weight is None else bool(weight)))
    return items


def _advertisegen(record: RecordFields) -> tuple[list[Item], None, None, dict]:
    return (
        [(1, "user", record.text("content"), None), (2, "assistant", record.text("summary"), None)],
        None,
        None,
        {},
    )


def _medical_csv(record: RecordFields) -> tuple[list[Item], None, None, dict]:
    title, ask = record.text("title"), record.text("ask")
    user = ask if ask.startswith(title) else f"{title}\n{ask}"
    department = record.text("department", None)
    meta = {"department": department} if department else {}
    return [(1, "user", user, None), (2, "assistant", record.text("answer"), None)], None, None, meta


def _qa(record: RecordFields) -> tuple[list[Item], None, None, dict]:
    texts = []
    for slot, names in QA_FIELDS.items():
        names = (slot,) if slot in record.field_map else names
        texts.append(record.text(next((n for n in names if record.name(n) in record.fields), slot)))
    return [(1, "user", texts[0], None), (2, "assistant", texts[1], None)], None, None, {}


_PARSERS = {
    "alpaca": _alpaca, "chatglm2": _chatglm2, "sharegpt": _sharegpt, "chatglm3": _chatglm3, "openai": _openai,
    "advertisegen": _advertisegen, "medical_csv": _medical_csv, "qa": _qa,
}


def record_tools(record: RecordFields) -> list[dict] | None:
    """The record's tool definitions as a list of objects, or None."""
    tools = record.get("tools", None)
    if isinstance(tools, str):  # LLaMA-Factory's sharegpt keeps them as a JSON string
        try:
            tools = json.loads(tools) if tools.strip() else None
        except json.JSONDecodeError:
            raise RecordError(f"field '{record.name('tools')}' is not valid JSON") from None
    if isinstance(tools, dict):
        tools = [tools]
    if not tools:
        return None
    if not isinstance(tools, list):
        raise RecordError(f"field '{record.name('tools')}' is {kind_of(tools)}, not a list of tools")
    # ChatGLM3's tool_alpaca describes each tool in plain text, not as a JSON schema.
    return [tool if isinstance(tool, dict) else {"description": tool} for tool in tools]


def conversation_of(items: list[Item], system: str | None, tools: list | None, meta: dict) -> Conversation:
    """Checks roles, order and contents; strips contents and drops trailing turns with nothing to train."""
    turns: list[Turn] = []
    for number, role, content, loss in items:
        if not isinstance(content, str):
            raise RecordError(f"turn {number} content is {kind_of(content)}, not text")
        content = content.strip()
        if role == "system":
            if number != 1:
                raise RecordError(
                    f"role out of order: system at turn {number}; only the first turn may be system"
                )
            system = content or system
            continue
        previous = turns[-1].role if turns else None
        if previous not in _MAY_FOLLOW[role]:
            if previous is None:
                raise RecordError(f"role out of order: {role} at turn {number}; the first turn must be user")
            raise RecordError(f"role out of order: {role} after {previous} at turn {number}")
        if role == "assistant" and not content:
            raise RecordError(f"empty assistant turn {number}")
        turns.append(Turn(role, content, loss))
    while turns and turns[-1].role != "assistant":
        turns.pop()
    if not turns:
        raise RecordError("no assistant turn")
    if not any(turn.trained for turn in turns):
        raise RecordError("no trained turn: every assistant turn has loss turned off")
    return Conversation(turns, system or None, tools, meta)


def kind_of(value: Any) -> str:
    return _KINDS.get(type(value), type(value).__name__)
