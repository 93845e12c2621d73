"""Read a model's free text back into structure: QA pairs, dialogue turns, a chosen option, a refusal.

The QA and dialogue parsers return what they found or raise `Unparsed` with a short reason; the
synth job puts such records in quarantine with the raw text, so nothing is dropped silently.
`parse_choice` returns None instead (eval counts those answers), as does `refusal_marker` for an answer
that does not refuse.

    parse_qa_pairs("问题1:什么是疟疾?\\n答案1:由疟原虫引起的传染病。")  -> [("什么是疟疾?", "由疟原虫...")]
    parse_dialogue("患者:要吃药吗?\\n医生:需要。")                      -> [("user", ...), ("assistant", ...)]
    parse_choice("答案是 B。", {"A": "发热", "B": "咳嗽"})                -> "B"
    refusal_marker("抱歉,我无法回答这个问题。")                          -> "抱歉"
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping

# "问题1:", "问题 2：", "问1.", "Q1:", "1. 问题:"; the number is optional, the colon (or 、/.) is not.
_QA_MARKER = re.compile(
    r"(?:^|\n)[ \t]*(?:\d+[.、)][ \t]*)?(?P<kind>问题|问|Q|Question|答案|回答|答|A|Answer)"
    r"[ \t]*(?P<number>\d*)[ \t]*[:：.、]",
    re.IGNORECASE,
)
_QUESTION_KINDS = {"问题", "问", "q", "question"}
_SPEAKERS = {"患者": "user", "病人": "user", "用户": "user", "user": "user",
             "医生": "assistant", "助手": "assistant", "assistant": "assistant"}
_SPEAKER_LINE = re.compile(r"^[ \t]*(?P<speaker>患者|病人|用户|医生|助手|User|Assistant)[ \t]*[:：]",
                           re.IGNORECASE | re.MULTILINE)
# After NFKC: "（Ａ）" is "(A)", "：" is ":", "，" is ",". "。" and "、" stay.
_DELIMITER = r"[.、:,。;!?)\]】]"
_LETTER_AT_START = re.compile(
    r"^(?:[(\[【]\s*([A-Za-z])\s*[)\]】]"  # (A) [a] 【B】
    rf"|([A-Z])(?=$|{_DELIMITER}|\s*\n|\s+[^A-Za-z\s])"  # A / A. / A、/ "A 发热", not "A patient"
    r"|([a-z])(?=[).、]))"  # b) a.
)
_LETTER_AFTER_CUE = re.compile(
    r"(?:正确答案|答案|选择|选项|选|(?i:the\s+answer\s+is|answer\s+is|answer|option|choice))"
    r"[\s:是为应该]*"
    r"(?:[(\[【]\s*([A-Za-z])\s*[)\]】]|([A-Z])(?![A-Za-z0-9]))"
)

# Phrases that make an answer a refusal. Few and specific on purpose: "无法" alone also opens medical
# answers ("目前无法根治"), as "sorry" does ("sorry to hear that"); an answer taken for a refusal by
# mistake costs synth's preference recipe one pair, a missed one adds a pair of two refusals.
REFUSAL_MARKERS = ("抱歉", "对不起", "无法回答", "不能回答", "不便回答", "无法提供", "无法帮", "不能帮",
                   "i cannot", "i can't", "i am unable", "i'm unable", "as an ai")


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
    """(role, content) turns from '患者:'/'医生:' lines,
    starting with the user and ending with the assistant."""
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


def parse_choice(text: str, options: Mapping[str, str]) -> str | None:
    """The option (a key of `options`, e.g. "A"-"D" -> option text) that a generated answer chose, or None.

    Tried in order, on the NFKC form (full-width brackets and colons become ASCII):
      a letter at the start, alone or before a delimiter   A | (A) | A. | A、 | b) | "A 发热"
      a letter after an answer cue, anywhere               答案：A | 答案是A | 选A | 选择 B | The answer is D
      the text of one option at the start                 发热。 (option A "发热")
    A letter that is part of a word is not a choice: "A patient ...", "As ...", "B超", "维生素B12".
    """
    text = unicodedata.normalize("NFKC", text).strip()
    for pattern in (_LETTER_AT_START, _LETTER_AFTER_CUE):
        for found in pattern.finditer(text):
            letter = next(g for g in found.groups() if g).upper()
            if letter in options:
                return letter
    return _option_by_text(text, options)


def _option_by_text(text: str, options: Mapping[str, str]) -> str | None:
    """The option whose text the answer starts with, after an optional own letter ("A. 发热");
    the longest wins."""
    matches = {}
    for letter, option in options.items():
        option = unicodedata.normalize("NFKC", option).strip().rstrip("。.!！")
        if option and re.match(rf"(?:{re.escape(letter)}[.、:)]?\s*)?{re.escape(option)}", text):
            matches[letter] = len(option)
    longest = max(matches.values(), default=0)
    best = [letter for letter, length in matches.items() if length == longest]
    return best[0] if len(best) == 1 else None  # two options with the same text: no choice


def refusal_marker(text: str) -> str | None:
    """The first of REFUSAL_MARKERS the answer contains (English ones in any case), or None."""
    folded = text.casefold()
    return next((marker for marker in REFUSAL_MARKERS if marker in folded), None)
