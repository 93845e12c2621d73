"""Survey an input file once, before it is read: size, sha256, encoding, format and chunk boundaries.

    survey = survey_file(path)    # one streaming pass over the file
    survey.chunks                 # FileChunk(path, format, encoding, start, end, first_line, text_unit)

The file's first block decides, before any chunk is cut, what the extension cannot: JSON array,
JSON Lines or JSON objects back to back; JSON Lines in a .txt file; a document per line or per
blank-line-separated paragraph (`lmforge.data.files.shape`). Chunks of text and JSONL files start at
record boundaries, so reading a file as many chunks gives exactly the records of reading it as one.
A file that cannot be read at all raises `UnreadableFile`. Turning a chunk into records is
`lmforge.data.files.records`.
"""

from __future__ import annotations

import codecs
import hashlib
import itertools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from lmforge.data.files.shape import detect_shape

FORMATS = ("text", "jsonl", "json", "parquet", "csv")  # what a config may name
READ_FORMATS = (*FORMATS, "json_objects")  # what a survey may resolve a file to
TEXT_UNITS = ("line", "paragraph")

_EXTENSION_FORMATS = {
    ".txt": "text", ".text": "text", ".md": "text",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
    ".parquet": "parquet", ".csv": "csv", ".tsv": "csv",
}
_READ_BYTES = 1024**2
_DECODE_WINDOW = 4096
# A chunk may start after any newline (line unit), or after a blank line (paragraph unit).
_CHUNK_BOUNDARY = {"line": re.compile(rb"\n"), "paragraph": re.compile(rb"(?m)^[ \t\r\f\v]*\n")}


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
    text_unit: str | None = None  # text files: "line" or "paragraph", a record per each


@dataclass(frozen=True)
class FileSurvey:
    path: str
    size: int
    sha256: str
    encoding: str
    format: str  # resolved, one of READ_FORMATS: a .json file that is not an array is "jsonl", ...
    chunks: tuple[FileChunk, ...]
    text_unit: str | None = None  # text files: resolved "line" or "paragraph"
    detected: str | None = None  # what the content decided, in words (for the manifest); see file_shape


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
    with open_binary(path) as f:
        for offset, block in _whole_line_blocks(f):
            vote.add(offset, block)
    return vote.decide(path)


def survey_file(
    path: str, format: str | None = None, *, encoding: str | None = None,
    chunk_bytes: int = 64 * 1024**2, text_unit: str = "auto",
) -> FileSurvey:
    """Size, sha256, encoding, resolved format and text unit, and chunks of one file, from a single read.

    Text and JSONL files are cut near every `chunk_bytes` at a record boundary (a blank line for
    paragraphs); JSON and CSV are one chunk; parquet is one chunk per row group. `text_unit` "auto"
    lets the first block decide (file_shape.text_unit_of). Raises UnreadableFile if it cannot be read.
    """
    path = os.fspath(path)
    named = format or infer_format(path)
    check_choice("format", named, FORMATS)
    check_choice("text_unit", text_unit, (*TEXT_UNITS, "auto"))
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    sha, size = hashlib.sha256(), 0
    vote = _EncodingVote() if encoding is None and named != "parquet" else None
    with open_binary(path) as f:
        blocks = _whole_line_blocks(f)
        first = next(blocks, (0, b""))
        # Decided before any cut: paragraph chunks may only start after a blank line.
        shape = detect_shape(
            first[1], named, from_extension=format is None, text_unit=text_unit, encoding=encoding
        )
        cutter = _ChunkCutter(chunk_bytes, _CHUNK_BOUNDARY[shape.text_unit or "line"])
        for offset, block in itertools.chain([first], blocks):
            sha.update(block)
            size = offset + len(block)
            if vote:
                vote.add(offset, block)
            if shape.format in ("text", "jsonl"):
                cutter.add(offset, block)
    encoding = encoding or (vote.decide(path) if vote else "utf-8")  # parquet strings are always UTF-8
    if shape.format == "parquet":
        chunks = _parquet_chunks(path)
    elif shape.format in ("text", "jsonl"):
        chunks = cutter.chunks(path, shape.format, encoding, size, shape.text_unit)
    else:
        chunks = (FileChunk(path, shape.format, encoding, 0, size, 1),)
    return FileSurvey(
        path, size, sha.hexdigest(), encoding, shape.format, chunks, shape.text_unit, shape.detected
    )


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
        if decode(block, "utf-8") is not None:
            self.unsure["gb18030"].append((offset, len(block)))
        elif decode(block, "gb18030") is not None:
            self.unsure["utf-8"].append((offset, len(block)))
        else:
            for encoding in self.bad:
                self.bad[encoding] += _count_bad_lines(block, encoding)

    def decide(self, path: str) -> str:
        if self.bom:
            return "utf-8-sig"
        with open_binary(path) as f:
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

    def chunks(
        self, path: str, format: str, encoding: str, size: int, text_unit: str | None
    ) -> tuple[FileChunk, ...]:
        starts = [self.starts[0]] + [start for start in self.starts[1:] if start[0] < size]
        ends = [offset for offset, _ in starts[1:]] + [size]
        return tuple(
            FileChunk(path, format, encoding, start, end, line, text_unit)
            for (start, line), end in zip(starts, ends, strict=True)
        )


def _parquet_chunks(path: str) -> tuple[FileChunk, ...]:
    metadata = parquet_file(path).metadata
    rows = [metadata.row_group(group).num_rows for group in range(metadata.num_row_groups)]
    # accumulate yields one more: the line after the last group
    groups = zip(range(len(rows)), itertools.accumulate(rows, initial=1), strict=False)
    return tuple(FileChunk(path, "parquet", "utf-8", group, group + 1, first) for group, first in groups)


# --- also used by records.py --------------------------------------------------------------------------


def decode(raw: bytes, encoding: str) -> str | None:
    """`raw` decoded as `encoding`, or None if it does not decode."""
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError:
        return None


def open_binary(path: str) -> BinaryIO:
    """`path` opened for binary reading; UnreadableFile if it cannot be opened."""
    try:
        return open(path, "rb")
    except OSError as error:
        raise UnreadableFile(f"cannot read {path}: {error.strerror or error}") from error


def parquet_file(path: str) -> pq.ParquetFile:
    """`path` opened as parquet; UnreadableFile if it is missing or not parquet."""
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as error:
        raise UnreadableFile(f"cannot read {path} as parquet: {error}") from error


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """ValueError naming `name` and the choices if `value` is not one of `choices`."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
