"""The `drllm` command line: routed generation and scoring as the router folder says, and clear errors."""

import json

import pandas as pd

from drllm_core import cli
from drllm_core.models import ModelSpec, load_model, weights_fingerprint
from drllm_core.prepare import build_sets
from drllm_core.routers import RouterSet
from drllm_core.routing import RouterConfig, Routing
from tests.conftest import tiny_loaded


def _project(tmp_path, **routing):
    """A tiny model folder and router folders for it: `routers` uncalibrated, `calibrated` at knob -0.6."""
    tiny = tiny_loaded()
    tiny.model.save_pretrained(tmp_path / "model")
    tiny.tokenizer.save_pretrained(tmp_path / "model")
    loaded = load_model(ModelSpec(spec=str(tmp_path / "model"), dtype="float32"))
    config = RouterConfig(
        6,
        64,
        8,
        4,
        base_model=str(tmp_path / "model"),
        base_model_name="tiny",
        base_fingerprint=weights_fingerprint(loaded.model),
        routing=Routing(**routing),
    )
    routers = RouterSet(config)
    routers.save(tmp_path / "routers")
    routers.with_knob(-0.6).save(tmp_path / "calibrated")
    return str(tmp_path / "routers"), str(tmp_path / "calibrated")


def _lines(capsys):
    out = capsys.readouterr()
    return [json.loads(line) for line in out.out.splitlines()], out.err


def test_generate_and_score_on_the_routers_own_base_model(tmp_path, capsys):
    routers, _ = _project(tmp_path)
    generate = ["generate", "--routers", routers, "--dtype", "float32", "--max-new-tokens", "3", "Hi", "Bye"]
    assert cli.main(generate) == 0  # no --model: the routers' base model
    lines, _ = _lines(capsys)
    assert [line["prompt"] for line in lines] == ["Hi", "Bye"] and all(
        len(line["path"]) == 6 for line in lines
    )
    assert cli.main([*generate, "--batch-size", "1", "--group-by-path"]) == 0
    assert _lines(capsys)[0] == lines  # the same answers, grouped by path
    (tmp_path / "q.jsonl").write_text(
        "\n".join(
            json.dumps({"question": f"Q{i}?", "choices": ["a", "b"], "answer_index": 0}) for i in range(4)
        )
    )
    frames, _ = build_sets(
        {"sets": {"eval_id": [{"task": "toy", "source": "local", "path": str(tmp_path / "q.jsonl")}]}}
    )
    frames["eval_id"].to_parquet(tmp_path / "eval.parquet")
    assert cli.main(["score", "--routers", routers, "--examples", str(tmp_path / "eval.parquet")]) == 0
    lines, _ = _lines(capsys)
    assert len(lines) == 5 and lines[-1]["examples"] == 4 and "blocks_per_token" in lines[-1]
    assert {line["prediction"] for line in lines[:-1]} <= {"A", "B"}  # default: likelihood of each choice


def test_score_prompts_each_task_as_the_routers_were_trained(tmp_path, capsys):
    routers, _ = _project(tmp_path, tasks={"toy": {"scorer": "math", "max_new_tokens": 2}})
    (tmp_path / "q.jsonl").write_text(
        json.dumps({"question": "Q?", "choices": ["a", "b"], "answer_index": 0})
    )
    frames, _ = build_sets(
        {"sets": {"eval_id": [{"task": "toy", "source": "local", "path": str(tmp_path / "q.jsonl")}]}}
    )
    frames["eval_id"].to_parquet(tmp_path / "eval.parquet")
    assert cli.main(["score", "--routers", routers, "--examples", str(tmp_path / "eval.parquet")]) == 0
    lines, _ = _lines(capsys)
    assert lines[0]["prediction"] not in ("A", "B")  # the routers' scorer for the task: generated answers


def test_routers_for_another_model_are_refused(tmp_path, capsys):
    routers, _ = _project(tmp_path)
    other = tiny_loaded(seed=5)
    other.model.save_pretrained(tmp_path / "other")
    other.tokenizer.save_pretrained(tmp_path / "other")
    assert cli.main(["generate", "--routers", routers, "--model", str(tmp_path / "other"), "Hi"]) == 1
    assert "pass force=True (--force)" in capsys.readouterr().err


def test_the_knob_and_the_limits_come_from_the_folder(tmp_path, capsys):
    routers, calibrated = _project(tmp_path, max_skip_run=1)
    generate = ["generate", "--max-new-tokens", "2", "Hi"]
    assert cli.main([*generate, "--routers", routers]) == 0
    assert "routing at knob +0" in capsys.readouterr().err  # not calibrated: the routers' own argmax
    assert cli.main([*generate, "--routers", calibrated]) == 0
    (line,), err = _lines(capsys)
    assert "routing at knob -0.6" in err and "max_skip_run=1" in err
    assert line["path"] == [0, 1, 0, 1, 0, 1]  # -0.6 skips where it may: never two in a row
    assert cli.main([*generate, "--routers", calibrated, "--knob", "0.5"]) == 0
    (line,), err = _lines(capsys)
    assert "routing at knob +0.5" in err and line["path"] == [1] * 6


def test_a_prompt_format_the_routers_were_not_trained_on_is_routed_only_when_asked(tmp_path, capsys, caplog):
    routers, _ = _project(tmp_path, tasks={"defaults": {"chat_template": True}})
    generate = ["generate", "--routers", routers, "--max-new-tokens", "4", "Hi there"]

    def answer(*options):
        assert cli.main([*generate, *options]) == 0
        return _lines(capsys)[0][0]["text"]

    chat = answer()
    assert "routing is unmeasured" not in caplog.text
    plain = answer("--no-chat-template")
    assert (
        plain != chat
        and "prompting without the chat template, but the routers were trained with it" in caplog.text
    )


def test_bad_options_are_errors(tmp_path, capsys):
    routers, _ = _project(tmp_path)
    assert cli.main(["generate", "--routers", routers, "--knob", "3", "Hi"]) == 1
    assert "--knob must be a number in [-1, 1], got '3'" in capsys.readouterr().err
    assert cli.main(["score", "--routers", routers, "--examples", "x.parquet", "--limit", "0"]) == 1
    assert "--limit must be at least 1, got 0" in capsys.readouterr().err
    assert cli.main(["score", "--routers", routers, "--examples", str(tmp_path / "missing.parquet")]) == 1
    assert "cannot read examples from" in capsys.readouterr().err
    pd.DataFrame({"question": ["Why?"]}).to_parquet(tmp_path / "bare.parquet")
    assert cli.main(["score", "--routers", routers, "--examples", str(tmp_path / "bare.parquet")]) == 1
    assert "lacks the columns ['example_id', 'task', 'choices'" in capsys.readouterr().err
    assert cli.main(["generate", "--routers", str(tmp_path / "nowhere"), "Hi"]) == 1
    assert "cannot read router config" in capsys.readouterr().err
