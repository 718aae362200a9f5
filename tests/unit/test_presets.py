"""Presets: overrides merged into params.yaml with its comments kept, typos refused, and every preset the
repository ships applies to its params.yaml."""

import shutil
from pathlib import Path

import pytest
import yaml

from drllm_core.errors import ConfigError
from drllm_core.presets import apply_preset

ROOT = Path(__file__).resolve().parents[2]


def test_a_preset_changes_only_what_it_names_and_keeps_the_comments(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        "tasks:\n  defaults: {}\nsearch:\n  simulations: 25  # paths per example\n  seed: 0\n"
        "  max_blocks: null  # budget\n"
        "train:\n  routers:\n    a: {labels: x}\n    b: {labels: y}\n"
    )
    preset = tmp_path / "preset.yaml"
    preset.write_text(
        "search:\n  simulations: 50\ntrain:\n  routers:\n    c: {labels: z}\ntasks:\n  mine: {shots: 1}\n"
    )
    assert apply_preset(params, preset) == ["search.simulations", "train.routers", "tasks.mine"]
    merged = yaml.safe_load(params.read_text())
    assert merged["search"] == {"simulations": 50, "seed": 0, "max_blocks": None}
    assert merged["train"]["routers"] == {"c": {"labels": "z"}}  # a mapping of names is replaced
    assert "# paths per example" in params.read_text()
    assert "  max_blocks: null  # budget\n" in params.read_text()  # a line it does not set is kept as is


def test_a_key_params_yaml_does_not_have_is_refused(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("search:\n  simulations: 25\n")
    (tmp_path / "typo.yaml").write_text("search:\n  simulatons: 50\n")
    with pytest.raises(ConfigError, match="sets `search.simulatons`, which params.yaml does not have"):
        apply_preset(params, tmp_path / "typo.yaml")
    assert params.read_text() == "search:\n  simulations: 25\n"  # untouched


@pytest.mark.parametrize("preset", sorted((ROOT / "presets").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_preset_applies_to_the_default_params(tmp_path, preset):
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    assert apply_preset(params, preset)
    assert yaml.safe_load(params.read_text())["model"]
