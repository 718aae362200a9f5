"""Path search: a real branching tree that beats the published chain, constraints, kept-result rules, and
prefix-reusing rewards that agree with plain scoring."""

import math

import numpy as np
import pytest
import torch

from drllm_core.engine import PathEngine
from drllm_core.paths import LayerPath, PathConstraints
from drllm_core.rewards import Outcome, PathRewards
from drllm_core.search import SearchConfig, apply_edit, example_rng, search, valid_edits
from drllm_core.tasks.schema import Example
from drllm_core.tasks.scorer import ExampleScorer
from tests.conftest import tiny_loaded

L = 6
DEFAULT = LayerPath.default(L)
TRAP = DEFAULT.with_count(1, 0)  # a first edit that answers wrongly...
TARGET = TRAP.with_count(3, 0).with_count(4, 0)  # ...behind which lies the shortest correct path


def deceptive_rewards(seen=None):
    """Correct: the default, any path with at most one skip, and TARGET (3 blocks saved). Wrong: TRAP, and
    everything with two or more skips except TARGET. Every sibling of TRAP looks better than TRAP."""

    def rewards(paths):
        outcomes = []
        for path in paths:
            if seen is not None:
                seen.append(path)
            good = path == TARGET or (path != TRAP and path.blocks >= L - 1)
            outcomes.append(Outcome(good, math.nan, float(good)))
        return outcomes

    return rewards


def _hits(strategy, seeds=50, budget=150):
    config = SearchConfig(strategy=strategy, simulations=budget)
    return sum(
        search(deceptive_rewards(), L, config, example_rng(s, "x")).best == TARGET for s in range(seeds)
    )


def test_mcts_finds_the_path_behind_a_deceptive_first_edit_and_chain_does_not():
    mcts, chain = _hits("mcts"), _hits("chain")
    assert mcts >= 45, f"mcts found the target for {mcts}/50 seeds"
    assert chain <= 10, f"chain found the target for {chain}/50 seeds"


def test_mcts_really_branches():
    seen = []
    search(deceptive_rewards(seen), L, SearchConfig(simulations=40), example_rng(0, "x"))
    first_edits = {next(i for i, c in enumerate(p.counts) if c != 1) for p in seen if not p.is_default}
    assert len(first_edits) >= 3  # siblings at the root, not one chain


@pytest.mark.parametrize("strategy", ["mcts", "chain", "random"])
def test_every_proposal_respects_the_constraints(strategy):
    seen = []
    config = SearchConfig(strategy=strategy, simulations=60, max_blocks=L)
    result = search(deceptive_rewards(seen), L, config, example_rng(1, "y"))
    assert all(p.is_valid(L, config.constraints) for p in seen)
    assert result.simulations == 60


def test_results_are_reproducible_per_example():
    config = SearchConfig(simulations=30)
    first = search(deceptive_rewards(), L, config, example_rng(7, "a"))
    again = search(deceptive_rewards(), L, config, example_rng(7, "a"))
    assert first.best == again.best and first.trace == again.trace


def test_kept_result_is_shortest_then_fewest_distinct_layers():
    skip_two = DEFAULT.with_count(2, 0).with_count(3, 0)  # 4 blocks, 4 distinct layers
    repeat_and_skips = (
        DEFAULT.with_count(0, 0).with_count(2, 0).with_count(4, 0).with_count(5, 2)
    )  # 4 blocks, 3

    def rewards(paths):
        return [
            Outcome(
                p in (skip_two, repeat_and_skips, DEFAULT),
                math.nan,
                float(p in (skip_two, repeat_and_skips, DEFAULT)),
            )
            for p in paths
        ]

    from drllm_core.search import _Tracker

    tracker = _Tracker(rewards, SearchConfig(simulations=5), L)
    tracker.score([skip_two, repeat_and_skips])
    assert tracker.best == repeat_and_skips


def test_early_stop_on_wrong_to_correct():
    flip = DEFAULT.with_count(5, 2)

    def rewards(paths):
        return [
            Outcome(p != DEFAULT and p.counts[5] == 2, math.nan, float(p != DEFAULT and p.counts[5] == 2))
            for p in paths
        ]

    stopped = search(
        rewards, L, SearchConfig(simulations=200, early_stop=True, parallel=1), example_rng(0, "z")
    )
    assert not stopped.default_outcome.correct and stopped.best_outcome.correct  # wrong to correct
    assert stopped.stopped_early and stopped.simulations < 200
    assert stopped.best.counts[5] == 2 and flip.blocks == L + 1


def test_edits_and_their_validity():
    assert apply_edit(DEFAULT, 2, "skip2").counts == (1, 1, 0, 0, 1, 1)
    assert apply_edit(DEFAULT, 2, "repeat0") == DEFAULT  # the published code's no-op
    edits = valid_edits(DEFAULT.with_count(1, 0).with_count(2, 0), PathConstraints())
    assert (3, "skip1") not in edits  # would skip three layers in a row
    assert all(position not in (1, 2) for position, _ in edits) and (0, "skip1") not in edits


# ---- rewards on a real (tiny) model -------------------------------------------------------------------------
QUESTION = Example("arc_easy/t1", "arc_easy", "Which one is a gas?", ["rock", "steam", "ice", "wood"], 1)


def _scorer():
    loaded = tiny_loaded()
    return ExampleScorer(PathEngine(loaded.model), loaded.tokenizer, {})


def _random_paths(count, seed):
    rng = np.random.default_rng(seed)
    paths = []
    while len(paths) < count:
        path = LayerPath(tuple(int(c) for c in rng.integers(0, 3, L)))
        if path.is_valid(L):
            paths.append(path)
    return paths


