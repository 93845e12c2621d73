"""What a file's first megabyte says about how to read it, where its extension does not say enough.

    shape = detect_shape(first_block, "text", from_extension=True, text_unit="auto", encoding=None)
    shape.format, shape.text_unit, shape.detected   # "text", "paragraph", "text_unit paragraph: ..."

- json, jsonl: `[` first (json only) is a JSON array; a first line that is a whole JSON value is
  JSON Lines; a first line that opens an object which is not whole on that line, and parses over
  the following lines (or is a lone `{`), starts JSON objects back to back: "json_objects".
- text, when the extension named it: up to 20 first non-blank lines that all parse as JSON
  objects make the file JSON Lines. A `format: text` in the config keeps it text.
- text, text_unit auto: a document per blank-line-separated block, or per line (`text_unit_of`).

`detected` says in words what the content decided, for the manifest; None when nothing was.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

SAMPLE_BYTES = 1024**2
_JSON_LINES_LOOKED_AT = 20
_SENTENCE_END = tuple("。！？.!?\"」）”")
_NOT_JSON = object()


@dataclass(frozen=True)
class FileShape:
    format: str  # text, jsonl, json (an array), json_objects, parquet or csv
    text_unit: str | None  # "line" or "paragraph" for text; None for the other formats
    detected: str | None  # what the content decided, in words; None when the config or extension did


def detect_shape(
    first_block: bytes, format: str, *, from_extension: bool, text_unit: str, encoding: str | None
) -> FileShape:
    """How to read a file named `format` (by config or extension), from its first block of whole lines."""
    if format not in ("text", "json", "jsonl"):
        return FileShape(format, None, None)
    text = _sample_text(first_block, encoding)
    if format != "text":
        return _json_shape(text, format)
    if from_extension and _is_json_lines(text):
        return FileShape("jsonl", None, "JSON Lines in a text file")
    if text_unit != "auto":
        return FileShape("text", text_unit, None)
    unit, why = text_unit_of(text)
    return FileShape("text", unit, f"text_unit {unit}: {why}")


def text_unit_of(text: str) -> tuple[str, str]:
    """("paragraph" or "line", why) for a sample of plain text.

    Paragraph when the sample has blank lines between its lines, a typical block has 2+ lines, and
    either a typical block is short (<= 8 lines: a question and its answer, a short note) or the
    lines look hard-wrapped (>= 80% of them <= 100 characters, and half or more not ending a
    sentence). "Typical" is the size of the block the median line sits in, so that a few short
    heading blocks do not outvote a chapter of long one-paragraph lines. Otherwise line.
    """
    lines = [line.rstrip("\r") for line in text.split("\n")]
    blocks, size = [], 0
    for line in lines:
        if line.strip():
            size += 1
        elif size:
            blocks.append(size)
            size = 0
    blocks += [size] if size else []
    if len(blocks) < 2:
        return "line", "no blank line between lines" if blocks else "no text"
    typical = _median_line_block(blocks)
    if typical < 2:
        return "line", "blank lines between single lines"
    if typical <= 8:
        return "paragraph", f"blank lines between blocks of about {typical} lines"
    filled = [line.strip() for line in lines if line.strip()]
    short = sum(len(line) <= 100 for line in filled) / len(filled)
    unended = sum(not line.endswith(_SENTENCE_END) for line in filled) / len(filled)
    if short >= 0.8 and unended >= 0.5:
        return "paragraph", f"hard-wrapped blocks of about {typical} lines"
    return "line", f"blocks of about {typical} long lines that are not hard-wrapped"


def _median_line_block(blocks: list[int]) -> int:
    """The size of the block that holds the middle line, blocks sorted by size."""
    seen, half = 0, sum(blocks) / 2
    for size in sorted(blocks):
        seen += size
        if seen >= half:
            return size
    return 0


def _json_shape(text: str, format: str) -> FileShape:
    if format == "json" and text.lstrip().startswith("["):
        return FileShape("json", None, None)
    start = len(text) - len(text.lstrip())
    first_line = text[start:].split("\n", 1)[0].strip()
    if (
        first_line.startswith("{")
        and _json_value(first_line) is _NOT_JSON
        and _object_starts(text, start, first_line)
    ):
        return FileShape("json_objects", None, "JSON objects back to back, not one per line")
    return FileShape("jsonl", None, "JSON Lines, not a JSON array" if format == "json" else None)


def _object_starts(text: str, start: int, first_line: str) -> bool:
    """Whether a JSON object starts at `start`: a lone `{` line, or an object that parses from there."""
    if first_line == "{":  # what json.dumps(indent=...) writes, whatever follows in a long object
        return True
    try:
        value, _ = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError:
        return False  # a bad first JSON line stays JSON Lines: one error, not the rest of the file skipped
    return isinstance(value, dict)


def _is_json_lines(text: str) -> bool:
    lines = [line for line in (line.strip() for line in text.split("\n")) if line]
    looked_at = lines[:_JSON_LINES_LOOKED_AT]
    return bool(looked_at) and all(isinstance(_json_value(line), dict) for line in looked_at)


def _json_value(line: str) -> object:
    """The JSON value of `line`, or _NOT_JSON if it is not one whole JSON value."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return _NOT_JSON


def _sample_text(block: bytes, encoding: str | None) -> str:
    """At most SAMPLE_BYTES of whole lines, decoded as `encoding`, else as UTF-8 or GB18030."""
    sample = block[:SAMPLE_BYTES]
    if len(block) > SAMPLE_BYTES:
        sample = sample[:sample.rfind(b"\n") + 1] or sample  # a single huge line stays cut
    for name in [encoding] if encoding else ["utf-8-sig", "gb18030"]:
        try:
            return sample.decode(name).removeprefix("\ufeff")  # a BOM, even under encoding: utf-8
        except UnicodeDecodeError:
            pass
    return sample.decode(encoding or "utf-8-sig", "replace").removeprefix("\ufeff")
