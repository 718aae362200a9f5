"""The documentation states only what the pipeline and the benchmarks wrote: the README's results block is
the report stage's summary of the committed metrics, docs/models.md is rendered from each model's committed
metrics, docs/benchmarks.md from the published benchmark records, every relative link resolves, every `make`
target it names exists, and the README stays a front door (at most 250 lines)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest

from drllm_core.report import summary_markdown

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sync_readme():
    return _script("sync_readme")


def test_the_readme_results_are_the_report_summary_of_the_committed_metrics():
    summary = (ROOT / "reports" / "summary.md").read_text()
    assert summary == summary_markdown(json.loads((ROOT / "metrics" / "eval.json").read_text()))
    readme = (ROOT / "README.md").read_text()
    assert _sync_readme().with_summary(readme, summary) == readme, "run: python scripts/sync_readme.py"


def test_the_models_page_is_rendered_from_each_models_committed_metrics():
    models = _script("sync_models")
    runs = models.runs()
    assert len(runs) >= 2 and next(iter(runs)) == "smollm2-135m-instruct"  # the default first
    page = (ROOT / "docs" / "models.md").read_text()
    assert page == models.render(), "run: python scripts/sync_models.py"
    assert all(f"## {name}" in page for name in runs)


def _committed(folder: Path) -> str:
    """A git repository of `folder`'s files, committed; its short head."""
    git = ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "c"], check=True)
    return subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()


def test_a_copied_run_keeps_the_commit_that_ran_it(tmp_path, monkeypatch):
    models = _script("sync_models")
    workspace = tmp_path / "run"
    for name in models.COPIED:
        (workspace / name).parent.mkdir(parents=True, exist_ok=True)
        (workspace / name).write_text("{}")
    (workspace / "models" / "drllm").mkdir(parents=True)
    (workspace / "models" / "drllm" / "config.json").write_text('{"base_model_name": "tiny"}')
    head = _committed(workspace)
    monkeypatch.setattr(models, "RESULTS", tmp_path / "results")
    target = models.snapshot(workspace)
    assert target == tmp_path / "results" / "tiny"
    assert json.loads((target / "run.json").read_text()) == {"commit": head}
    assert sorted(p.name for p in target.iterdir()) == ["calibration.json", "eval.json", "run.json"]


def test_the_benchmarks_page_is_rendered_from_the_published_records():
    benchmarks = _script("sync_benchmarks")
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    assert page == benchmarks.render(page, benchmarks.records()), "run: python scripts/sync_benchmarks.py"


def test_a_benchmark_block_and_its_record_come_together():
    benchmarks = _script("sync_benchmarks")
    record = {
        "commit": "abc1234",
        "machine": {"platform": "p", "cpu_count": 2, "torch_threads": 2, "torch": "t"},
        "args": {"repeats": 3, "model": None},
        "rows": [{"batch": 1, "saving_pct": 12.5}],
    }
    page = "# Benchmarks\n<!-- benchmark:engine -->\nold figures\n<!-- /benchmark -->\nprose\n"
    rendered = benchmarks.render(page, {"engine": record})
    assert "old figures" not in rendered and rendered.endswith("<!-- /benchmark -->\nprose\n")
    assert "`python -m benchmarks.engine --repeats 3` at commit abc1234" in rendered
    assert "| batch | saving_pct |\n|---|---|\n| 1 | 12.50 |" in rendered
    with pytest.raises(ValueError, match="does not hold"):
        benchmarks.render(page, {})
    with pytest.raises(ValueError, match="no `<!-- benchmark:NAME -->` block .*'scale'"):
        benchmarks.render(page, {"engine": record, "scale": record})


def test_a_benchmark_beside_a_finished_pipeline_run_counts_as_committed_code(tmp_path):
    from benchmarks.common import _commit

    (tmp_path / "metrics").mkdir()
    for name in ("code.py", "dvc.lock", "metrics/eval.json"):
        (tmp_path / name).write_text("0")
    head = _committed(tmp_path)
    assert _commit(tmp_path) == head
    (tmp_path / "dvc.lock").write_text("1")
    (tmp_path / "metrics" / "eval.json").write_text("1")
    assert _commit(tmp_path) == head and "+" not in head
    (tmp_path / "code.py").write_text("1")
    assert _commit(tmp_path) == f"{head}+dirty"


def test_only_runs_of_committed_code_are_published(tmp_path):
    benchmarks = _script("sync_benchmarks")
    result = tmp_path / "engine.json"
    for commit in ("abc1234+dirty", None):
        result.write_text(json.dumps({"commit": commit}))
        with pytest.raises(ValueError, match="commit the code, rerun the benchmark"):
            benchmarks.publish(result, tmp_path / "published")
    result.write_text(json.dumps({"commit": "abc1234"}))
    assert json.loads(benchmarks.publish(result, tmp_path / "published").read_text()) == {"commit": "abc1234"}


def test_sync_readme_refuses_a_readme_without_markers():
    with pytest.raises(ValueError, match="no <!-- summary:begin"):
        _sync_readme().with_summary("# a readme\n", "| table |\n")


def test_the_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_relative_link_resolves(doc):
    targets = re.findall(r"\]\(([^)\s]+)\)", doc.read_text())
    local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    missing = [t for t in local if t and not (doc.parent / t).exists()]
    assert not missing, f"{doc.name} links to missing files: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_make_target_and_module_named_exists(doc):
    text = doc.read_text()
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.M))
    named = set(re.findall(r"(?:^|`)make ([a-z][a-z-]*)", text, flags=re.M))  # commands, not prose
    assert named <= targets, f"{doc.name} names make targets that do not exist: {named - targets}"
    modules = set(re.findall(r"python -m ((?:pipeline|benchmarks)\.[a-z_]+)", text))
    absent = [m for m in modules if not (ROOT / (m.replace(".", "/") + ".py")).is_file()]
    assert not absent, f"{doc.name} runs modules that do not exist: {absent}"