@pytest.mark.parametrize("tasks", [{}, {"defaults": {"chat_template": True}}], ids=["plain", "chat"])
def test_prefix_reusing_rewards_agree_with_plain_scoring_and_cost_less(tasks, monkeypatch):
    loaded = tiny_loaded()
    scorer = ExampleScorer(PathEngine(loaded.model), loaded.tokenizer, tasks)
    rewards = PathRewards(scorer, QUESTION)
    paths = _random_paths(12, seed=3)
    outcomes = rewards(paths[:5]) + rewards(paths[5:])
    monkeypatch.setattr(ExampleScorer, "shared_prefix", None)  # plain scoring runs whole rows
    whole = ExampleScorer(scorer.engine, loaded.tokenizer, tasks)
    plain = whole.score([QUESTION] * len(paths), torch.tensor([p.counts for p in paths]))
    for outcome, decision in zip(outcomes, plain, strict=True):
        assert outcome.correct == decision.correct
        assert outcome.margin == pytest.approx(decision.margin, abs=1e-3)
    naive = sum(p.blocks for p in paths)
    assert rewards.layer_evaluations < naive
    before = rewards.layer_evaluations
    rewards(paths)  # memoised: free
    assert rewards.layer_evaluations == before


def test_paths_scored_together_run_each_shared_prefix_once():
    scorer = _scorer()
    layers = scorer.engine.num_layers
    paths = [DEFAULT.with_count(3, 0), DEFAULT.with_count(3, 0).with_count(4, 0), DEFAULT.with_count(4, 0)]
    together = PathRewards(scorer, QUESTION)
    outcomes = together(paths)
    # layers 0-2 once for all three; layer 3 for the path that runs it; layer 4 for the one of the two
    # prefixes that runs it; then every layer after for each path
    assert together.layer_evaluations == 3 + 1 + 1 + 3 * (layers - 5)
    for path, outcome in zip(paths, outcomes, strict=True):
        alone = PathRewards(scorer, QUESTION)([path])[0]
        assert outcome.scores == pytest.approx(alone.scores, abs=1e-5)
        assert outcome.prediction == alone.prediction


def test_the_prefix_cache_keeps_to_its_budget_and_changes_no_outcome():
    scorer = _scorer()
    paths = _random_paths(12, seed=3)
    roomy = PathRewards(scorer, QUESTION)
    state_bytes = roomy._root.hidden.nbytes
    tight = PathRewards(scorer, QUESTION, cache_mb=4 * state_bytes / 2**20)  # the root and 3 prefixes
    for rewards in (roomy, tight):
        outcomes = rewards(paths[:5]) + rewards(paths[5:])
        assert [o.correct for o in outcomes] == [o.correct for o in roomy(paths)]
        assert [o.margin for o in outcomes] == pytest.approx([o.margin for o in roomy(paths)], abs=1e-4)
    assert len(tight._states) == 4 and () in tight._states and len(roomy._states) > 4
    stored = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tight._states.values()}
    assert sum(stored.values()) <= 4 * state_bytes  # copies: no cached row holds its whole batch
    assert tight.prefix_cache_bytes == 4 * state_bytes < roomy.prefix_cache_bytes
    assert tight.layer_evaluations > roomy.layer_evaluations  # evicted prefixes were recomputed


def test_margin_reward_needs_a_clear_win():
    scorer = _scorer()
    plain = PathRewards(scorer, QUESTION)([DEFAULT])[0]
    strict = PathRewards(scorer, QUESTION, reward="margin", margin=abs(plain.margin) + 1.0)([DEFAULT])[0]
    assert strict.reward == 0.0
    assert plain.reward == float(plain.correct)


def test_the_faithful_reward_keeps_the_default_answer_right_or_wrong():
    scorer = _scorer()
    paths = [DEFAULT, *(DEFAULT.with_count(layer, 0) for layer in range(DEFAULT.num_layers))]
    plain = PathRewards(scorer, QUESTION)(paths)
    faithful = PathRewards(scorer, QUESTION, reward="faithful")(paths)
    assert faithful[0].reward == 1.0  # the default path keeps its own answer, whether it is right or not
    for p, f in zip(plain, faithful, strict=True):
        assert f.prediction == p.prediction and f.correct == p.correct  # the same paths, scored alike
        assert f.reward == float(f.prediction == plain[0].prediction)  # correctness does not enter
        assert f.lead == pytest.approx(max(f.scores) - sorted(f.scores)[-2])
    demanding = PathRewards(scorer, QUESTION, reward="faithful", margin=faithful[0].lead + 1.0)(paths)
    assert demanding[0].reward == 0.0  # the answer must lead the runner-up by the margin
    alone = PathRewards(scorer, QUESTION, reward="faithful")(paths[1:])  # scores the default first by itself
    assert [o.reward for o in alone] == [o.reward for o in faithful[1:]]


def test_singles_scores_every_single_skip_at_half_a_forward_each():
    scorer = _scorer()
    rewards = PathRewards(scorer, QUESTION)
    result = search(rewards, 6, SearchConfig(strategy="singles", simulations=2), example_rng(0, "q"))
    assert set(rewards.memo) == {DEFAULT, *(DEFAULT.with_count(layer, 0) for layer in range(6))}
    assert result.simulations == 6  # every layer, whatever the simulation budget of the other strategies
    assert rewards.layer_evaluations == 6 + (
        5 + 4 + 3 + 2 + 1 + 0
    )  # the default, then each skip after its layer
