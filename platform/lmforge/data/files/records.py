"""Turn one chunk of an input file into raw records, with exact line numbers.

The chunks come from `lmforge.data.files.survey`, so that big files can be read in parallel:

    survey = survey_file(path)             # one streaming pass: size, sha256, encoding, chunk boundaries
    for chunk in survey.chunks:            # each chunk can go to a different worker
        for record in read_chunk(chunk):   # RawRecord(line, position, fields) or RawRecord(..., error=...)
            ...

`line` is where a record starts, for people; `position` orders the records of a file and is unique
in it (the line for line-based formats, the row for parquet, the element's ordinal for JSON), so
a record's key stays unique when many records share a line (a JSON array written on one line).

A record that cannot be read never stops the run: it comes back with `error` set (and its raw text),
and the caller quarantines it.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from lmforge.data.files.survey import READ_FORMATS, FileChunk, check_choice, decode, open_binary, parquet_file

_RAW_CHARS = 300
_CSV_FIELD_LIMIT = 256 * 1024**2  # the csv module's default (128 KiB) is smaller than some real answers
_UNDECODED = re.compile("[\udc80-\udcff]")  # bytes kept by errors="surrogateescape"
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_JSON_KINDS = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


@dataclass(frozen=True)
class RawRecord:
    line: int  # 1-based line where the record starts (row number for parquet)
    position: int  # unique and increasing within the file: line, parquet row, or JSON element ordinal
    fields: dict | None  # exactly one of fields and error is set
    error: str | None
    raw: str  # the record's text, at most 300 characters, for the quarantine file


def read_chunk(chunk: FileChunk, *, csv_delimiter: str | None = None) -> Iterator[RawRecord]:
    """The chunk's records in file order; unreadable records come back with `error` set, never raised.

    Text is read a record per line or per paragraph, as the survey resolved the chunk's text_unit.
    """
    check_choice("format", chunk.format, READ_FORMATS)
    if chunk.format == "text":
        return _read_paragraphs(chunk) if chunk.text_unit == "paragraph" else _read_lines(chunk)
    if chunk.format == "csv":
        return _read_csv(chunk, csv_delimiter or ("\t" if chunk.path.lower().endswith(".tsv") else ","))
    readers = {"jsonl": _read_lines, "json": _read_json_array, "json_objects": _read_json_objects,
               "parquet": _read_parquet}
    return readers[chunk.format](chunk)


def _read_lines(chunk: FileChunk) -> Iterator[RawRecord]:
    """Text (line unit) and JSONL: one record per non-blank line."""
    for number, raw in _chunk_lines(chunk):
        text = decode(raw, chunk.encoding)
        if text is None:
            yield _undecodable(number, raw, chunk.encoding)
        elif text.strip() and chunk.format == "text":
            yield _record(number, {"text": _normalise_newlines(text)}, text)
        elif text.strip():
            yield _json_line_record(number, text)


def _read_paragraphs(chunk: FileChunk) -> Iterator[RawRecord]:
    lines: list[tuple[int, bytes, str | None]] = []  # the paragraph so far: (number, raw, text)
    for number, raw in _chunk_lines(chunk):
        text = decode(raw, chunk.encoding)
        if text is None or text.strip():
            lines.append((number, raw, text))
        elif lines:
            yield _paragraph_record(lines, chunk.encoding)
            lines = []
    if lines:
        yield _paragraph_record(lines, chunk.encoding)


def _paragraph_record(lines: list[tuple[int, bytes, str | None]], encoding: str) -> RawRecord:
    first = lines[0][0]
    bad = [number for number, _, text in lines if text is None]
    if bad:
        return _undecodable(first, b"\n".join(raw for _, raw, _ in lines), encoding, f" (line {bad[0]})")
    text = "\n".join(text for _, _, text in lines)
    return _record(first, {"text": _normalise_newlines(text)}, text)


def _json_line_record(number: int, text: str) -> RawRecord:
    try:
        return _object_record(number, json.loads(text), text)
    except json.JSONDecodeError as error:
        return _error(number, f"invalid JSON: {error.msg} (column {error.colno})", text)


def _read_json_array(chunk: FileChunk) -> Iterator[RawRecord]:
    return _read_json_values(chunk, _array_elements, "JSON array")


def _read_json_objects(chunk: FileChunk) -> Iterator[RawRecord]:
    """JSON objects back to back, each maybe over many lines, with whitespace or a comma between them."""
    return _read_json_values(chunk, _stream_values, "JSON object stream")


def _read_json_values(
    chunk: FileChunk, values: Callable[[str], Iterator[tuple[int, int, Any]]], kind: str
) -> Iterator[RawRecord]:
    """A record per value of the whole file; a malformed value ends the file with one error record."""
    with open_binary(chunk.path) as f:
        # surrogateescape keeps bad bytes in place, so one bad value does not spoil the whole file.
        text = f.read().decode(chunk.encoding, "surrogateescape")
    line, counted_to, ordinal = 1, 0, 0
    try:
        for ordinal, (start, end, value) in enumerate(values(text), 1):
            line += text.count("\n", counted_to, start)
            counted_to = start
            raw = _UNDECODED.sub("\ufffd", text[start:min(end, start + _RAW_CHARS)])
            if _UNDECODED.search(text, start, end):
                yield _error(line, f"undecodable bytes as {chunk.encoding}", raw, ordinal)
            else:
                yield _object_record(line, value, raw, ordinal)
    except json.JSONDecodeError as error:
        line_start, line_end = text.rfind("\n", 0, error.pos) + 1, text.find("\n", error.pos)
        raw = _UNDECODED.sub("\ufffd", text[line_start:line_end if line_end >= 0 else None].rstrip("\r"))
        where = f"line {error.lineno}, column {error.colno}"
        message = f"invalid {kind}: {error.msg} ({where}); rest of file skipped"
        yield _error(error.lineno, message, raw, ordinal + 1)


def _stream_values(text: str) -> Iterator[tuple[int, int, Any]]:
    """(start, end, value) of each JSON value in `text`; JSONDecodeError where one is malformed."""
    decode = json.JSONDecoder().raw_decode
    pos = _JSON_SPACE.match(text).end()
    while pos < len(text):
        value, end = decode(text, pos)
        yield pos, end, value
        pos = _JSON_SPACE.match(text, end).end()
        if text.startswith(",", pos):
            pos = _JSON_SPACE.match(text, pos + 1).end()


def _array_elements(text: str) -> Iterator[tuple[int, int, Any]]:
    """(start, end, value) of each element of the JSON array `text`; JSONDecodeError where it is malformed."""
    decode = json.JSONDecoder().raw_decode
    pos = _JSON_SPACE.match(text).end()
    if not text.startswith("[", pos):
        raise json.JSONDecodeError("Expecting '[' (a JSON array)", text, pos)
    pos = _JSON_SPACE.match(text, pos + 1).end()
    if not text.startswith("]", pos):
        while True:
            value, end = decode(text, pos)
            yield pos, end, value
            pos = _JSON_SPACE.match(text, end).end()
            if not text.startswith(",", pos):
                break
            pos = _JSON_SPACE.match(text, pos + 1).end()
        if not text.startswith("]", pos):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
    pos = _JSON_SPACE.match(text, pos + 1).end()
    if pos < len(text):
        raise json.JSONDecodeError("Extra data", text, pos)


def _read_csv(chunk: FileChunk, delimiter: str) -> Iterator[RawRecord]:
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    with open_binary(chunk.path) as f:
        row_lines: list[str] = []  # physical lines of the row being parsed: its raw text

        def lines() -> Iterator[str]:
            # Split on "\n" only, as the surveys count lines; csv itself handles the "\r" of CRLF.
            for raw in f:
                row_lines.append(raw.decode(chunk.encoding, "surrogateescape"))
                yield row_lines[-1]

        reader = csv.reader(lines(), delimiter=delimiter)
        header = [name.strip() for name in next(reader, [])]
        if not header:
            return
        while True:
            line = reader.line_num + 1
            row_lines.clear()
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                row = error
            raw = "".join(row_lines)
            if raw.strip():
                yield _csv_record(line, header, row, raw, chunk.encoding)


def _csv_record(
    line: int, header: list[str], row: list[str] | csv.Error, raw: str, encoding: str
) -> RawRecord:
    shown = _UNDECODED.sub("\ufffd", raw.rstrip("\r\n"))
    if isinstance(row, csv.Error):
        return _error(line, f"unreadable CSV row: {row}", shown)
    if _UNDECODED.search(raw):
        return _error(line, f"undecodable bytes as {encoding}", shown)
    if len(row) != len(header):
        return _error(line, f"expected {len(header)} CSV fields ({','.join(header)}), got {len(row)}", shown)
    return _record(
        line, {name: _normalise_newlines(value) for name, value in zip(header, row, strict=True)}, shown
    )


def _read_parquet(chunk: FileChunk) -> Iterator[RawRecord]:
    row = chunk.first_line
    for batch in parquet_file(chunk.path).iter_batches(row_groups=range(chunk.start, chunk.end)):
        for fields in batch.to_pylist():
            raw = json.dumps(fields, ensure_ascii=False, default=str)
            yield _record(row, _normalise_newlines(fields), raw)
            row += 1


def _chunk_lines(chunk: FileChunk) -> Iterator[tuple[int, bytes]]:
    """(line number, line without its line ending) for each line in the chunk's byte range."""
    with open_binary(chunk.path) as f:
        f.seek(chunk.start)
        pos, number = chunk.start, chunk.first_line
        for raw in f:
            if pos >= chunk.end:
                return
            pos += len(raw)
            raw = raw[:-1] if raw.endswith(b"\n") else raw
            yield number, raw[:-1] if raw.endswith(b"\r") else raw
            number += 1


