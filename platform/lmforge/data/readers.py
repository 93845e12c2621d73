"""Turn input files into raw records, one chunk at a time, with exact line numbers.

Two steps, so that big files can be read in parallel:

    survey = survey_file(path)             # one streaming pass: size, sha256, encoding, chunk boundaries
    for chunk in survey.chunks:            # each chunk can go to a different worker
        for record in read_chunk(chunk):   # RawRecord(line, fields) or RawRecord(line, error=...)
            ...

A record that cannot be read never stops the run: it comes back with `error` set (and its raw text),
and the caller quarantines it. Only a file that cannot be read at all raises `UnreadableFile`.
Chunks of text and JSONL files start at record boundaries, so reading a file as many chunks gives
exactly the records of reading it as one.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import itertools
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

FORMATS = ("text", "jsonl", "json", "parquet", "csv")
TEXT_UNITS = ("line", "paragraph")

_EXTENSION_FORMATS = {
    ".txt": "text", ".text": "text", ".md": "text",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
    ".parquet": "parquet", ".csv": "csv", ".tsv": "csv",
}
_READ_BYTES = 1024**2
_DECODE_WINDOW = 4096
_RAW_CHARS = 300
_CSV_FIELD_LIMIT = 256 * 1024**2  # the csv module's default (128 KiB) is smaller than some real answers
# A chunk may start after any newline (line unit), or after a blank line (paragraph unit).
_CHUNK_BOUNDARY = {"line": re.compile(rb"\n"), "paragraph": re.compile(rb"(?m)^[ \t\r\f\v]*\n")}
_UNDECODED = re.compile("[\udc80-\udcff]")  # bytes kept by errors="surrogateescape"
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_JSON_KINDS = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


class UnreadableFile(Exception):
    """The file cannot be read at all (missing, no permission, corrupt parquet); says which file and why."""


@dataclass(frozen=True)
class FileChunk:
    path: str
    format: str  # one of FORMATS
    encoding: str
    start: int  # byte offset (text, jsonl) | row-group index (parquet) | 0 (json array, csv)
    end: int  # exclusive byte offset | row-group index + 1 | file size
    first_line: int  # 1-based line number of the chunk's first line (row number for parquet)


@dataclass(frozen=True)
class FileSurvey:
    path: str
    size: int
    sha256: str
    encoding: str
    format: str  # resolved: a .json file that is not an array is "jsonl"
    chunks: tuple[FileChunk, ...]


@dataclass(frozen=True)
class RawRecord:
    line: int  # 1-based line where the record starts (row number for parquet)
    fields: dict | None  # exactly one of fields and error is set
    error: str | None
    raw: str  # the record's text, at most 300 characters, for the quarantine file


def infer_format(path: str) -> str:
    """The format named by the file's extension; ValueError if the extension is not one we read."""
    extension = os.path.splitext(os.fspath(path))[1].lower()
    if extension not in _EXTENSION_FORMATS:
        choices = ", ".join(FORMATS)
        raise ValueError(f"{path}: unknown extension {extension!r}; set format: explicitly ({choices})")
    return _EXTENSION_FORMATS[extension]


def detect_encoding(path: str) -> str:
    """"utf-8-sig" (BOM), "utf-8", or "gb18030" if that leaves fewer undecodable lines; streams the file."""
    vote = _EncodingVote()
    with _open_binary(path) as f:
        for offset, block in _whole_line_blocks(f):
            vote.add(offset, block)
    return vote.decide(path)


def survey_file(
    path: str, format: str | None = None, *, encoding: str | None = None,
    chunk_bytes: int = 64 * 1024**2, text_unit: str = "line",
) -> FileSurvey:
    """Size, sha256, encoding and chunks of one file, from a single streaming read.

    Text and JSONL files are cut near every `chunk_bytes` at a record boundary (`text_unit` must
    match the one later given to read_chunk); JSON arrays and CSV are one chunk; parquet is one
    chunk per row group. Raises UnreadableFile if the file cannot be read.
    """
    path = os.fspath(path)
    format = format or infer_format(path)
    _check_choice("format", format, FORMATS)
    _check_choice("text_unit", text_unit, TEXT_UNITS)
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    sha, size, first_byte = hashlib.sha256(), 0, b""
    vote = _EncodingVote() if encoding is None and format != "parquet" else None
    cutter = _ChunkCutter(chunk_bytes, _CHUNK_BOUNDARY[text_unit if format == "text" else "line"])
    with _open_binary(path) as f:
        for offset, block in _whole_line_blocks(f):
            sha.update(block)
            size = offset + len(block)
            if vote:
                vote.add(offset, block)
            if format in ("text", "jsonl", "json"):
                cutter.add(offset, block)
                first_byte = first_byte or block.removeprefix(codecs.BOM_UTF8).lstrip()[:1]
    if format == "json" and first_byte != b"[":
        format = "jsonl"
    encoding = encoding or (vote.decide(path) if vote else "utf-8")  # parquet strings are always UTF-8
    if format == "parquet":
        chunks = _parquet_chunks(path)
    elif format in ("text", "jsonl"):
        chunks = cutter.chunks(path, format, encoding, size)
    else:
        chunks = (FileChunk(path, format, encoding, 0, size, 1),)
    return FileSurvey(path, size, sha.hexdigest(), encoding, format, chunks)


