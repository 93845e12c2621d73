"""A dialogue written into one prompt with role markers, split into turns before the record's answer.

    dialogue_turns("<user>: 头痛\\n<bot>: 休息一下\\n<user>: 还疼\\n<bot>:", "去医院。", "auto")
    -> [("user", "头痛"), ("assistant", "休息一下"), ("user", "还疼"), ("assistant", "去医院。")]

Marker pairs (user, assistant): <user>/<bot>, 患者/医生, Human/Assistant, 用户/助手, User/Assistant. A
marker starts the text or a line (after spaces or tabs, if any) and ends with an ASCII or a
full-width colon; English markers match in any case. "注意：" or "Assistant:" in mid-sentence are text.

mode auto: split when the prompt starts with a user marker and has an assistant marker of the same
pair; always: when a pair's two markers both occur, text before the first marker joining the first
user turn; never: the prompt is one user turn. Turns of one role in a row are joined by a newline.

Where the split prompt ends decides where the answer goes:
- an empty assistant marker ("...\\n<bot>:"): dropped; the answer is that assistant turn;
- a user turn: the answer follows it;
- a filled assistant turn equal to the answer: the answer is not repeated;
- another filled assistant turn: auto does not split, since such a prompt is most likely a task
  about a dialogue ("...医生：... 请总结病情") rather than a dialogue to continue; always keeps the
  turns and the answer follows as one more assistant turn.
"""

from __future__ import annotations

import re
from typing import get_args

from lmforge.config.data import SplitDialogue

MARKER_PAIRS = (
    ("<user>", "<bot>"),
    ("患者", "医生"),
    ("Human", "Assistant"),
    ("用户", "助手"),
    ("User", "Assistant"),
)
SPLIT_MODES = get_args(SplitDialogue)

_MARKERS = [  # per pair: either marker at a line start; the group "user" says which one matched
    re.compile(rf"^[ \t]*(?:(?P<user>{re.escape(user)})|{re.escape(assistant)})[ \t]*[:：]",
               re.MULTILINE | re.IGNORECASE)
    for user, assistant in MARKER_PAIRS
]


def dialogue_turns(prompt: str, answer: str, mode: str) -> list[tuple[str, str]]:
    """[(role, text)] of a prompt and its answer: the prompt split at role markers, or one user turn."""
    turns = split_marked_dialogue(prompt, mode)
    if not turns:
        return [("user", prompt), ("assistant", answer)]
    last_role, last_text = turns[-1]
    if last_role == "assistant" and not last_text:  # "...\n<bot>:" awaits the answer
        turns.pop()
    elif last_role == "assistant" and last_text == answer.strip():
        return turns
    elif last_role == "assistant" and mode == "auto":
        return [("user", prompt), ("assistant", answer)]
    return [*turns, ("assistant", answer)]


def split_marked_dialogue(text: str, mode: str) -> list[tuple[str, str]] | None:
    """[(role, stripped text)] at the role markers of `text`, or None when `mode` finds no dialogue."""
    if mode == "never":
        return None
    for markers in _MARKERS:
        found = list(markers.finditer(text))
        roles = ["user" if marker["user"] else "assistant" for marker in found]
        if "user" not in roles or "assistant" not in roles:
            continue
        preamble = text[:found[0].start()].strip()
        if mode == "auto" and (preamble or roles[0] != "user"):
            continue
        ends = [marker.start() for marker in found[1:]] + [len(text)]
        turns = [("user", preamble)] if preamble else []
        for role, marker, end in zip(roles, found, ends, strict=True):
            content = text[marker.end():end].strip()
            if turns and turns[-1][0] == role:
                turns[-1] = (role, f"{turns[-1][1]}\n{content}".strip())
            else:
                turns.append((role, content))
        return turns
    return None
