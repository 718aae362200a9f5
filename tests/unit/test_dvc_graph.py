"""The DVC graph says what each stage depends on: its code deps are exactly its script's import closure, no
stage lists the `runtime` params, data-only stages never import torch, and the library has no import cycle."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from drllm_core.provenance import ROOT, _imports, code_version, import_closure, module_file

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _module(stage: dict) -> str:
    command = (stage.get("do") or stage)["cmd"]
    return command.split("python -m ", 1)[1].split()[0]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_code_deps_are_exactly_the_import_closure(name):
    stage = STAGES[name].get("do") or STAGES[name]
    listed = {d for d in stage["deps"] if d.endswith(".py")}
    wanted = {p.relative_to(ROOT).as_posix() for p in import_closure([_module(STAGES[name])])}
    assert listed == wanted, (
        f"dvc.yaml stage {name}: missing {sorted(wanted - listed)}, not imported {sorted(listed - wanted)}"
    )
    folders = [d for d in stage["deps"] if d.startswith(("drllm_core", "pipeline")) and not d.endswith(".py")]
    assert not folders, f"stage {name} depends on code folders {folders}: list the modules it imports"


def test_no_stage_depends_on_the_runtime_params():
    for name, stage in STAGES.items():
        params = (stage.get("do") or stage).get("params", [])
        assert not [p for p in params if str(p).split(".")[0] == "runtime"], name


@pytest.mark.parametrize("module", ["pipeline.prepare", "pipeline.report", "pipeline.promote"])
def test_data_only_stages_never_import_torch(module):
    check = f"import sys, {module}; sys.exit(any(m in sys.modules for m in ('torch', 'transformers')))"
    assert subprocess.run([sys.executable, "-c", check], cwd=ROOT).returncode == 0, f"{module} imports torch"


def test_the_library_has_no_import_cycle():
    graph = {}
    for path in sorted((ROOT / "drllm_core").rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {
            m for m in _imports(name, path) if module_file(m) and m != name and not name.startswith(m)
        }
    state = {}

    def visit(node, trail):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", f"import cycle: {' -> '.join([*trail, node])}"
        state[node] = "open"
        for target in graph.get(node, ()):
            visit(target, [*trail, node])
        state[node] = "done"

    for node in graph:
        visit(node, [])


def test_the_code_version_ignores_comments_and_docstrings(tmp_path, monkeypatch):
    import drllm_core.provenance as provenance

    package = tmp_path / "drllm_core"
    package.mkdir()
    (package / "__init__.py").write_text("")
    source = package / "thing.py"
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    source.write_text('"""A module."""\n\ndef f(x):\n    """Twice x."""\n    return 2 * x  # doubled\n')
    before = code_version(["drllm_core.thing"])
    source.write_text('"""A module, described better."""\n\ndef f(x):\n    # why: none\n    return 2 * x\n')
    assert code_version(["drllm_core.thing"]) == before
    source.write_text('"""A module."""\n\ndef f(x):\n    return 3 * x\n')
    assert code_version(["drllm_core.thing"]) != before
    assert ast.parse(source.read_text())  # the file stays valid Python


def test_lazy_imports_count_and_modules_outside_the_repository_do_not():
    closure = {p.relative_to(ROOT).as_posix() for p in import_closure(["drllm_core.mlflow_model"])}
    assert "drllm_core/inference.py" in closure  # imported inside load_context
    assert all(Path(ROOT / p).is_file() for p in closure)
    assert not [p for p in closure if not p.startswith(("drllm_core/", "pipeline/"))]


def _keys(value, where: str):
    if isinstance(value, dict):
        for key, inner in value.items():
            yield f"{where}.{key}", key
            yield from _keys(inner, f"{where}.{key}")
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            yield from _keys(inner, f"{where}[{i}]")


def test_no_param_has_a_name_the_run_cache_ignores():
    """DVC's run cache keys a stage by its deps and params with every key named `size` or `nfiles` left out,
    at any depth: a param of that name could change and `dvc repro` restore the outputs of another run."""
    from dvc_data.hashfile.meta import Meta

    ignored = {Meta.PARAM_SIZE, Meta.PARAM_NFILES}
    files = [ROOT / "params.yaml", *sorted((ROOT / "presets").glob("*.yaml"))]
    found = [
        f"{path.name}: {name}"
        for path in files
        for name, key in _keys(yaml.safe_load(path.read_text()), "")
        if key in ignored
    ]
    assert not found
