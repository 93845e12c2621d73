"""What a stage's output was made from, so `lmforge pipeline` can skip a stage whose output is up to date.

A finished stage leaves `manifest.json` in its output directory; the pipeline writes `fingerprint.json`
beside it (stage code stays untouched):

    fingerprint = sha256(stage, resolved config, {input path: input fingerprint})
    input fingerprint:  a directory with manifest.json (another stage's output) -> sha256 of that manifest,
                        so an upstream stage that reran (new created_at) makes every downstream stage rerun;
                        any other directory -> sha256 of its file listing (names, sizes, mtimes);
                        a file -> size and mtime (as make does; hashing terabytes of corpora would not pay)

Inputs are found in the resolved config itself: every string that names an existing file or directory, or
a glob matching files, other than the stage's own output directory and its parents (a training run's
storage_path). So a stage added to `lmforge.stages.STAGES` is fingerprinted without being listed here.
Remote URIs (s3://...) are not fingerprinted.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from lmforge.manifest import MANIFEST_NAME

FINGERPRINT_NAME = "fingerprint.json"


def config_sha256(config: dict) -> str:
    """Hash of a resolved config (`model_dump(mode="json")`): the same settings give the same hash."""
    return _sha256_json(config)


def fingerprint(stage: str, cfg: BaseModel, out: Path | None) -> dict:
    """The stage name, its config hash, its inputs' fingerprints (all but `out`, the stage's output dir),
    and one hash over all of them."""
    config = cfg.model_dump(mode="json")
    inputs = {str(path): input_fingerprint(path) for path in sorted(input_paths(config, out))}
    combined = {"stage": stage, "config_sha256": config_sha256(config), "inputs": inputs}
    return {**combined, "fingerprint": _sha256_json(combined)}


def input_paths(config: Any, output: Path | None) -> set[Path]:
    """Existing files and directories named by strings in `config`, except `output` and its parents."""
    excluded = {output, *output.parents} if output else set()
    found = set()
    for text in _strings(config):
        for path in _existing_paths(text):
            if path not in excluded and not (output and path.is_relative_to(output)):
                found.add(path)
    return found


def input_fingerprint(path: Path) -> dict:
    if path.is_file():
        stat = path.stat()
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    manifest = path / MANIFEST_NAME
    if manifest.is_file():
        return {"manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest()}
    listing = [(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
               for p in sorted(path.rglob("*")) if p.is_file()]
    return {"files": len(listing), "listing_sha256": _sha256_json(listing)}


def write_fingerprint(directory: Path, print_: dict) -> Path:
    """Record `print_` beside the stage's manifest.json, with the manifest's hash (it must be that run's)."""
    stamp = {**print_, "manifest_sha256": _file_sha256(directory / MANIFEST_NAME)}
    path = directory / FINGERPRINT_NAME
    path.write_text(json.dumps(stamp, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


def why_stale(directory: Path | None, current: dict) -> str | None:
    """None when `directory` holds a finished output made from `current`; else why the stage must run."""
    if directory is None:
        return "always runs"
    manifest, stamp_path = directory / MANIFEST_NAME, directory / FINGERPRINT_NAME
    if not manifest.is_file():
        return "no output yet"
    if not stamp_path.is_file():
        return "output not made by a pipeline"
    stamp = json.loads(stamp_path.read_text(encoding="utf-8"))
    if stamp.get("manifest_sha256") != _file_sha256(manifest):
        return "output rewritten since"
    if stamp.get("fingerprint") == current["fingerprint"]:
        return None
    if stamp.get("stage") != current["stage"] or stamp.get("config_sha256") != current["config_sha256"]:
        return "config changed"
    old, new = stamp.get("inputs", {}), current["inputs"]
    changed = sorted(set(old) ^ set(new)) or sorted(p for p in new if old[p] != new[p])
    if not changed:
        return "fingerprint changed"
    return f"input changed: {changed[0]}" + (f" (+{len(changed) - 1} more)" if len(changed) > 1 else "")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _existing_paths(text: str) -> list[Path]:
    # chat templates, format strings and URIs are not paths; a name too long for the OS raises OSError
    if not text or "\n" in text or "://" in text or len(text) > 4096:
        return []
    try:
        if glob.has_magic(text):
            return [Path(p).resolve() for p in glob.glob(text, recursive=True) if os.path.isfile(p)]
        path = Path(text)
        return [path.resolve()] if path.exists() else []
    except OSError:
        return []


def _file_sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()
