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
    silently), except `ignore`d ones that other parts of the pipeline read."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known - set(ignore))
    if unknown:
        raise ConfigError(
            f"unknown keys in params.yaml `{section}`: {unknown}; known: {sorted(known | set(ignore))}"
        )
    return cls(**{k: v for k, v in values.items() if k in known})
