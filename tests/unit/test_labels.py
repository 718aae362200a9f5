"""Label rules: which scored path becomes an example's label. `shortest` agrees with the search's own kept
result; `consensus` keeps the skips most correct paths share and is always a path the search scored; `soft`
spreads each layer's label over every rewarded path; `skip_cost` measures what each single skip costs."""

import math

import pytest

from drllm_core.labels import LabelRule, consensus_counts, kept_path, labelled, skip_costs, soft_labels
from drllm_core.paths import LayerPath
from drllm_core.rewards import Outcome
from drllm_core.search import SearchConfig, example_rng, search

L = 8
DEFAULT = LayerPath.default(L)


def skipping(*layers: int) -> LayerPath:
    path = DEFAULT
    for layer in layers:
        path = path.with_count(layer, 0)
    return path


def record(scored: list[tuple[LayerPath, float, float]], default_correct: bool = True) -> dict:
    return {
        "example_id": "q",
        "num_layers": L,
        "default_correct": default_correct,
        "default_margin": scored[0][2],
        "scored_labels": [list(p.counts) for p, _, _ in scored],
        "scored_reward": [reward for _, reward, _ in scored],
        "scored_margin": [margin for _, _, margin in scored],
    }


# Correct paths all skip layer 3; each adds skips elsewhere, in places they disagree on. The shortest one
# (four skips) is not the one closest to what they share.
SHARED = [
    (DEFAULT, 1.0, 2.0),
    (skipping(3, 6), 1.0, 1.5),
    (skipping(3, 0), 1.0, 1.2),
    (skipping(3, 5), 1.0, 1.1),
    (skipping(3, 0, 5, 7), 1.0, 1.0),
    (skipping(1, 2, 4, 6, 7), 0.0, -1.0),  # shortest of all, but wrong
]


def test_shortest_is_the_fewest_blocks_among_rewarded_paths():
    path, margin = kept_path(record(SHARED), LabelRule("shortest"))
    assert path == skipping(3, 0, 5, 7) and margin == 1.0


def test_consensus_keeps_the_shared_skip_and_picks_a_scored_path():
    rewarded = [p for p, reward, _ in SHARED if reward == 1.0]
    assert consensus_counts(rewarded, 0.6) == skipping(3).counts
    path, margin = kept_path(record(SHARED), LabelRule("consensus", 0.6))
    # skipping(3) itself was never scored: the nearest scored paths differ in one layer; ties go to shortest
    # first (all three save 2 blocks), then the larger margin
    assert path == skipping(3, 6) and margin == 1.5
    # a higher share leaves no consensus skip: the default path is the nearest correct one
    assert kept_path(record(SHARED), LabelRule("consensus", 0.9))[0] == DEFAULT


def test_no_rewarded_path_drops_the_example():
    only_wrong = record([(DEFAULT, 0.0, -0.5), (skipping(2), 0.0, -0.1)], default_correct=False)
    for rule in (LabelRule("shortest"), LabelRule("consensus")):
        row = labelled(only_wrong, rule)
        assert not row["kept"] and row["labels"] is None and not row["wrong_to_correct"]


def test_labelled_fields_describe_the_kept_path():
    flip = record([(DEFAULT, 0.0, -0.5), (skipping(2, 3), 1.0, 1.3)], default_correct=False)
    row = labelled(flip, LabelRule("shortest"))
    assert row["kept"] and row["wrong_to_correct"] and "best_correct" not in row
    assert row["labels"] == list(skipping(2, 3).counts) and row["order"] == skipping(2, 3).order
    assert (row["blocks"], row["blocks_saved"], row["best_margin"]) == (L - 2, 2, 1.3)


