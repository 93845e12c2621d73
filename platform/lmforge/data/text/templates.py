"""Turn a structured record into pretraining text, as the original recipe does.

qa: `q\na`; dialogue: `患者:xx\n医生:yy`; medical_csv: `title\nask\nanswer`; plain: one field (a
record with no text field but a question and an answer, such as JSON Lines of QA in a .txt file,
renders as qa); format: a user's format string. EOS is not part of the text: the tokenizer step
appends it.
"""

from __future__ import annotations

import string

from lmforge.config import SourceConfig

# Field names tried in order when the config does not map a slot (common public datasets).
DEFAULT_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "plain": {"text": ("text", "content")},
    "qa": {
        "question": ("question", "q", "问", "instruction", "prompt"),
        "answer": ("answer", "a", "答", "output", "response"),
    },
    "dialogue": {"turns": ("conversations", "messages", "dialogue")},
    "medical_csv": {"title": ("title",), "ask": ("ask",), "answer": ("answer",)},
}

ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                "bot": "assistant", "system": "system"}


class RecordError(ValueError):
    """The record lacks what the template needs; the message names the field."""


def render_text(fields: dict, source: SourceConfig) -> str:
    """The pretraining text of one record under the source's template."""
    if source.template == "format":
        return _render_format(fields, source.format_string or "")
    if source.template == "plain":
        return _render_plain(fields, source)
    if source.template == "qa":
        return _render_qa(fields, source)
    if source.template == "medical_csv":
        parts = [_text(fields, _field(fields, source, slot)) for slot in ("title", "ask", "answer")]
        return "\n".join(p for p in parts if p)
    return _render_dialogue(fields[_field(fields, source, "turns")], source.roles)


def _render_plain(fields: dict, source: SourceConfig) -> str:
    has_text = "text" in source.fields or _has_default(fields, "plain", "text")
    if not has_text and all(_has_default(fields, "qa", slot) for slot in ("question", "answer")):
        return _render_qa(fields, source)
    return _text(fields, _field(fields, source, "text"))


def _render_qa(fields: dict, source: SourceConfig) -> str:
    question = _text(fields, _field(fields, source, "question", "qa"))
    return f"{question}\n{_text(fields, _field(fields, source, 'answer', 'qa'))}"


def _has_default(fields: dict, template: str, slot: str) -> bool:
    return any(name in fields for name in DEFAULT_FIELDS[template][slot])


def _field(fields: dict, source: SourceConfig, slot: str, template: str | None = None) -> str:
    """The record's field for `slot`: the mapped one, else the first of `template`'s defaults present."""
    if slot in source.fields:
        name = source.fields[slot]
        if name not in fields:
            raise RecordError(f"missing field '{name}' (mapped from {slot}); record has {sorted(fields)[:8]}")
        return name
    candidates = DEFAULT_FIELDS[template or source.template][slot]
    for name in candidates:
        if name in fields:
            return name
    raise RecordError(
        f"missing field for '{slot}': none of {list(candidates)} in record with {sorted(fields)[:8]}; "
        f"map it with fields: {{{slot}: <field>}}"
    )


def _text(fields: dict, name: str) -> str:
    value = fields[name]
    if value is None:
        raise RecordError(f"field '{name}' is null")
    if not isinstance(value, str):
        if isinstance(value, (int, float)):
            return str(value)
        raise RecordError(f"field '{name}' is a {type(value).__name__}, not text")
    return value


def _render_format(fields: dict, format_string: str) -> str:
    names = [name for _, name, _, _ in string.Formatter().parse(format_string) if name]
    missing = [n for n in names if n not in fields]
    if missing:
        raise RecordError(f"missing field '{missing[0]}' used by format_string")
    return format_string.format(**{n: _text(fields, n) for n in names})


def _render_dialogue(turns: object, roles: dict[str, str]) -> str:
    if not isinstance(turns, list) or not turns:
        raise RecordError("dialogue turns must be a non-empty list of {role, content} objects")
    lines = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError(f"turn {i} is a {type(turn).__name__}, not an object")
        role = ROLE_ALIASES.get(str(turn.get("role", turn.get("from", ""))).lower())
        content = turn.get("content", turn.get("value"))
        if role is None or not isinstance(content, str):
            raise RecordError(f"turn {i} needs role/from and content/value, got keys {sorted(turn)}")
        label = roles.get(role)
        lines.append(f"{label}:{content}" if label else content)
    return "\n".join(lines)
