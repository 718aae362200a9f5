"""The errors drllm reports to a user: the message says what was wrong, where, and what to do. Pipeline scripts
print these without a traceback and exit non-zero; anything else is a bug."""

from __future__ import annotations

import math
import types
import typing
from dataclasses import fields


class DrllmError(Exception):
    pass


class ConfigError(DrllmError, ValueError):
    """A bad value or an unknown key in params.yaml (or an option): the message names the key and what is
    allowed."""


def config_from(cls, section: str, values: dict, ignore: tuple[str, ...] = ()):
    """`cls(**values)` for a dataclass of settings, checking every value against its field's type at the
    boundary: unknown keys are refused (a typo would otherwise fall back to a default silently), except the
    `ignore`d ones that other parts of the pipeline read; see `typed` for the conversions."""
    if not isinstance(values, dict):
        raise ConfigError(f"params.yaml `{section}` must be a mapping of keys to values, got {values!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known) - set(ignore))
    if unknown:
        raise ConfigError(
            f"unknown keys in params.yaml `{section}`: {unknown}; known: {sorted({*known, *ignore})}"
        )
    hints = typing.get_type_hints(cls)
    chosen = {
        name: typed(value, hints[name], f"{section}.{name}")
        for name, value in values.items()
        if name in known
    }
    return cls(**chosen)


def listed(value, where: str) -> list:
    """`value` as a list (None: empty), or a ConfigError naming `where` (a YAML scalar where a list belongs)."""
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise ConfigError(f"params.yaml `{where}` must be a list, e.g. [{value!r}], got {value!r}")
    return list(value)


def typed(value, annotation, where: str):
    """`value` as the type `annotation` names (int, float, bool, str, or one of them | None), or a
    ConfigError naming `where`. Numbers may be written as strings ("4", and "1e-4", which YAML 1.1 reads as
    a string); a whole number must be whole (1.9 and true are refused); a bool must be true or false (a YAML
    string "no" would be truthy); other types pass unchecked."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"params.yaml `{where}` must be set, got null")
    kinds = [kind for kind in options if kind in (bool, int, float, str)]
    if not kinds:
        return value
    for kind in kinds:
        converted = _convert(value, kind)
        if converted is not None:
            return converted
    names = " or ".join(
        {bool: "true or false", int: "a whole number", float: "a number", str: "text"}[k] for k in kinds
    )
    raise ConfigError(f"params.yaml `{where}` must be {names}, got {value!r}")


def _convert(value, kind):
    if kind is bool:
        return value if isinstance(value, bool) else None
    if kind is str:
        return value if isinstance(value, str) else None
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, int | float) or not math.isfinite(value):
        return None
    if kind is int:
        return int(value) if float(value).is_integer() else None
    return float(value)
