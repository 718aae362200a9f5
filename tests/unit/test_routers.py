"""Routers, windowed pooling, the knob, persistence, features and training."""

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from drllm_core.engine import PathEngine
from drllm_core.errors import ConfigError
from drllm_core.features import build_features
from drllm_core.inference import RoutedModel, rows_by_path
from drllm_core.models import weights_fingerprint, weights_sample
from drllm_core.paths import LayerPath
from drllm_core.routers import RouterSet, pool_windows, window_average, window_mean
from drllm_core.routing import (
    RouterConfig,
    RouterMismatch,
    Routing,
    cost_decisions,
    knob_decisions,
    routers_hash,
)
from drllm_core.tasks.schema import Example
from drllm_core.tasks.scorer import ExampleScorer
from drllm_core.training import (
    TrainConfig,
    classification_metrics,
    effective_number_weights,
    focal_loss,
    train_cost_router,
    train_routers,
)
from tests.conftest import _COMMON, tiny_cost_routers, tiny_loaded, tiny_model


def test_pooling_uses_min_windows_tokens_and_drops_trailing_ones():
    hidden = torch.arange(10, dtype=torch.float).view(1, 10, 1).expand(2, 10, 1).clone()
    mask = torch.tensor([[True] * 10, [False] * 7 + [True] * 3])  # 10 prompt tokens; 3 left-padded ones
    pooled, window_mask = pool_windows(hidden, mask, windows=4)
    # row 0: 4 windows of 10 // 4 = 2 tokens (0,1 | 2,3 | 4,5 | 6,7), tokens 8 and 9 dropped
    assert pooled[0, :, 0].tolist() == [0.5, 2.5, 4.5, 6.5] and window_mask[0].all()
    # row 1: a 3-token prompt has 3 one-token windows
    assert pooled[1, :3, 0].tolist() == [7.0, 8.0, 9.0] and window_mask[1].tolist() == [
        True,
        True,
        True,
        False,
    ]


def test_router_shapes_init_and_window_average():
    routers = RouterSet(RouterConfig(num_layers=3, hidden_size=8, bottleneck=5, windows=2))
    first = routers.routers[0]
    assert first.up.bias.abs().sum() == 0 and first.out.bias.abs().sum() == 0
    features, mask = torch.randn(4, 3, 2, 8), torch.tensor([[True, True]] * 3 + [[True, False]])
    logits = routers(features, mask)
    assert logits.shape == (4, 3, 3)
    single = routers(features[3:, :, :1], torch.tensor([[True]]))
    torch.testing.assert_close(logits[3], single[0])  # the masked window does not count


def test_knob_extremes_and_centre():
    logits = [[0.0, 3.0, 0.0], [2.0, 0.0, 0.0]]
    assert knob_decisions(logits, 0.0) == [1, 0]
    assert knob_decisions(logits, -1.0) == [0, 0]
    assert knob_decisions(logits, 0.5) == [1, 1]
    assert knob_decisions(logits, 1.0) == [2, 2]
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        knob_decisions(logits, 1.5)


def test_knob_ties_go_to_execute():
    saturated_skip = [[100.0, 0.0, 0.0]]  # q = (1, 3.7e-44, 3.7e-44): 0.5 + 0.5 * 3.7e-44 rounds to 0.5
    assert knob_decisions(saturated_skip, 0.24) == [0]
    assert knob_decisions(saturated_skip, 0.25) == [1]  # 0.5 * 1 ties 0.5 * 0 + 0.5: execute
    assert knob_decisions([[0.0] * 3], 0.0) == [1]
    assert knob_decisions([[0.0] * 3], 0.75) == [1]  # halfway between execute and repeat


def test_knob_executes_a_layer_whose_router_returns_nan_or_inf():
    rows = [
        [math.nan] * 3,
        [math.nan, 1.0, 2.0],
        [1.0, math.nan, 2.0],
        [math.inf, 1.0, 0.0],
        [0.0, 1.0, -math.inf],
    ]
    # an overflowing router input routes like the base model, at every knob
    for knob in (-1.0, -0.5, 0.0, 0.12, 0.5, 0.7, 1.0):
        assert knob_decisions(rows, knob) == [1] * len(rows), knob


