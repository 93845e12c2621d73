"""Config basics: strict models, loading from YAML with overrides, help text.

`load_config(PretrainDataConfig, "configs/demo/pretrain_data.yaml", ["pack.block_size=2048"])`
reads the file, expands `${VAR}` / `${VAR:-default}` in strings, applies the overrides and
validates. Unknown keys are errors naming the file, the key and the closest valid key.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class StrictModel(BaseModel):
    """Base of every config model: a mistyped key is an error, not a silently ignored setting."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the file and the field."""




class RayConfig(StrictModel):
    address: str | None = Field(
        None,
        description="Ray cluster to join ('auto', 'ray://host:10001'); empty: RAY_ADDRESS if set "
        "(as under `ray job submit`), otherwise a new local Ray.",
    )
    num_cpus: int | None = Field(
        None, ge=1, description="Logical CPUs of a local Ray (ignored when joining)."
    )
    object_store_memory_mb: int | None = Field(None, ge=64, description="Object store size of a local Ray.")


Model = TypeVar("Model", bound=BaseModel)
_ENV_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def load_config(model: type[Model], path: str | Path | None, overrides: list[str] = ()) -> Model:
    """Read YAML `path` (or nothing), apply `key.sub=value` overrides, validate into `model`."""
    where = str(path) if path else "command line"
    data: Any = {}
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read config: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: the top level must be a mapping of keys, got {type(data).__name__}")
    return validate_config(model, data, overrides, where)


def validate_config(
    model: type[Model], data: dict, overrides: list[str] = (), where: str = "command line"
) -> Model:
    """Apply `key.sub=value` overrides to a mapping already read (a copy), expand `${VAR}`, validate into
    `model`; errors name `where`."""
    data = copy.deepcopy(data)
    for override in overrides:
        _apply_override(data, override)
    data = _expand_env(data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe_errors(exc, model, where)) from None


def _apply_override(data: dict, override: str) -> None:
    key, sep, raw_value = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r}: expected key=value, e.g. pack.block_size=2048")
    value = yaml.safe_load(raw_value) if raw_value else ""
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            node = node[_list_index(node, part, override)]
        else:
            node = node.setdefault(part, [] if nxt.isdigit() else {})
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, override)] = value
    else:
        node[last] = value


def _list_index(node: list, part: str, override: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override {override!r}: '{part}' is not an index of a list of {len(node)}")
    return int(part)


def _expand_env(value: Any) -> Any:
    if isinstance(value, str):
        return _ENV_VAR.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), value)
    if isinstance(value, list):
        return [_expand_env(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand_env(v) for k, v in value.items()}
    return value


def _describe_errors(exc: ValidationError, model: type[BaseModel], where: str) -> str:
    lines = [f"{where}: invalid {model.__name__} config:"]
    for error in exc.errors():
        loc = ".".join(str(p) for p in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            known = _known_keys(model, error["loc"][:-1])
            hint = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else f" (valid keys: {', '.join(known)})"
            lines.append(f"  {loc}: unknown key{suggestion}")
        else:
            lines.append(f"  {loc}: {error['msg']}")
    return "\n".join(lines)


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the (nested) model at `loc`, following list indices and submodels."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if isinstance(current, type) else None
        if field is None:
            return []
        current = _inner_model(field.annotation)
    return (
        sorted(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []
    )


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


class _Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED = _Required()  # the default of a field that has none


def iter_fields(model: type[BaseModel], prefix: str = "", defaults: BaseModel | None = None):
    """Yield (dotted key, field, default) for every setting of `model`, nested models flattened (lists of
    models are one setting). A nested model's defaults are its owner's (ServeConfig's ray.num_cpus is 8)."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if defaults is not None:
            default = getattr(defaults, name)
        else:
            default = REQUIRED if field.is_required() else field.get_default(call_default_factory=True)
        inner = _inner_model(field.annotation)
        if inner is not None and not _is_list(field.annotation):
            yield from iter_fields(inner, f"{key}.", default if isinstance(default, BaseModel) else None)
        else:
            yield key, field, default


def describe_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """`key: type = default  description` lines for every (nested) field, for --help."""
    return [
        (
            f"  {key} {'required' if default is REQUIRED else f'= {default!r}'}  "
            f"{field.description or ''}"
        ).rstrip()
        for key, field, default in iter_fields(model, prefix)
    ]


def _is_list(annotation: Any) -> bool:
    return getattr(annotation, "__origin__", None) is list
