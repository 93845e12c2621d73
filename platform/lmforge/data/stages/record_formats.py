"""Which record schema each input file holds: detected from its first readable record, or the config's
`record_format:`, checked against that record before any reading starts.

    files = resolve_record_formats(files, surveys, SFT_SCHEMAS)   # a Ray task per file; ConfigError naming
                                                                   # the source, file, line and field
A stage brings its schemas (prepare-sft: conversations; prepare-preference: pairs); the config's
`record_format` of each returned file is the one it holds, never `auto`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray

from lmforge.config import ConfigError
from lmforge.data.files.records import read_chunk
from lmforge.data.files.sources import SourceFile
from lmforge.data.text.templates import RecordError


@dataclass(frozen=True)
class RecordSchemas:
    """A stage's record schemas: how a record's schema is told, and how a record is read under one."""

    detect: Callable[[dict], str | None]  # one record -> its schema, or None
    detect_file: Callable[[str, dict | None], str]  # (path, first record) -> schema; ValueError names path
    parse: Callable[[dict, Any], Any]  # (fields, source config) -> the parsed record; RecordError if unfit


def resolve_record_formats(files: list[SourceFile], surveys: list,
                           schemas: RecordSchemas) -> list[SourceFile]:
    """Each file with its record schema: detected from its first readable record,
    or the config's, checked against it.

    ConfigError (naming the source, file, line and field) when no schema fits or the configured one does not.
    """
    check = ray.remote(num_cpus=1)(_file_record_format)
    pending = {i: check.remote(f, s, schemas) for i, (f, s) in enumerate(zip(files, surveys, strict=True))
               if not isinstance(s, str)}
    # Failures come back as values: a raised error would reach the user as a Ray task traceback.
    found = dict(zip(pending, ray.get(list(pending.values())), strict=True))
    errors = [error for _, error in found.values() if error]
    if errors:
        raise ConfigError("\n".join(errors))
    return [SourceFile(f.file_index, f.source.model_copy(update={"record_format": found[i][0]}), f.path)
            if i in found else f for i, f in enumerate(files)]


def _file_record_format(file: SourceFile, survey, schemas: RecordSchemas) -> tuple[str, str | None]:
    """(record format, None), or (the configured format, why it does not fit the file's first record)."""
    source = file.source
    where = f"sources.{source.name}"
    first = next((r for chunk in survey.chunks for r in read_chunk(chunk) if r.fields is not None), None)
    if source.record_format == "auto":
        try:
            return schemas.detect_file(file.path, first.fields if first else None), None
        except ValueError as error:
            return "auto", f"{where}: {error}"
    if first is None:
        return source.record_format, None  # nothing readable: every record is quarantined with its reason
    try:
        schemas.parse(first.fields, source)
    except RecordError as error:
        guess = schemas.detect(first.fields)
        hint = f" (the record looks like {guess})" if guess and guess != source.record_format else ""
        return source.record_format, (
            f"{where}: record_format {source.record_format} does not fit {file.path} line {first.line}: "
            f"{error}{hint}; fix record_format: or map the names with fields:"
        )
    return source.record_format, None
