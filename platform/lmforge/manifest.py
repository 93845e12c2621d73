"""`manifest.json`: what a stage read, with which config and versions, and what it wrote.

The next stage reads it to check what it consumes; a human reads it to see what happened.
"""

from __future__ import annotations

import datetime
import json
import platform as stdlib_platform
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

MANIFEST_NAME = "manifest.json"
_VERSIONED = ("lmforge", "ray", "transformers", "tokenizers", "torch", "deepspeed", "pyarrow", "numpy")


class Manifest(BaseModel):
    stage: str
    config: dict[str, Any]
    inputs: list[dict[str, Any]] = Field(default_factory=list)
    outputs: dict[str, Any] = Field(default_factory=dict)
    counts: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=lambda: package_versions())
    created_at: str = Field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat())

    def write(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST_NAME
        path.write_text(json.dumps(self.model_dump(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, directory: str | Path) -> Manifest:
        path = Path(directory) / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no manifest; run the stage that produces {directory} first")
        return cls.model_validate_json(path.read_text(encoding="utf-8"))


def package_versions() -> dict[str, str]:
    versions = {"python": stdlib_platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions
