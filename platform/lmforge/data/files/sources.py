"""From the `sources:` of a config to records: expand globs, survey files, read chunks.

Every record gets a `key` that orders the whole corpus and says where it came from:
`file_index << 40 | position` (files numbered in config order, then path order; the position is
unique in the file: the line, the parquet row or the JSON element's ordinal). Dedup keeps the copy
with the smallest key, so which copy survives never depends on scheduling.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.config import ConfigError, RecordSourceConfig, SourceConfig
from lmforge.data.files.records import read_chunk
from lmforge.data.files.survey import FileChunk, FileSurvey, UnreadableFile, infer_format, survey_file
from lmforge.data.text.templates import RecordError, render_text

POSITION_BITS = 40
RAW_EXCERPT = 300
LOCAL_CHUNK_BYTES = 64 * 1024**2  # chunks read in this process (no workers to share them with)


@dataclass(frozen=True)
class SourceFile:
    file_index: int
    source: SourceConfig
    path: str


@dataclass(frozen=True)
class PlannedChunk:
    """One unit of reading work: a chunk of a file of a source, with its place in corpus order."""

    index: int
    file_index: int
    source: SourceConfig
    chunk: FileChunk


def record_key(file_index: int, position: int) -> int:
    if not 0 < position < 1 << POSITION_BITS:  # a wider position would spill into the file index
        raise ValueError(
            f"record position {position} of file {file_index} is outside 1..2**{POSITION_BITS}-1"
        )
    return (file_index << POSITION_BITS) | position


def key_file_index(key: int | np.ndarray) -> int | np.ndarray:
    """The index of the file a record key (or an array of keys) came from."""
    return key >> POSITION_BITS


def list_source_files(sources: list[SourceConfig]) -> list[SourceFile]:
    """Every input file in corpus order; a path or glob that matches nothing is a config error."""
    files = []
    for i, source in enumerate(sources):
        for pattern in source.path:
            matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
            matches = [m for m in matches if not Path(m).is_dir()]
            if not matches or not Path(matches[0]).exists():
                raise ConfigError(f"sources.{i}.path: '{pattern}' matches no file (source '{source.name}')")
            if source.format is None:
                for match in matches:
                    try:
                        infer_format(match)
                    except ValueError as error:
                        raise ConfigError(f"sources.{i}.path: {error}") from None
            first = len(files)  # not inside the generator: extend() grows the list while it runs
            files.extend(SourceFile(first + j, source, m) for j, m in enumerate(matches))
    return files


def survey_source_file(file: SourceFile, chunk_bytes: int) -> FileSurvey | str:
    """The file's survey, or the reason it cannot be read at all (it then goes to quarantine)."""
    try:
        return survey_file(
            file.path, file.source.format, encoding=file.source.encoding,
            chunk_bytes=chunk_bytes, text_unit=file.source.text_unit,
        )
    except UnreadableFile as exc:
        return str(exc)


def plan_chunks(files: list[SourceFile], surveys: list[FileSurvey | str]) -> list[PlannedChunk]:
    chunks = []
    for file, survey in zip(files, surveys, strict=True):
        if isinstance(survey, str):
            continue
        for chunk in survey.chunks:
            chunks.append(PlannedChunk(len(chunks), file.file_index, file.source, chunk))
    return chunks


def read_records(planned: PlannedChunk, convert: Callable[[dict, Any], str] = render_text) -> Iterator[dict]:
    """Rows of one chunk: `convert(fields, source)` as text, or status 'quarantined' with the reason.

    `convert` raises RecordError for a record it cannot use (pretraining renders text; SFT builds
    a conversation and stores its JSON).
    """
    source = planned.source
    for record in read_chunk(planned.chunk):  # text: the unit the survey resolved for the file
        row = {
            "key": record_key(planned.file_index, record.position),
            "chunk": planned.index,
            "source": source.name,
            "line": record.line,
            "text": None,
            "status": "ok",
            "reason": None,
            "raw": None,
        }
        error = record.error
        if error is None:
            try:
                row["text"] = convert(record.fields, source)
            except RecordError as exc:
                error = str(exc)
        if error is not None:
            row.update(status="quarantined", reason=error, raw=record.raw[:RAW_EXCERPT])
        yield row


def input_record(file: SourceFile, survey: FileSurvey | str) -> dict:
    """A manifest's entry for one input file: source, resolved path, then size, sha256, encoding, format
    and chunks, or `error` (why the file could not be read)."""
    record = {"source": file.source.name, "path": str(Path(file.path).resolve())}
    if isinstance(file.source, RecordSourceConfig):
        record["record_format"] = file.source.record_format  # as detected for this file
    if isinstance(survey, str):
        return record | {"error": survey}
    shape = {"text_unit": survey.text_unit} if survey.text_unit else {}
    if survey.detected:  # what the file's content decided, e.g. "JSON Lines in a text file"
        shape["detected"] = survey.detected
    return record | {"size": survey.size, "sha256": survey.sha256, "encoding": survey.encoding,
                     "format": survey.format, **shape, "chunks": len(survey.chunks)}


@dataclass(frozen=True)
class LocalSources:
    """The files of some sources, surveyed in this process
    (for small jobs: tokenizer training, eval texts)."""

    files: list[SourceFile]
    surveys: list[FileSurvey | str]  # a string: why the file could not be read at all

    @classmethod
    def survey(cls, sources: list[SourceConfig]) -> LocalSources:
        files = list_source_files(sources)
        return cls(files, [survey_source_file(f, LOCAL_CHUNK_BYTES) for f in files])

    def texts(self, limit: int | None = None) -> Iterator[str]:
        """Non-empty texts in corpus order, at most `limit`; unreadable files and records are skipped."""
        emitted = 0
        for planned in plan_chunks(self.files, self.surveys):
            for row in read_records(planned):
                if row["text"]:
                    yield row["text"]
                    emitted += 1
                    if limit is not None and emitted >= limit:
                        return

    def inputs(self) -> list[dict]:
        """The manifest's `inputs`: one input_record per file."""
        return [input_record(f, s) for f, s in zip(self.files, self.surveys, strict=True)]

    def unreadable(self) -> list[str]:
        return [s for s in self.surveys if isinstance(s, str)]