def test_knob_mixes_the_router_distribution_as_documented():
    logits = 3 * torch.randn(400, 3, generator=torch.Generator().manual_seed(0))
    probs = torch.softmax(logits, -1)
    skip, execute, repeat = probs.unbind(-1)
    for knob in (-0.6, -0.1, 0.1, 0.3, 0.7):
        if knob < 0:
            wants_skip = (1 + knob) * skip - knob > (1 + knob) * torch.maximum(execute, repeat)
            expected = torch.where(wants_skip, 0, torch.where(repeat > execute, 2, 1))
        elif knob <= 0.5:
            mixed_execute = (1 - 2 * knob) * execute + 2 * knob
            best_other = torch.maximum(skip, repeat) * (1 - 2 * knob)
            expected = torch.where(best_other > mixed_execute, torch.where(repeat > skip, 2, 0), 1)
        else:
            expected = torch.full((400,), 2 if knob > 0.75 else 1)
        assert knob_decisions(logits.tolist(), knob) == expected.tolist(), knob


def test_save_load_refuses_another_base_model_but_not_the_same_weights_in_fp16(tmp_path):
    base = tiny_model("llama", seed=0)
    config = RouterConfig(
        num_layers=6,
        hidden_size=64,
        bottleneck=3,
        base_model_name="a",
        base_fingerprint=weights_fingerprint(base),
        base_sample=weights_sample(base),
    )
    routers = RouterSet(config)
    routers.save(tmp_path / "r")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["config.json", "routers.safetensors"]
    loaded = RouterSet.load(tmp_path / "r", base)
    assert torch.equal(loaded.routers[1].up.weight, routers.routers[1].up.weight)
    half = tiny_model("llama", seed=0).to(torch.float16)
    assert weights_fingerprint(half) != config.base_fingerprint  # fp16 rounds differently from bf16
    assert RouterSet.load(tmp_path / "r", half)  # the same weights: the sample matches within rounding
    other = tiny_model("llama", seed=1)
    with pytest.raises(RouterMismatch, match="trained on a"):
        RouterSet.load(tmp_path / "r", other)
    assert RouterSet.load(tmp_path / "r", other, force=True)
    assert len(routers_hash(tmp_path / "r")) == 16
    with pytest.raises(RouterMismatch, match="expect 6 layers"):
        loaded.check_model(2, 4)
    narrow = AutoModelForCausalLM.from_config(LlamaConfig(**{**_COMMON, "hidden_size": 32}))
    with pytest.raises(RouterMismatch, match="expect 6 layers of width 64 .a., this model has 6 of width 32"):
        RouterSet.load(tmp_path / "r", narrow, force=True)  # never, even forced


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_layers": 3}, "the weights do not match config.json"),
        ({"hidden_size": 5}, "the weights do not match config.json"),
        ({"windows": 0}, "windows must be a whole number of at least 1, got 0"),
        ({"routing": {"knob": 3.0}}, r"routing.knob must be a number in \[-1, 1\], got 3.0"),
        ({"routing": {"max_skip_run": 0, "max_blocks": 1}}, "a budget of 1 blocks cannot be met"),
        ({"mystery": 1}, "is not a router config of this drllm version"),
    ],
)
def test_a_broken_router_folder_is_refused_naming_the_problem(tmp_path, change, message):
    RouterSet(RouterConfig(num_layers=2, hidden_size=4, bottleneck=3)).save(tmp_path / "r")
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    for key, value in change.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    (tmp_path / "r" / "config.json").write_text(json.dumps(config))
    with pytest.raises(RouterMismatch, match=message):
        RouterSet.load(tmp_path / "r")


def test_truncated_router_weights_are_refused_with_what_to_do(tmp_path):
    RouterSet(RouterConfig(num_layers=2, hidden_size=4, bottleneck=3)).save(tmp_path / "r")
    weights = tmp_path / "r" / "routers.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(RouterMismatch, match="missing or truncated; retrain the routers"):
        RouterSet.load(tmp_path / "r")


