"""Presets: files of params that differ from params.yaml's defaults (presets/*.yaml), applied in place.

A preset names only what it changes. Applying it merges it into params.yaml, keeping every comment and every
key it does not name: a mapping is merged key by key, anything else (a number, a list such as a set's tasks)
replaces the value, and so does a mapping of names (`train.routers`: a preset lists the router sets it
trains). A key params.yaml does not have is refused (a typo would otherwise be ignored), except new task
sections under `tasks`, which the stages check against the tasks the sets use.
"""

from __future__ import annotations

import io as text_io
from pathlib import Path

from drllm_core import io
from drllm_core.errors import ConfigError

NEW_KEYS_ALLOWED = ("tasks",)  # sections whose keys are names (a task's own settings)
REPLACED = ("train.routers",)  # mappings of names a preset replaces as a whole


def apply_preset(params_path: str | Path, preset_path: str | Path) -> list[str]:
    """Merge the preset into the params file (atomically); returns the dotted keys it set."""
    from ruamel.yaml import YAML

    yaml = YAML()  # round-trip: comments and key order survive
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    # ruamel writes a null as nothing (`revision:`); keep params.yaml's `null` on lines a preset leaves alone.
    yaml.representer.add_representer(
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    params = yaml.load(Path(params_path).read_text())
    preset = yaml.load(Path(preset_path).read_text()) or {}
    if not isinstance(preset, dict):
        raise ConfigError(
            f"{preset_path} must hold a mapping of params.yaml sections, not {type(preset).__name__}"
        )
    changed: list[str] = []
    _merge(params, preset, "", changed, str(preset_path))
    out = text_io.StringIO()
    yaml.dump(params, out)
    io.write_text(params_path, out.getvalue())
    return changed


def _merge(target: dict, overrides: dict, prefix: str, changed: list[str], where: str) -> None:
    for key, value in overrides.items():
        name = f"{prefix}{key}"
        if key not in target:
            if name.split(".")[0] not in NEW_KEYS_ALLOWED or "." not in name:
                raise ConfigError(
                    f"{where} sets `{name}`, which params.yaml does not have: check its spelling"
                )
            target[key] = value
            changed.append(name)
        elif isinstance(value, dict) and isinstance(target[key], dict) and name not in REPLACED:
            _merge(target[key], value, f"{name}.", changed, where)
        else:
            target[key] = value
            changed.append(name)
