"""The errors drllm reports to a user: the message says what was wrong, where, and what to do. Pipeline scripts
print these without a traceback and exit non-zero; anything else is a bug."""

from __future__ import annotations

from dataclasses import fields


class DrllmError(Exception):
    pass


class ConfigError(DrllmError, ValueError):
    """A bad value or an unknown key in params.yaml (or an option): the message names the key and what is
    allowed."""


def config_from(cls, section: str, values: dict, ignore: tuple[str, ...] = ()):
    """`cls(**values)`, refusing keys `cls` does not have (a typo would otherwise fall back to a default
    silently), except `ignore`d ones that other parts of the pipeline read. A field whose default is a float
    takes any number, and a string YAML did not read as one (`1e-4` is a string to YAML 1.1)."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known) - set(ignore))
    if unknown:
        raise ConfigError(
            f"unknown keys in params.yaml `{section}`: {unknown}; known: {sorted({*known, *ignore})}"
        )
    chosen = {k: v for k, v in values.items() if k in known}
    for name, value in chosen.items():
        if isinstance(known[name].default, float) and not isinstance(value, bool):
            try:
                chosen[name] = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"params.yaml `{section}.{name}` must be a number, got {value!r}") from None
    return cls(**chosen)