def test_effective_number_weights_and_focal_loss():
    labels = torch.tensor([1] * 90 + [0] * 10)
    weights = effective_number_weights(labels, beta=0.999)
    assert weights[0] > weights[1] and weights[2] == 0 and weights.sum() == pytest.approx(2.0)
    logits = torch.tensor([[[0.0, 5.0, 0.0]]])
    easy = focal_loss(logits, torch.tensor([[1]]), 2.0, torch.ones(3))
    hard = focal_loss(logits, torch.tensor([[0]]), 2.0, torch.ones(3))
    assert easy < 1e-3 < hard
    assert focal_loss(logits, torch.tensor([[0]]), 0.0, torch.ones(3)) == pytest.approx(
        torch.nn.functional.cross_entropy(logits[0], torch.tensor([0])).item(), rel=1e-5
    )


def test_focal_loss_on_soft_targets_is_the_mixture_of_the_hard_ones():
    logits = torch.randn(2, 3, 3)
    hard = torch.tensor([[0, 1, 2], [1, 1, 0]])
    one_hot = torch.nn.functional.one_hot(hard, 3).float()
    weights = torch.tensor([2.0, 0.5, 1.0])
    assert focal_loss(logits, one_hot, 2.0, weights) == pytest.approx(
        focal_loss(logits, hard, 2.0, weights).item()
    )
    soft = 0.25 * one_hot + 0.75 * torch.nn.functional.one_hot(torch.ones_like(hard), 3).float()
    mixed = 0.25 * focal_loss(logits, hard, 2.0, weights) + 0.75 * focal_loss(
        logits, torch.ones_like(hard), 2.0, weights
    )
    assert focal_loss(logits, soft, 2.0, weights) == pytest.approx(mixed.item(), rel=1e-5)


def test_metrics_on_a_known_confusion():
    target = torch.tensor([[0, 1, 1, 1]])
    predicted = torch.tensor([[0, 0, 1, 1]])
    metrics = classification_metrics(predicted, target)
    assert metrics["per_class"]["skip"]["precision"] == 0.5 and metrics["per_class"]["execute"][
        "recall"
    ] == pytest.approx(2 / 3)
    assert metrics["confusion"] == [[1, 0, 0], [1, 2, 0], [0, 0, 0]]
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)  # repeat never occurs: not averaged


def _train_small(features, labels):
    """300 examples x 4 layers x 2 windows x 6 dims, every window present, 30% held out."""
    return train_routers(
        features,
        torch.ones(300, 2, dtype=torch.bool),
        labels,
        RouterConfig(num_layers=4, hidden_size=6, bottleneck=16, windows=2),
        TrainConfig(epochs=30, lr=3e-3, val_fraction=0.3),
    )


def test_routers_learn_a_learnable_rule_and_beat_trivial_predictors():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(300, 4, 2, 6, generator=generator)
    labels = torch.ones(300, 4, dtype=torch.long)
    labels[features[:, :, 0, 0] > 1.0] = 0  # skip when the first feature is large (~16%)
    labels[features[:, :, 0, 1] > 1.5] = 2  # repeat when the second one is (~6%)
    result = _train_small(features, labels)
    best_trivial = max(b["macro_f1"] for b in result.baselines.values())
    assert result.validation["macro_f1"] > best_trivial + 0.2
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]


def test_features_follow_the_labelled_path_and_leave_the_model_untouched():
    loaded = tiny_loaded()
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    scorer = ExampleScorer(PathEngine(loaded.model), loaded.tokenizer, {})
    examples = [Example(f"t/{i}", "t", f"Question {i} is about what?", ["a", "b"], 0) for i in range(3)]
    labels = torch.tensor([[1, 0, 1, 2, 1, 1], [1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 1, 2]])
    features, window_mask = build_features(scorer, examples, labels, windows=4, batch_size=2)
    assert features.shape == (3, 6, 4, 64) and window_mask.all()
    # layer 3's input for example 0 is the hidden state after layers 0..2 along its labels (1, 0, 1)
    engine = scorer.engine
    ids = torch.tensor([scorer.prompt_ids(examples[0])])
    state = engine.run(engine.embed(ids), labels[:1], stop=3)
    expected, _ = pool_windows(state.hidden, torch.ones_like(ids, dtype=torch.bool), 4)
    torch.testing.assert_close(features[0, 3].float(), expected[0], rtol=2e-2, atol=2e-2)
    train_routers(
        features, window_mask, labels, RouterConfig(6, 64, 8, 4), TrainConfig(epochs=2, val_fraction=0.34)
    )
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())


