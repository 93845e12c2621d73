"""Read a model's free text back into structure: QA pairs, dialogue turns, a chosen letter.

Each parser returns what it found or raises `Unparsed` with a short reason; the synth job puts such
records in quarantine with the raw text, so nothing is dropped silently.

    parse_qa_pairs("问题1:什么是疟疾?\\n答案1:由疟原虫引起的传染病。")  -> [("什么是疟疾?", "由疟原虫...")]
    parse_dialogue("患者:要吃药吗?\\n医生:需要。")                      -> [("user", ...), ("assistant", ...)]
    first_choice_letter("答案是 B。")                                    -> "B"
"""

from __future__ import annotations

import re

# "问题1:", "问题 2：", "问1.", "Q1:", "1. 问题:"; the number is optional, the colon (or 、/.) is not.
_QA_MARKER = re.compile(
    r"(?:^|\n)[ \t]*(?:\d+[.、)][ \t]*)?(?P<kind>问题|问|Q|Question|答案|回答|答|A|Answer)[ \t]*(?P<number>\d*)[ \t]*[:：.、]",
    re.IGNORECASE,
)
_QUESTION_KINDS = {"问题", "问", "q", "question"}
_SPEAKERS = {"患者": "user", "病人": "user", "用户": "user", "user": "user",
             "医生": "assistant", "助手": "assistant", "assistant": "assistant"}
_SPEAKER_LINE = re.compile(r"^[ \t]*(?P<speaker>患者|病人|用户|医生|助手|User|Assistant)[ \t]*[:：]",
                           re.IGNORECASE | re.MULTILINE)
_LETTER = re.compile(r"(?<![A-Za-z])([ABCD])(?![A-Za-z])")


class Unparsed(ValueError):
    """The text does not have the structure the recipe asked for; the message says what was missing."""


def parse_qa_pairs(text: str, max_pairs: int = 10) -> list[tuple[str, str]]:
    """Questions and their answers, in order; numbered markers must pair up (问题2 with 答案2)."""
    markers = list(_QA_MARKER.finditer(text))
    if not markers:
        raise Unparsed("no 问题/答案 markers")
    pairs: list[tuple[str, str]] = []
    question: tuple[str, str] | None = None  # (number, text) of a question still waiting for its answer
    for i, marker in enumerate(markers):
        end = markers[i + 1].start() if i + 1 < len(markers) else len(text)
        body = text[marker.end():end].strip()
        number = marker.group("number")
        if marker.group("kind").lower() in _QUESTION_KINDS:
            question = (number, body)
        elif question is not None and (not number or not question[0] or number == question[0]):
            if question[1] and body:
                pairs.append((question[1], body))
            question = None
    if not pairs:
        raise Unparsed("no question followed by its answer")
    return pairs[:max_pairs]


def parse_dialogue(text: str) -> list[tuple[str, str]]:
    """(role, content) turns from '患者:'/'医生:' lines, starting with the user and ending with the assistant."""
    lines = list(_SPEAKER_LINE.finditer(text))
    turns: list[tuple[str, str]] = []
    for i, line in enumerate(lines):
        end = lines[i + 1].start() if i + 1 < len(lines) else len(text)
        role, content = _SPEAKERS[line.group("speaker").lower()], text[line.end():end].strip()
        if not content:
            continue
        if turns and turns[-1][0] == role:  # one speaker over several lines: one turn
            turns[-1] = (role, f"{turns[-1][1]}\n{content}")
        elif turns or role == "user":
            turns.append((role, content))
    while turns and turns[-1][0] != "assistant":
        turns.pop()
    if not turns:
        raise Unparsed("no 患者:/医生: exchange")
    return turns


def first_choice_letter(text: str) -> str | None:
    """The first standalone A-D in a generated answer ('B', '答案:C', '选D。'), or None."""
    found = _LETTER.search(text)
    return found.group(1) if found else None