def read_chunk(
    chunk: FileChunk, *, text_unit: str = "line", csv_delimiter: str | None = None
) -> Iterator[RawRecord]:
    """The chunk's records in file order; unreadable records come back with `error` set, never raised."""
    _check_choice("text_unit", text_unit, TEXT_UNITS)
    _check_choice("format", chunk.format, FORMATS)
    if chunk.format == "text":
        return _read_paragraphs(chunk) if text_unit == "paragraph" else _read_lines(chunk)
    if chunk.format == "csv":
        return _read_csv(chunk, csv_delimiter or ("\t" if chunk.path.lower().endswith(".tsv") else ","))
    readers = {"jsonl": _read_lines, "json": _read_json_array, "parquet": _read_parquet}
    return readers[chunk.format](chunk)


# --- surveying ---------------------------------------------------------------------------------------


def _whole_line_blocks(f: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(offset, block) covering the file in ~1 MiB blocks that end after a newline, so no line spans two."""
    offset, pending = 0, []
    while data := f.read(_READ_BYTES):
        cut = data.rfind(b"\n") + 1
        if not cut:
            pending.append(data)  # a list, not +=, so a very long line is not copied again and again
            continue
        block = b"".join([*pending, data[:cut]])
        yield offset, block
        offset += len(block)
        pending = [data[cut:]]
    if tail := b"".join(pending):
        yield offset, tail


def _count_bad_lines(block: bytes, encoding: str) -> int:
    """How many lines of `block` do not decode: decodes a few KiB at a time, jumping past each bad line."""
    view, pos, bad = memoryview(block), 0, 0
    while pos < len(block):
        # Small windows because a decode error copies all the bytes it was given.
        end = block.find(b"\n", pos + _DECODE_WINDOW) + 1 or len(block)
        try:
            str(view[pos:end], encoding)
            pos = end
        except UnicodeDecodeError as error:
            bad += 1
            pos = block.find(b"\n", pos + error.start) + 1 or len(block)
    return bad


class _EncodingVote:
    """Picks UTF-8 or GB18030 for a file by counting the lines each cannot decode, block by block.

    Counting bad lines one by one is slow, so a block that decodes whole in one encoding counts 0 for
    it and is set aside; `decide` re-reads set-aside blocks only while they could change the answer.
    """

    def __init__(self) -> None:
        self.bom = False
        self.bad = {"utf-8": 0, "gb18030": 0}  # lower bounds while `unsure` holds blocks
        self.unsure: dict[str, list[tuple[int, int]]] = {"utf-8": [], "gb18030": []}  # (offset, length)

    def add(self, offset: int, block: bytes) -> None:
        if offset == 0:
            self.bom = block.startswith(codecs.BOM_UTF8)
        if self.bom or block.isascii():
            return
        if _decode(block, "utf-8") is not None:
            self.unsure["gb18030"].append((offset, len(block)))
        elif _decode(block, "gb18030") is not None:
            self.unsure["utf-8"].append((offset, len(block)))
        else:
            for encoding in self.bad:
                self.bad[encoding] += _count_bad_lines(block, encoding)

    def decide(self, path: str) -> str:
        if self.bom:
            return "utf-8-sig"
        with _open_binary(path) as f:
            while True:
                # The leader (fewer bad lines, UTF-8 on a tie) wins once its own count is exact.
                leader = "gb18030" if self.bad["gb18030"] < self.bad["utf-8"] else "utf-8"
                if not self.unsure[leader]:
                    return leader
                offset, length = self.unsure[leader].pop()
                f.seek(offset)
                self.bad[leader] += _count_bad_lines(f.read(length), leader)


class _ChunkCutter:
    """Chunk starts: the first record boundary at or after every `chunk_bytes`, with its line number."""

    def __init__(self, chunk_bytes: int, boundary: re.Pattern[bytes]) -> None:
        self.chunk_bytes, self.boundary = chunk_bytes, boundary
        self.starts = [(0, 1)]  # (byte offset, line number)
        self.next_cut = chunk_bytes
        self.lines_before = 0

    def add(self, offset: int, block: bytes) -> None:
        # Blocks hold whole lines and a boundary is one whole line, so the cuts do not depend on block size.
        while self.next_cut < offset + len(block):
            match = self.boundary.search(block, max(self.next_cut - offset, 0))
            if not match:
                break
            line = self.lines_before + block.count(b"\n", 0, match.end()) + 1
            self.starts.append((offset + match.end(), line))
            self.next_cut = offset + match.end() + self.chunk_bytes
        self.lines_before += block.count(b"\n")

    def chunks(self, path: str, format: str, encoding: str, size: int) -> tuple[FileChunk, ...]:
        starts = [self.starts[0]] + [start for start in self.starts[1:] if start[0] < size]
        ends = [offset for offset, _ in starts[1:]] + [size]
        return tuple(
            FileChunk(path, format, encoding, start, end, line) for (start, line), end in zip(starts, ends)
        )


def _parquet_chunks(path: str) -> tuple[FileChunk, ...]:
    metadata = _parquet_file(path).metadata
    rows = [metadata.row_group(group).num_rows for group in range(metadata.num_row_groups)]
    groups = zip(range(len(rows)), itertools.accumulate(rows, initial=1))
    return tuple(FileChunk(path, "parquet", "utf-8", group, group + 1, first) for group, first in groups)


# --- reading -----------------------------------------------------------------------------------------


def _read_lines(chunk: FileChunk) -> Iterator[RawRecord]:
    """Text (line unit) and JSONL: one record per non-blank line."""
    for number, raw in _chunk_lines(chunk):
        text = _decode(raw, chunk.encoding)
        if text is None:
            yield _undecodable(number, raw, chunk.encoding)
        elif text.strip() and chunk.format == "text":
            yield _record(number, {"text": _normalise_newlines(text)}, text)
        elif text.strip():
            yield _json_line_record(number, text)


def _read_paragraphs(chunk: FileChunk) -> Iterator[RawRecord]:
    lines: list[tuple[int, bytes, str | None]] = []  # the paragraph so far: (number, raw, text)
    for number, raw in _chunk_lines(chunk):
        text = _decode(raw, chunk.encoding)
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
    with _open_binary(chunk.path) as f:
        # surrogateescape keeps bad bytes in place, so one bad element does not spoil the whole array.
        text = f.read().decode(chunk.encoding, "surrogateescape")
    line, counted_to = 1, 0
    try:
        for start, end, value in _array_elements(text):
            line += text.count("\n", counted_to, start)
            counted_to = start
            raw = _UNDECODED.sub("\ufffd", text[start:min(end, start + _RAW_CHARS)])
            if _UNDECODED.search(text, start, end):
                yield _error(line, f"undecodable bytes as {chunk.encoding}", raw)
            else:
                yield _object_record(line, value, raw)
    except json.JSONDecodeError as error:
        line_start, line_end = text.rfind("\n", 0, error.pos) + 1, text.find("\n", error.pos)
        raw = _UNDECODED.sub("\ufffd", text[line_start:line_end if line_end >= 0 else None].rstrip("\r"))
        where = f"line {error.lineno}, column {error.colno}"
        yield _error(error.lineno, f"invalid JSON array: {error.msg} ({where}); rest of file skipped", raw)


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
    with _open_binary(chunk.path) as f:
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
    return _record(line, {name: _normalise_newlines(value) for name, value in zip(header, row)}, shown)


def _read_parquet(chunk: FileChunk) -> Iterator[RawRecord]:
    row = chunk.first_line
    for batch in _parquet_file(chunk.path).iter_batches(row_groups=range(chunk.start, chunk.end)):
        for fields in batch.to_pylist():
            raw = json.dumps(fields, ensure_ascii=False, default=str)
            yield _record(row, _normalise_newlines(fields), raw)
            row += 1


def _chunk_lines(chunk: FileChunk) -> Iterator[tuple[int, bytes]]:
    """(line number, line without its line ending) for each line in the chunk's byte range."""
    with _open_binary(chunk.path) as f:
        f.seek(chunk.start)
        pos, number = chunk.start, chunk.first_line
        for raw in f:
            if pos >= chunk.end:
                return
            pos += len(raw)
            raw = raw[:-1] if raw.endswith(b"\n") else raw
            yield number, raw[:-1] if raw.endswith(b"\r") else raw
            number += 1


def _decode(raw: bytes, encoding: str) -> str | None:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError:
        return None


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


def _object_record(line: int, value: Any, raw: str) -> RawRecord:
    if not isinstance(value, dict):
        return _error(line, f"JSON value is {_JSON_KINDS.get(type(value), 'null')}, not an object", raw)
    return _record(line, _normalise_newlines(value), raw)


def _record(line: int, fields: dict, raw: str) -> RawRecord:
    return RawRecord(line=line, fields=fields, error=None, raw=raw[:_RAW_CHARS])


def _error(line: int, error: str, raw: str) -> RawRecord:
    return RawRecord(line=line, fields=None, error=error, raw=raw[:_RAW_CHARS])


def _open_binary(path: str) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as error:
        raise UnreadableFile(f"cannot read {path}: {error.strerror or error}") from error


def _parquet_file(path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as error:
        raise UnreadableFile(f"cannot read {path} as parquet: {error}") from error


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