def test_routed_model_decides_per_row_and_respects_skip_runs():
    loaded = tiny_loaded()
    config = RouterConfig(6, 64, 8, 4, base_fingerprint=weights_fingerprint(loaded.model))
    routers = RouterSet(config)
    with torch.no_grad():  # routers that always want to skip
        for router in routers.routers:
            router.out.bias.copy_(torch.tensor([10.0, 0.0, 0.0]))
    routed = RoutedModel(loaded, routers)
    answers = routed.generate(["Hi there", "What is two plus two?"], max_new_tokens=3)
    for answer in answers:
        assert answer.path == (0, 0, 1, 0, 0, 1)  # skips forced back to execute after a run of 2
        assert answer.blocks == 2
    unconstrained = RoutedModel(loaded, routers, enforce_constraints=False).generate(["Hi"], max_new_tokens=2)
    assert unconstrained[0].path == (0,) * 6
    with pytest.raises(
        ConfigError, match=r"prompts \[1\] with 4 new tokens exceed the model's context of 512"
    ):
        routed.generate(["Hi", "x" * 600], max_new_tokens=4)  # refused before any forward
    with pytest.raises(ConfigError, match="longer than the model's context of 512 tokens"):
        routed.choose(["x" * 600], [["a", "b"]])


def test_generation_grouped_by_path_gives_every_prompt_the_tokens_it_gets_alone():
    loaded = tiny_loaded()
    torch.manual_seed(3)
    routers = RouterSet(RouterConfig(6, 64, 8, 4, routing=Routing(max_skip_run=None, max_blocks=None)))
    with torch.no_grad():  # every layer executes but 3, whose random router splits the prompts
        for layer, router in enumerate(routers.routers):
            if layer != 3:
                router.out.bias.copy_(torch.tensor([0.0, 10.0, 0.0]))
    routed = RoutedModel(loaded, routers)
    prompts = [
        "Hi there",
        "What is two plus two?",
        "Name a colour.",
        "Why is the sky blue?",
        "Hello",
        "Count!",
    ]
    grouped = routed.generate(prompts, max_new_tokens=5, batch_size=2, group_by_path=True)
    assert 1 < len({a.path for a in grouped}) < len(prompts)  # groups of several rows, and several groups
    alone = [routed.generate([p], max_new_tokens=5)[0] for p in prompts]
    assert [(a.path, a.tokens, a.text) for a in grouped] == [(a.path, a.tokens, a.text) for a in alone]
    assert grouped == routed.generate(prompts, max_new_tokens=5)  # one batch of every prompt
    assert grouped == routed.generate(prompts, max_new_tokens=5, batch_size=4)


def test_rows_by_path_keeps_first_appearance_order():
    counts = torch.tensor([[1, 0, 1], [1, 1, 1], [1, 0, 1], [2, 1, 0]])
    assert rows_by_path(counts) == {(1, 0, 1): [0, 2], (1, 1, 1): [1], (2, 1, 0): [3]}


def test_routing_keeps_the_block_budget_the_labels_were_searched_under():
    loaded = tiny_loaded()
    routing = Routing(max_skip_run=1, max_blocks=8)
    routers = RouterSet(RouterConfig(6, 64, 8, 4, routing=routing))
    with torch.no_grad():  # routers that always want to repeat
        for router in routers.routers:
            router.out.bias.copy_(torch.tensor([0.0, 0.0, 10.0]))
    (answer,) = RoutedModel(loaded, routers).generate(["What is two plus two?"], max_new_tokens=2)
    assert (
        answer.path == (2, 2, 2, 1, 1, 0) and answer.blocks == 8
    )  # repeats while the budget can still be kept
    tight = RouterSet(RouterConfig(6, 64, 8, 4, routing=Routing(max_skip_run=1, max_blocks=4)))
    with torch.no_grad():  # routers that always want to execute, under a budget that needs skips
        for router in tight.routers:
            router.out.bias.copy_(torch.tensor([0.0, 10.0, 0.0]))
    (answer,) = RoutedModel(loaded, tight).generate(["What is two plus two?"], max_new_tokens=2)
    assert answer.blocks <= 4 and LayerPath(answer.path).is_valid(6, tight.config.routing.constraints)