def test_shortest_rule_matches_the_search_kept_result():
    """The search's own kept result and the label rule over its scored paths are the same path."""
    scored: dict[LayerPath, Outcome] = {}

    def rewards(paths):
        for path in paths:
            good = path.counts[1] != 0 and path.blocks >= L - 3
            scored.setdefault(path, Outcome(good, float(path.counts[4]), float(good)))
        return [scored[p] for p in paths]

    for seed in range(5):
        scored.clear()
        result = search(rewards, L, SearchConfig(simulations=30), example_rng(seed, "x"))
        as_record = record([(p, o.reward, o.margin) for p, o in scored.items()])
        assert kept_path(as_record, LabelRule("shortest"))[0] == result.best


@pytest.mark.parametrize("rule,share", [("longest", 0.7), ("consensus", 0.5), ("consensus", 1.2)])
def test_bad_rule_params_are_named(rule, share):
    with pytest.raises(ValueError, match="label_rule|consensus_share"):
        LabelRule(rule, share)


def test_generation_margins_may_be_nan():
    scored = [(DEFAULT, 1.0, math.nan), (skipping(2), 1.0, math.nan)]
    assert kept_path(record(scored), LabelRule("shortest"))[0] == skipping(2)


def test_soft_labels_weigh_every_rewarded_path_towards_shorter_ones():
    soft = soft_labels(record(SHARED), LabelRule("soft", soft_beta=0.0))
    assert len(soft) == L and all(sum(layer) == pytest.approx(1.0) for layer in soft)
    assert soft[3] == pytest.approx([0.8, 0.2, 0.0])  # 4 of the 5 rewarded paths skip layer 3
    assert soft[1] == pytest.approx([0.0, 1.0, 0.0])  # only the wrong path skips layer 1
    shorter = soft_labels(record(SHARED), LabelRule("soft", soft_beta=10.0))
    assert shorter[3][0] > 0.8 and shorter[7][0] > soft[7][0]  # the 4-skip path weighs more
    row = labelled(record(SHARED), LabelRule("soft"))
    assert (
        row["kept"]
        and row["labels"] == [1] * L
        and row["soft_labels"] == soft_labels(record(SHARED), LabelRule("soft"))
    )
    assert soft_labels(record([(DEFAULT, 0.0, -1.0)]), LabelRule("soft")) is None


def test_skip_costs_are_the_kl_of_each_single_skip_and_whether_the_answer_stays():
    singles = [(DEFAULT, 1.0, 1.0), (skipping(2), 1.0, 0.5), (skipping(5), 0.0, -0.2)]
    scored = record(singles)
    scored |= {
        "scored_scores": [[-1.0, -2.0], [-1.0, -1.5], [-2.0, -1.0]],
        "scored_prediction": ["A", "A", "B"],
        "scored_correct": [True, True, False],
    }
    costs, keeps = skip_costs(scored)
    p, q = torch_softmax([-1.0, -2.0]), torch_softmax([-1.0, -1.5])
    assert costs[2] == pytest.approx(sum(a * math.log(a / b) for a, b in zip(p, q, strict=True)))
    assert (
        costs[5] > costs[2] > 0
        and math.isnan(costs[0])
        and keeps[2:6:3] == [1.0, 0.0]
        and math.isnan(keeps[0])
    )
    row = labelled(scored, LabelRule("skip_cost"))
    assert row["kept"] and row["labels"] == [1] * L and row["costs"][2] == costs[2]
    assert not row["wrong_to_correct"]


def test_a_faithful_label_of_a_wrong_question_is_not_a_wrong_to_correct_flip():
    scored = record([(DEFAULT, 1.0, -0.5), (skipping(2), 1.0, -0.4)], default_correct=False)
    scored["scored_correct"] = [False, False]  # the faithful reward kept the (wrong) default answer
    row = labelled(scored, LabelRule("shortest"))
    assert row["kept"] and row["labels"] == list(skipping(2).counts) and not row["wrong_to_correct"]


def torch_softmax(values):
    exp = [math.exp(v - max(values)) for v in values]
    return [e / sum(exp) for e in exp]
