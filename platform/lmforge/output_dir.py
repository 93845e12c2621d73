"""A stage's output directory appears only when the stage succeeds.

    with staged_output_dir(cfg.output_dir) as work:   # work: an empty sibling directory
        ... write shards, reports, manifest.json into work ...
    # success: the old output (if any) is replaced by work; failure: work is removed, the old output stays

So a failed or interrupted run never leaves a directory that looks like a result, and the next
stage (or `lmforge pipeline`) never reads half-written shards.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lmforge.config import ConfigError
from lmforge.manifest import MANIFEST_NAME


@contextmanager
def staged_output_dir(path: str | Path) -> Iterator[Path]:
    """An empty work directory beside `path`, renamed to `path` when the block finishes without error."""
    final = Path(path)
    _check_replaceable(final)
    # A sibling, so the final rename stays on one file system (atomic on POSIX, shared storage included).
    work = final.with_name(f".{final.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    work.rename(final)


def _check_replaceable(final: Path) -> None:
    """ConfigError, before any work, if `final` holds something other than an earlier result of a stage."""
    if final.exists() and not final.is_dir():
        raise ConfigError(f"output_dir {final} is a file; give a directory")
    if final.is_dir() and any(final.iterdir()) and not (final / MANIFEST_NAME).is_file():
        raise ConfigError(
            f"output_dir {final} is not empty and holds no {MANIFEST_NAME} (not an lmforge output): "
            "it would be replaced; choose a new directory or empty it"
        )