def _undecodable(number: int, raw: bytes, encoding: str, where: str = "") -> RawRecord:
    shown = raw[: 4 * _RAW_CHARS].decode(encoding, "replace")  # <= 4 bytes a character: still 300 shown
    return _error(number, f"undecodable bytes as {encoding}{where}", shown)


def _normalise_newlines(value: Any) -> Any:
    """`value` with CRLF and lone CR turned into "\\n" in every string it holds."""
    if isinstance(value, str):
        return value.replace("\r\n", "\n").replace("\r", "\n") if "\r" in value else value
    if isinstance(value, dict):
        return {key: _normalise_newlines(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_normalise_newlines(item) for item in value]
    return value


def _object_record(line: int, value: Any, raw: str, position: int | None = None) -> RawRecord:
    if not isinstance(value, dict):
        return _error(
            line, f"JSON value is {_JSON_KINDS.get(type(value), 'null')}, not an object", raw, position
        )
    return _record(line, _normalise_newlines(value), raw, position)


def _record(line: int, fields: dict, raw: str, position: int | None = None) -> RawRecord:
    """A readable record; its position is its line unless given (several records may share a line)."""
    return RawRecord(line=line, position=position or line, fields=fields, error=None, raw=raw[:_RAW_CHARS])


def _error(line: int, error: str, raw: str, position: int | None = None) -> RawRecord:
    return RawRecord(line=line, position=position or line, fields=None, error=error, raw=raw[:_RAW_CHARS])


