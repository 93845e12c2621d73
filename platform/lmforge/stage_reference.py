"""The configuration reference, generated from the config models: every stage's settings with type,
default and meaning.

    python -m lmforge.stage_reference > docs/configuration.md

Stages come from `lmforge.stages.STAGES`, so a new stage appears by itself; tests/test_config_reference.py
fails while the committed file is out of date.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel

from lmforge.config.base import REQUIRED, _inner_model, _is_list, iter_fields
from lmforge.stages import STAGES

HEADER = """\
# Configuration reference

Generated from the pydantic models in `platform/lmforge/config/` by
`python -m lmforge.stage_reference > docs/configuration.md`; do not edit by hand.

Each stage reads one YAML file (`lmforge STAGE CONFIG`). Nested settings are written as YAML mappings
or as dotted overrides on the command line (`lmforge pretrain CONFIG zero.offload_optimizer=true`);
`${VAR}` and `${VAR:-default}` are expanded in strings; an unknown key is an error.
"""


def render_reference() -> str:
    """The whole reference as Markdown: one section per config model, with the stages that read it."""
    stages_of: dict[type[BaseModel], list[str]] = {}
    for name, stage in STAGES.items():
        stages_of.setdefault(stage.config, []).append(name)
    lines = [HEADER, "| stage | config model | what it does |", "|---|---|---|"]
    lines += [f"| `{name}` | [{stage.config.__name__}](#{stage.config.__name__.lower()}) | {stage.summary} |"
              for name, stage in STAGES.items()]
    described: dict[type[BaseModel], str] = {}  # item models already shown -> the section showing them
    for model, names in stages_of.items():
        doc = _docstring(model) or f"Read by {', '.join(f'`lmforge {name}`' for name in names)}."
        lines += ["", f"## {model.__name__}", "", doc, ""]
        lines += _model_tables(model, described)
    return "\n".join(lines) + "\n"


def _model_tables(model: type[BaseModel], described: dict[type[BaseModel], str]) -> list[str]:
    """The settings table of `model`, then one per model that a list setting holds (e.g. sources), once."""
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    item_models: list[tuple[str, type[BaseModel]]] = []
    for key, field, default in iter_fields(model):
        lines.append(f"| `{key}` | {_code(_type_name(field.annotation))} | {_default(default)} | "
                     f"{_cell(field.description or '')} |")
        item = _inner_model(field.annotation) if _is_list(field.annotation) else None
        if item is not None:
            item_models.append((key, item))
    for key, item in item_models:
        lines += ["", f"### `{key}` items: {item.__name__}", ""]
        if item in described:
            lines.append(f"As under [{described[item]}](#{described[item].lower()}).")
            continue
        described[item] = model.__name__
        lines += [_docstring(item), ""] + _model_tables(item, described)
    return lines


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(json.dumps(arg) for arg in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(arg) for arg in args)}]"
    if annotation is type(None):
        return "null"
    return "Any" if annotation is Any else getattr(annotation, "__name__", str(annotation))


def _default(default: Any) -> str:
    if default is REQUIRED:
        return "**required**"
    if isinstance(default, BaseModel):
        default = default.model_dump()
    return _code(json.dumps(default, ensure_ascii=False))


def _docstring(model: type[BaseModel]) -> str:
    doc = model.__doc__ or ""
    # pydantic's generated doc: none
    return "" if doc.startswith(f"{model.__name__}(") else " ".join(doc.split())


def _code(text: str) -> str:
    return f"`{_cell(text)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


if __name__ == "__main__":
    sys.stdout.write(render_reference())