def test_the_knob_comes_from_the_folder_unless_given(tmp_path):
    loaded = tiny_loaded()
    routers = RouterSet(RouterConfig(6, 64, 8, 4, base_fingerprint=weights_fingerprint(loaded.model)))
    assert RoutedModel(loaded, routers).knob == 0.0  # uncalibrated: the routers' own choice
    routers.with_knob(-0.3).save(tmp_path / "calibrated")
    assert RoutedModel.from_folder(loaded, tmp_path / "calibrated").knob == -0.3
    assert RoutedModel.from_folder(loaded, tmp_path / "calibrated", knob=0.2).knob == 0.2
    routed = RoutedModel(loaded, routers)
    for bad in (3.0, "high", float("nan")):  # a served request's knob is checked too
        with pytest.raises(ConfigError, match="the routing knob must be a number in"):
            routed.knob = bad


def _reference_logits(routers, layer, windows, mask):
    """The paper's router written out for one layer: the MLP on each standardised window, logits averaged."""
    router = routers.routers[layer]
    standardised = (windows - routers.input_mean[layer]) * routers.input_scale[layer]
    logits = router.out(torch.nn.functional.gelu(router.up(standardised), approximate="tanh"))  # (B, W, 3)
    weights = mask.float().unsqueeze(-1)
    return (logits * weights).sum(1) / weights.sum(1)


def test_batched_forward_and_the_folded_routers_equal_the_paper_router_on_standardised_inputs():
    routers = RouterSet(RouterConfig(num_layers=3, hidden_size=8, bottleneck=5, windows=2))
    features, mask = 50 * torch.randn(4, 3, 2, 8) + 7, torch.tensor([[True, True], [True, False]] * 2)
    features[..., 0] += 24_000  # a massive activation: the mean far above its spread must not cost precision
    routers.fit_input_statistics(features, mask)
    each = torch.stack([_reference_logits(routers, i, features[:, i], mask) for i in range(3)], dim=1)
    folded = [
        router.logits(features[:, i], window_average(mask)) for i, router in enumerate(routers.folded())
    ]
    torch.testing.assert_close(routers(features, mask), each)
    torch.testing.assert_close(torch.stack(folded, dim=1), each)


def test_input_statistics_ignore_missing_windows_and_survive_save_load(tmp_path):
    routers = RouterSet(RouterConfig(num_layers=2, hidden_size=3, bottleneck=4, windows=2))
    features = torch.randn(64, 2, 2, 3) * torch.tensor([1.0, 100.0, 1e4]) + 500
    mask = torch.ones(64, 2, dtype=torch.bool)
    mask[:, 1] = False
    features[:, :, 1] = 1e9  # windows a prompt does not have never count
    routers.fit_input_statistics(features, mask)
    standardised = routers.standardize(features[:, :, :1])[:, :, 0]  # (B, L, D): window 0 of every row
    torch.testing.assert_close(standardised.mean(0), torch.zeros(2, 3), atol=1e-4, rtol=0)
    torch.testing.assert_close(standardised.std(0, unbiased=False), torch.ones(2, 3), atol=1e-4, rtol=0)
    routers.save(tmp_path / "r")
    loaded = RouterSet.load(tmp_path / "r")
    assert torch.equal(loaded.input_mean, routers.input_mean) and torch.equal(
        loaded.input_scale, routers.input_scale
    )


def test_routers_learn_despite_massive_activations():
    """Like SmolLM2 from layer 12 on: one dimension of the first window sits near 24,000 and the others are
    hundreds of times larger than the signal. Standardised inputs keep the rule learnable."""
    generator = torch.Generator().manual_seed(0)
    signal = torch.randn(300, 4, 2, 6, generator=generator)
    labels = torch.ones(300, 4, dtype=torch.long)
    labels[signal[:, :, 0, 0] > 1.0] = 0
    features = 300 * signal
    features[:, :, 0, 5] += 24_000 + 500 * torch.randn(300, 4, generator=generator)
    result = _train_small(features, labels)
    assert result.validation["macro_f1"] > max(b["macro_f1"] for b in result.baselines.values()) + 0.2


