"""The served model on the real default model: the registered pyfunc answers a plain question in the served
format (the chat template) as vanilla does when no layer is skipped, and a multiple-choice question through
it gets the prediction and path `evaluate` gives the same question."""

import pandas as pd
import pytest
import torch

from drllm_core import tracking
from drllm_core.engine import token_batch
from drllm_core.evaluation import Configuration, EvaluationRunner
from drllm_core.inference import RoutedModel
from drllm_core.models import weights_fingerprint, weights_sample
from drllm_core.routers import RouterSet
from drllm_core.routing import RouterConfig, Routing, routers_hash
from drllm_core.tasks.schema import Example
from drllm_core.tasks.scorer import eos_token_ids

QUESTION = Example(
    "arc_easy/served-test",
    "arc_easy",
    "Which gas do plants take in from the air for photosynthesis?",
    ["oxygen", "carbon dioxide", "nitrogen", "helium"],
    1,
)


@pytest.fixture(scope="module")
def served(default_model, tmp_path_factory):
    """Cost routers for the default model that always skip layer 25, calibrated to knob -1, registered."""
    root = tmp_path_factory.mktemp("served")
    config = RouterConfig(
        default_model.num_layers,
        default_model.model.config.hidden_size,
        kind="costs",
        decision_layer=12,
        candidates=[16, 25],
        rank=2,
        base_model=default_model.spec.spec,
        base_model_name=default_model.name,
        base_fingerprint=weights_fingerprint(default_model.model),
        base_sample=weights_sample(default_model.model),
        routing=Routing(tasks={"defaults": {"chat_template": True}}, max_skips=1),
    )
    routers = RouterSet(config)
    with torch.no_grad():
        routers.cost.bias.copy_(torch.tensor([0.0, -5.0]))  # layer 25 is always the cheaper candidate
        routers.cost.quantiles.copy_(torch.linspace(-6, 1, 101))
    routers.with_knob(-1.0).save(root / "routers")
    folder = str(root / "routers")
    model = {"spec": default_model.spec.spec, "cache_dir": str(default_model.spec.cache_path())}
    version, _ = tracking.register_routers(
        folder, "drllm-served-test", routers_hash(folder), model, -1.0, True
    )
    import mlflow

    return mlflow.pyfunc.load_model(f"models:/drllm-served-test/{version.version}"), folder


def test_the_served_model_answers_a_plain_question_as_vanilla_does_when_nothing_is_skipped(
    served, default_model
):
    model, _ = served
    question = "Why is the sky blue?"
    out = model.predict(pd.DataFrame({"prompt": [question]}), params={"max_new_tokens": 12, "knob": 1.0})
    assert out["text"][0].strip() and list(out["path"][0]) == [1] * 30  # knob 1 skips nothing: an answer
    tokenizer = default_model.tokenizer
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    ids, mask = token_batch(
        [tokenizer(chat, add_special_tokens=False).input_ids], tokenizer.pad_token_id, left=True
    )
    vanilla = RoutedModel.from_folder(default_model, served[1]).engine.generate(
        ids, None, mask, 12, eos_token_ids(default_model.model, tokenizer), tokenizer.pad_token_id
    )
    expected = tokenizer.decode(vanilla.tokens[0, : int(vanilla.lengths[0])], skip_special_tokens=True)
    assert out["text"][0] == expected
    skipping = model.predict(pd.DataFrame({"prompt": [question]}), params={"max_new_tokens": 12})
    assert skipping["text"][0].strip() and skipping["blocks"][0] == 29  # the served knob skips layer 25


def test_a_multiple_choice_question_through_the_served_model_gets_evaluates_prediction(
    served, default_model, tmp_path
):
    model, folder = served
    out = model.predict(pd.DataFrame({"prompt": [QUESTION.question], "choices": [QUESTION.choices]}))
    scorer = RoutedModel.from_folder(default_model, folder).scorer()
    runner = EvaluationRunner(default_model, scorer, {"eval_id": [QUESTION]}, {"eval_id": "q"}, tmp_path, "c")
    (row,) = runner.run(Configuration.routed("drllm", ["eval_id"], folder, -1.0))
    assert out["choice"][0] == ord(row["prediction"]) - ord("A")
    assert list(out["path"][0]) == row["path"] and row["path"][25] == 0
    assert out["scores"][0] == pytest.approx(row["scores"], abs=1e-4)
