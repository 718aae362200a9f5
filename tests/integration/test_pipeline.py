"""The whole pipeline end to end with `dvc repro`, on a copy of the repository, with a tiny random model and
small sets: every stage runs for real (search, GX validation, training, MLflow registry, evaluation, report).
Then: a second `dvc repro` does nothing, a runtime param reruns nothing, a search param invalidates only the
search and what follows, `dvc exp run -S` reruns only what the param changes, and the HTML report renders in
headless Chromium with numbers equal to the metrics."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from drllm_core.report import summary_markdown
from tests.conftest import tiny_loaded

REPO = Path(__file__).resolve().parents[2]


def _sh(args, cwd, env, check=True):
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, args))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
        )
    return done


def small_params(model_folder: Path) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["model"].update({"spec": str(model_folder), "dtype": "float32"})
    params["tasks"]["gsm8k"]["max_new_tokens"] = 6
    params["prepare"]["sets"] = {
        "search": [{"task": "arc_easy", "source": "embedded", "split": "validation", "limit": 48}],
        "eval_id": [
            {"task": "arc_easy", "source": "embedded", "split": "test", "limit": 24},
            {"task": "arc_challenge", "source": "embedded", "split": "test", "limit": 12},
        ],
        "eval_ood": [
            {"task": "piqa", "source": "embedded", "split": "validation", "limit": 8},
            {"task": "gsm8k", "source": "embedded", "split": "test", "limit": 3},
        ],
        "shots": [],
    }
    params["search"].update({"strategies": ["singles", "mcts"], "max_examples": 36, "simulations": 12})
    params["train"]["routers"] = {  # both router kinds: skip costs (served) and the paper's path classes
        "costs": {"labels": "singles", "shuffle": False},
        "mcts": {"labels": "mcts", "shuffle": False},
        "shuffled": {"labels": "singles", "shuffle": True},
    }
    params["runtime"].update({"threads": 1, "speed_prompts": 1, "speed_tokens": 4})
    params["validate"].update(
        {
            "min_examples": 5,
            "shares": {k: {"warn": [0.0, 1.0], "fail": [0.0, 1.0]} for k in ("skip", "repeat")},
        }
    )
    params["train"].update({"epochs": 3, "bottleneck": 16})
    params["evaluate"].update(
        {
            "knob_sweep": [-0.5],
            "other_routers": ["mcts", "shuffled"],
            "static_examples": 6,
        }
    )
    return params


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    work = root / "repo"
    files = _sh(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], REPO, os.environ
    ).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, work / name)
    tiny = tiny_loaded("llama")
    tiny.model.config.max_position_embeddings = 2048  # byte tokens: chat-formatted ARC runs past 512
    tiny.model.save_pretrained(root / "model")
    tiny.tokenizer.save_pretrained(root / "model")
    (work / "params.yaml").write_text(yaml.safe_dump(small_params(root / "model"), sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "RAY_AUTH_MODE": "disabled",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    _sh(["git", "init", "-q"], work, env)
    _sh(["git", "add", "-A"], work, env)
    _sh(["git", "commit", "-q", "-m", "copy"], work, env)
    first = _sh(["dvc", "repro"], work, env)
    return work, env, first


def test_every_stage_ran_and_wrote_its_outputs(pipeline):
    work, env, first = pipeline
    for stage in (
        "prepare",
        "search@mcts",
        "validate@singles",
        "features@singles",
        "train@shuffled",
        "calibrate",
        "register",
        "evaluate",
        "report",
    ):
        assert f"Running stage '{stage}'" in first.stdout, stage
    evaluation = json.loads((work / "metrics/eval.json").read_text())
    assert {
        "vanilla/eval_id",
        "drllm/eval_id",
        "drllm/eval_ood",
        "shortgpt_bi_1/eval_id",
        "best_static_1/eval_id",
        "faithful_static_1/eval_id",
        "random_skip/eval_id",
        "random_deepest/eval_id",
        "routers_shuffled/eval_id",
        "drllm_knob_-0.5/eval_id",
        "early_exit/eval_id",
        "early_exit/eval_ood",
    } <= set(evaluation["configs"])
    chosen = evaluation["early_exit"]  # on the search questions: the layer keeping most of vanilla's answers
    best = max(chosen["trace"], key=lambda row: row["agreement"])
    assert (chosen["layer"], chosen["threshold"]) == (best["layer"], best["threshold"]) and best["exits"] > 0
    assert evaluation["numerics"]["dtype"] in {"float32", "bfloat16"}  # dtype auto on a CPU: what it chose
    assert evaluation["numerics"]["device"] == "cpu"
    headline = json.loads((work / "metrics/headline.json").read_text())
    assert headline["vanilla_id_acc"] == pytest.approx(
        100 * evaluation["configs"]["vanilla/eval_id"]["accuracy"]
    )
    assert (work / "reports/report.html").is_file() and (work / "reports/figures/pareto.png").is_file()
    stats = json.loads((work / "data/paths/singles/stats.json").read_text())
    assert not [k for k in stats if "seconds" in k]  # results only: a rerun at another speed changes nothing
    assert json.loads((work / "metrics/timings/search-singles.json").read_text())["wall_seconds"] > 0
    calibrated = json.loads((work / "metrics/calibration.json").read_text())
    grid = yaml.safe_load((work / "params.yaml").read_text())["calibrate"]["grid"]
    assert len(calibrated["calibration"]) == len(grid) and evaluation["knob"] == calibrated["knob"]
    routing = json.loads((work / "models/drllm/config.json").read_text())["routing"]
    assert (
        routing["knob"] == calibrated["knob"]
        and routing["max_skip_run"] == 2
        and "defaults" in routing["tasks"]
    )
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    (registered,) = client.search_registered_models()
    candidate = client.get_model_version_by_alias(registered.name, "candidate")
    assert float(candidate.tags["drllm.knob"]) == calibrated["knob"]  # served at the knob evaluated


def test_second_repro_does_nothing_and_a_search_param_reruns_only_downstream(pipeline):
    work, env, _ = pipeline
    again = _sh(["dvc", "repro"], work, env)
    assert "Running stage" not in again.stdout
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["runtime"].update({"threads": 2, "batch_size": 3, "search_backend": "ray", "prefix_cache_mb": 64})
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert (
        json.loads(_sh(["dvc", "status", "--json"], work, env).stdout) == {}
    )  # runtime params rerun nothing
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["search"]["exploration"] = 1.0
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = _sh(["dvc", "status", "--json"], work, env).stdout
    changed = set(json.loads(status))
    assert "prepare" not in changed and {"search@mcts", "search@singles"} <= changed
    _sh(["git", "checkout", "params.yaml"], work, env)


def test_dvc_exp_run_with_a_set_param_reruns_only_what_it_changes(pipeline):
    work, env, _ = pipeline
    done = _sh(["dvc", "exp", "run", "-S", "validate.min_examples=4"], work, env)
    ran = {line.split("'")[1] for line in done.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"validate@mcts", "validate@singles"}  # the labels pass as before: features is not rerun
    shown = _sh(["dvc", "exp", "show", "--json"], work, env).stdout
    assert "validate.min_examples" in shown or '"min_examples": 4' in shown


def test_report_renders_in_headless_chromium_with_the_evaluate_metrics(pipeline):
    work, _, _ = pipeline
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail(
            "Debian's chromium is not installed: run make test (scripts/system-deps.sh installs it) or apt-get install chromium"
        )
    from playwright.sync_api import sync_playwright

    evaluation = json.loads((work / "metrics/eval.json").read_text())
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        page = browser.new_page()
        page.on("console", lambda message: message.type == "error" and errors.append(message.text))
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto((work / "reports/report.html").as_uri())
        page.wait_for_load_state("load")
        for name in ("pareto", "routing", "labels"):  # served cost routers: no confusion matrix
            loaded = page.evaluate(
                f"() => {{ const i = document.getElementById('figure-{name}'); return !!i && i.complete && i.naturalWidth > 0; }}"
            )
            assert loaded, f"figure {name} missing or not loaded"
        rows = page.evaluate("""() => [...document.querySelectorAll('#results tbody tr')].map(
            tr => Object.fromEntries([...tr.querySelectorAll('td')].map(td => [td.dataset.col, td.textContent])))""")
        browser.close()
    assert not errors, errors
    assert (work / "reports/summary.md").read_text() == summary_markdown(evaluation)
    shown = {f"{r['configuration']}/{r['set']}": r for r in rows}
    for key, values in evaluation["configs"].items():
        for column in ("accuracy", "ci_low", "ci_high", "blocks_per_token"):
            assert float(shown[key][column]) == pytest.approx(values[column], abs=1e-4), (key, column)


def test_a_fresh_clone_registers_the_routers_in_its_own_store(pipeline):
    """A fresh clone has dvc.lock and the committed metrics, so calibrate need not rerun when the routers
    reproduce exactly; its empty MLflow store must still get the routers: register's record is not committed."""
    work, env, _ = pipeline
    (work / "models/registered.json").unlink()
    fresh = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{work.parent / 'fresh-clone-mlflow.db'}"}
    done = _sh(["dvc", "repro"], work, fresh)
    assert "Running stage 'register'" in done.stdout and "Running stage 'calibrate'" not in done.stdout
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=fresh["MLFLOW_TRACKING_URI"])
    (registered,) = client.search_registered_models()
    candidate = client.get_model_version_by_alias(registered.name, "candidate")
    record = json.loads((work / "models/registered.json").read_text())
    assert record["model_uri"] == f"models:/{registered.name}/{candidate.version}"
    assert record["tracking_uri"] == fresh["MLFLOW_TRACKING_URI"]
