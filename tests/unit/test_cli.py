"""The `drllm` command line: routed generation and scoring with a router folder, and clear errors."""

import json

import pandas as pd

from drllm_core import cli, io
from drllm_core.models import ModelSpec, load_model, weights_fingerprint
from drllm_core.prepare import build_sets
from drllm_core.routers import RouterConfig, RouterSet, routers_hash
from tests.conftest import tiny_loaded


def _project(tmp_path):
    tiny = tiny_loaded()
    tiny.model.save_pretrained(tmp_path / "model")
    tiny.tokenizer.save_pretrained(tmp_path / "model")
    loaded = load_model(ModelSpec(spec=str(tmp_path / "model"), dtype="float32"))
    RouterSet(
        RouterConfig(6, 64, 8, 4, base_model_name="tiny", base_fingerprint=weights_fingerprint(loaded.model))
    ).save(tmp_path / "routers")
    return str(tmp_path / "model"), str(tmp_path / "routers")


def test_generate_and_score(tmp_path, capsys):
    model, routers = _project(tmp_path)
    assert (
        cli.main(
            [
                "generate",
                "--routers",
                routers,
                "--model",
                model,
                "--dtype",
                "float32",
                "--max-new-tokens",
                "3",
                "Hi",
                "Bye",
            ]
        )
        == 0
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["prompt"] for line in lines] == ["Hi", "Bye"] and all(
        len(line["path"]) == 6 for line in lines
    )
    (tmp_path / "q.jsonl").write_text(
        "\n".join(
            json.dumps({"question": f"Q{i}?", "choices": ["a", "b"], "answer_index": 0}) for i in range(4)
        )
    )
    frames, _ = build_sets(
        {"sets": {"eval_id": [{"task": "toy", "source": "local", "path": str(tmp_path / "q.jsonl")}]}}
    )
    frames["eval_id"].to_parquet(tmp_path / "eval.parquet")
    score = ["score", "--routers", routers, "--model", model, "--examples", str(tmp_path / "eval.parquet")]
    assert cli.main([*score, "--params", str(tmp_path / "none.yaml")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 5 and lines[-1]["examples"] == 4 and "blocks_per_token" in lines[-1]
    assert set(pd.DataFrame(lines[:-1])["correct"]) <= {True, False}
    assert {line["prediction"] for line in lines[:-1]} <= {"A", "B"}  # default: likelihood of each choice
    (tmp_path / "params.yaml").write_text("tasks:\n  toy: {scorer: math, max_new_tokens: 2}\n")
    assert cli.main([*score, "--params", str(tmp_path / "params.yaml")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert not {line["prediction"] for line in lines[:-1]} & {
        "A",
        "B",
    }  # the params' scorer: generated answers


def test_routers_for_another_model_are_refused(tmp_path, capsys):
    _, routers = _project(tmp_path)
    other = tiny_loaded(seed=5)
    other.model.save_pretrained(tmp_path / "other")
    other.tokenizer.save_pretrained(tmp_path / "other")
    assert cli.main(["generate", "--routers", routers, "--model", str(tmp_path / "other"), "Hi"]) == 1
    assert "pass force=True" in capsys.readouterr().err


def test_the_default_knob_is_the_one_calibrated_for_these_routers(tmp_path, capsys, monkeypatch):
    model, routers = _project(tmp_path)
    monkeypatch.chdir(tmp_path)
    generate = ["generate", "--routers", routers, "--model", model, "--max-new-tokens", "2", "Hi"]
    assert cli.main(generate) == 0
    assert "routing at knob +0" in capsys.readouterr().err  # nothing calibrated: the routers' own argmax
    point = {"routers_hash": routers_hash(routers), "knob": -0.6, "max_skip_run": 2}
    io.write_json(tmp_path / "metrics/knob.json", point)
    assert cli.main(generate) == 0
    out = capsys.readouterr()
    assert "routing at knob -0.6" in out.err and json.loads(out.out)["path"] == [0, 0, 1, 0, 0, 1]
    io.write_json(tmp_path / "metrics/knob.json", {"routers_hash": "other routers", "knob": -0.6})
    err = capsys.readouterr().err if cli.main(generate) == 0 else ""
    assert "not using the calibrated knob: metrics/knob.json was calibrated for other routers" in err
    assert "routing at knob +0, skip runs up to 2" in err
    (tmp_path / "params.yaml").write_text("search: {max_skip_run: 1}\n")  # the fallback limit: the params'
    assert cli.main(generate) == 0 and "skip runs up to 1" in capsys.readouterr().err
    (tmp_path / "params.yaml").unlink()
    assert cli.main([*generate, "--knob", "-0.6"]) == 0 and "knob -0.6" in capsys.readouterr().err


def test_generate_serves_the_calibrated_skip_run_limit_and_the_training_prompt_format(
    tmp_path, capsys, monkeypatch
):
    model, routers = _project(tmp_path)
    monkeypatch.chdir(tmp_path)
    generate = ["generate", "--routers", routers, "--model", model, "--max-new-tokens", "4", "Hi there"]
    point = {"routers_hash": routers_hash(routers), "knob": -0.6, "max_skip_run": 1}
    io.write_json(tmp_path / "metrics/knob.json", point)
    assert cli.main(generate) == 0
    out = capsys.readouterr()
    assert "skip runs up to 1" in out.err and json.loads(out.out)["path"] == [0, 1, 0, 1, 0, 1]

    def answer(*options):
        assert cli.main([*generate, *options]) == 0
        line = json.loads(capsys.readouterr().out)
        return line["text"], line["path"]

    plain, chat = answer("--no-chat-template"), answer("--chat-template")
    assert plain != chat  # the template changes what the routers and the model read
    assert answer() == plain  # default: tasks.defaults.chat_template, false when params.yaml says nothing
    (tmp_path / "params.yaml").write_text("tasks:\n  defaults: {chat_template: true}\n")
    assert answer() == chat