def _cost_data(n=300, layers=6, dims=8, seed=0):
    """Questions whose cheapest skip is layer 4 when feature 0 is positive, else layer 5; layers 0..2 cost a lot."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n, layers, 2, dims, generator=generator)
    positive = features[:, 2, :, 0].mean(1) > 0  # read at the decision layer (2 of 6)
    costs = torch.full((n, layers), 1.0, dtype=torch.float64)
    costs[:, 3] = 0.05
    costs[:, 4] = torch.where(positive, 0.001, 0.5).double()
    costs[:, 5] = torch.where(positive, 0.5, 0.001).double()
    costs[:, :3] = float("nan")  # not searched: before the decision layer
    keeps = (costs < 0.01).double()
    keeps[:, :3] = float("nan")
    return features, torch.ones(n, 2, dtype=torch.bool), costs, keeps


def test_a_cost_router_learns_which_skip_is_cheapest_and_beats_the_best_static_skip():
    features, mask, costs, keeps = _cost_data()
    config = RouterConfig(6, 8, windows=2, kind="costs", decision_layer=2, candidates=[5])
    result = train_cost_router(
        features, mask, costs, keeps, config, TrainConfig(candidates=3, val_fraction=0.3, max_skips=2)
    )
    validation = result.validation
    assert result.routers.config.candidates == [3, 4, 5]  # layers after the decision layer
    assert (
        validation["val_changed"] < 0.1 < validation["static_changed"]
    )  # static keeps only half the answers
    assert validation["val_mse"] < validation["trivial_mse"] and validation["oracle_changed"] == 0.0
    quantiles = result.routers.cost.quantiles
    assert bool((quantiles[1:] >= quantiles[:-1]).all())
    assert result.routers.cost.threshold(1.0) == -math.inf
    assert result.routers.cost.threshold(-1.0) == pytest.approx(float(quantiles[-1]))
    # the knob counts skips: p skips (1 - p) / 2 * max_skips layers per training question on average
    pooled = window_mean(features[:, 2].double(), mask).float()
    predicted = result.routers.cost(pooled).tolist()
    for knob, skips in ((-1.0, 2.0), (0.0, 1.0), (0.5, 0.5)):
        plans = cost_decisions(predicted, [3, 4, 5], result.routers.cost.threshold(knob), max_skips=2)
        assert sum(map(len, plans)) / len(plans) == pytest.approx(skips, abs=0.1)


def test_cost_decisions_skip_the_cheapest_candidates_below_the_threshold():
    costs = [[-5.0, -1.0, -3.0], [0.0, 2.0, float("nan")]]
    assert cost_decisions(costs, [3, 4, 5], threshold=-2.0, max_skips=None) == [[3, 5], []]
    assert cost_decisions(costs, [3, 4, 5], threshold=10.0, max_skips=1) == [[3], [3]]  # NaN is never skipped
    assert cost_decisions(costs, [3, 4, 5], threshold=10.0, max_skips=None) == [[3, 4, 5], [3, 4]]


def test_routed_generation_with_a_cost_router_skips_its_planned_layers(tmp_path):
    loaded = tiny_loaded()
    routers = tiny_cost_routers(loaded, [0.0, 1.0, -3.0], Routing(max_skips=1))  # layer 5 cheapest
    routers.save(tmp_path / "r")
    loaded_routers = RouterSet.load(tmp_path / "r", loaded.model)
    assert torch.equal(loaded_routers.cost.bias, routers.cost.bias)
    answers = RoutedModel(loaded, loaded_routers, knob=-1.0).generate(
        ["Hi there", "Two plus two?"], max_new_tokens=2
    )
    assert [a.path for a in answers] == [(1, 1, 1, 1, 1, 0)] * 2
    (none,) = RoutedModel(loaded, loaded_routers, knob=1.0).generate(["Hi there"], max_new_tokens=2)
    assert none.path == (1,) * 6  # knob 1 skips nothing
