"""Path search for one example: UCT over edit trees (`mcts`) and the two baselines at the same budget.

A tree node is a complete path, reached from the default path by edits (skip one layer, skip two
consecutive layers, repeat one layer once) on layers its parent still executes once; the tree holds each
path once. Selection is the paper's UCT score with a length penalty that is not backed up, a random child
with probability `random_child`, and progressive widening; each round scores `parallel` leaves in one
batched forward. `chain` is the published code's search (one chain of random edits, a quarter of them
no-ops), `random` independent random edits, and `singles` every single-layer skip (the skip-cost labels'
data). docs/method.md explains the choices.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from drllm_core.errors import ConfigError
from drllm_core.labels import shortest_first
from drllm_core.paths import EXECUTE, REPEAT, SKIP, LayerPath, PathConstraints
from drllm_core.rewards import Outcome

STRATEGIES = ("mcts", "chain", "random", "singles")
EDIT_KINDS = ("skip1", "skip2", "repeat")


@dataclass(frozen=True)
class SearchConfig:
    """The `search` knobs of params.yaml; defaults are the paper's where it has one."""

    strategy: str = "mcts"  # mcts | chain | random
    simulations: int = 50  # paths proposed per example (paper: 50)
    exploration: float = 1.8  # c in the UCT score
    length_penalty: float = 3.0  # lambda: penalty per block executed, as a share of L
    random_child: float = 0.1  # probability of descending to a random child instead of the best
    widening: float = 1.0  # progressive widening: children allowed = ceil(widening * visits**power)
    widening_power: float = 0.5
    parallel: int = 4  # leaves scored per batched forward (virtual loss keeps them apart)
    random_max_edits: int = 3  # `random`: edits per independent draw, 1..this
    early_stop: bool = False  # the paper's stops: on W->C, or on a correct path >= 2 blocks shorter
    max_skip_run: int | None = 2  # longest run of skipped layers allowed
    max_blocks: int | None = None  # budget of blocks per token (None: 2L)
    seed: int = 0

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown search strategy {self.strategy!r}; use one of {STRATEGIES}")
        for name in ("simulations", "parallel", "random_max_edits"):
            if getattr(self, name) < 1:
                raise ConfigError(f"search.{name} must be at least 1, got {getattr(self, name)}")
        if self.max_skip_run is not None and self.max_skip_run < 0:
            raise ConfigError(
                f"search.max_skip_run must be at least 0 (or null: unlimited), got {self.max_skip_run}"
            )
        if self.max_blocks is not None and self.max_blocks < 1:
            raise ConfigError(f"search.max_blocks must be at least 1 (or null: 2L), got {self.max_blocks}")
        for name in ("random_child", "widening_power"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"search.{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.widening <= 0 or self.exploration < 0 or self.length_penalty < 0:
            raise ConfigError(
                "search.widening must be positive, search.exploration and search.length_penalty at least 0"
            )

    @property
    def constraints(self) -> PathConstraints:
        return PathConstraints(max_skip_run=self.max_skip_run, max_blocks=self.max_blocks)


@dataclass
class SearchResult:
    best: LayerPath | None  # shortest path with reward 1, None when there is none
    best_outcome: Outcome | None
    default_outcome: Outcome
    simulations: int  # paths proposed (memo hits included)
    evaluations: int  # distinct paths scored
    stopped_early: bool = False
    trace: list[int] = field(default_factory=list)  # blocks of the best path after each simulation


Rewards = Callable[[list[LayerPath]], list[Outcome]]


def example_rng(seed: int, example_id: str) -> np.random.Generator:
    """Each example gets its own stream, so results do not depend on order, sharding or workers."""
    digest = hashlib.sha256(f"{seed}:{example_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def apply_edit(path: LayerPath, position: int, kind: str) -> LayerPath:
    counts = list(path.counts)
    if kind == "skip1":
        counts[position] = SKIP
    elif kind == "skip2":
        counts[position] = counts[position + 1] = SKIP
    elif kind == "repeat":
        counts[position] = REPEAT
    else:  # "repeat0": the published code's no-op edit
        pass
    return LayerPath(tuple(counts))


def valid_edits(path: LayerPath, constraints: PathConstraints) -> list[tuple[int, str]]:
    """Edits of layers the path still executes once that keep it valid; (position, kind). Edits never
    undo or stack on an earlier edit, so the edits of a path are a set and their order does not matter."""
    layers = path.num_layers
    edits = []
    for position in range(layers):
        for kind in EDIT_KINDS:
            touched = (position, position + 1) if kind == "skip2" else (position,)
            if touched[-1] >= layers or any(path.counts[i] != EXECUTE for i in touched):
                continue
            if apply_edit(path, position, kind).is_valid(layers, constraints):
                edits.append((position, kind))
    return edits


class _Tracker:
    """Scores proposals through the rewards, counts the budget and keeps the best path so far."""

    def __init__(self, rewards: Rewards, config: SearchConfig, num_layers: int):
        self.rewards = rewards
        self.config = config
        self.num_layers = num_layers
        self.simulations = 0
        self.order: dict[LayerPath, int] = {}
        default = LayerPath.default(num_layers)
        self.default_outcome = rewards([default])[0]
        self.best: LayerPath | None = None
        self.best_outcome: Outcome | None = None
        self._consider(default, self.default_outcome)
        self.trace: list[int] = []
        self.stopped_early = False

    @property
    def budget_left(self) -> int:
        return self.config.simulations - self.simulations

    def score(self, paths: list[LayerPath]) -> list[Outcome]:
        outcomes = self.rewards(paths)
        for path, outcome in zip(paths, outcomes, strict=True):
            self.simulations += 1
            self._consider(path, outcome)
            self.trace.append(self.best.blocks if self.best else -1)
        if self.config.early_stop and self._paper_stop():
            self.stopped_early = True
        return outcomes

    def _consider(self, path: LayerPath, outcome: Outcome) -> None:
        self.order.setdefault(path, len(self.order))
        if outcome.reward < 1.0:
            return
        if self.best is None or shortest_first(path, outcome.margin, self.order[path]) < shortest_first(
            self.best, self.best_outcome.margin, self.order[self.best]
        ):
            self.best, self.best_outcome = path, outcome

    def _paper_stop(self) -> bool:
        if self.best is None:
            return False
        wrong_to_correct = not self.default_outcome.correct and self.best_outcome.correct
        return wrong_to_correct or self.best.blocks <= self.num_layers - 2

    @property
    def done(self) -> bool:
        return self.budget_left <= 0 or self.stopped_early

    def result(self) -> SearchResult:
        return SearchResult(
            self.best,
            self.best_outcome,
            self.default_outcome,
            self.simulations,
            len(self.order),
            self.stopped_early,
            self.trace,
        )


def search(rewards: Rewards, num_layers: int, config: SearchConfig, rng: np.random.Generator) -> SearchResult:
    """Run one strategy on one example. The default path is always scored first (it is not a simulation)."""
    tracker = _Tracker(rewards, config, num_layers)
    if not tracker.done:
        {"mcts": _mcts, "chain": _chain, "random": _random, "singles": _singles}[config.strategy](
            tracker, rng
        )
    return tracker.result()


# ---- mcts -------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class _Node:
    path: LayerPath
    parent: _Node | None = None
    children: list[_Node] = field(default_factory=list)
    untried: list[tuple[int, str]] | None = None  # drawn lazily, in random order
    visits: int = 0
    value: float = 0.0
    pending: int = 0  # virtual visits of leaves selected in this round
    exhausted: bool = False  # no untried edit left in this subtree


def _mcts(tracker: _Tracker, rng: np.random.Generator) -> None:
    config = tracker.config
    root = _Node(LayerPath.default(tracker.num_layers), visits=1, value=tracker.default_outcome.reward)
    in_tree = {root.path}
    while not tracker.done:
        leaves = []
        for _ in range(min(config.parallel, tracker.budget_left)):
            leaf = _select_and_expand(root, tracker, rng, in_tree)
            if leaf is None:
                break
            leaves.append(leaf)
            for node in _lineage(leaf):
                node.pending += 1
        if not leaves:
            return  # every path reachable under the constraints has been scored
        outcomes = tracker.score([leaf.path for leaf in leaves])
        for leaf, outcome in zip(leaves, outcomes, strict=True):
            for node in _lineage(leaf):
                node.pending -= 1
                node.visits += 1
                node.value += outcome.reward


def _lineage(node: _Node):
    while node is not None:
        yield node
        node = node.parent


def _select_and_expand(
    root: _Node, tracker: _Tracker, rng: np.random.Generator, in_tree: set
) -> _Node | None:
    """Descend by UCT to a node that may widen and add one child; None when the whole tree is explored.
    A child whose path the tree already holds (the same edits in another order) is passed over."""
    config = tracker.config
    node = root
    while True:
        if node.untried is None:
            node.untried = _expansion_order(valid_edits(node.path, config.constraints), node.path, rng)
        allowed = math.ceil(config.widening * (node.visits + node.pending) ** config.widening_power)
        open_children = [c for c in node.children if not c.exhausted]
        while node.untried and (len(node.children) < allowed or not open_children):
            child = _Node(apply_edit(node.path, *node.untried.pop()), parent=node)
            if child.path not in in_tree:
                in_tree.add(child.path)
                node.children.append(child)
                return child
        if not open_children:
            node.exhausted = True  # nothing left below: never descend here again
            if node is root:
                return None
            node = root
            continue
        if rng.random() < config.random_child:
            node = open_children[rng.integers(len(open_children))]
        else:
            node = max(open_children, key=lambda c: _uct(c, node, config, tracker.num_layers))


def _expansion_order(edits: list[tuple[int, str]], path: LayerPath, rng: np.random.Generator) -> list:
    """Untried edits as a stack (next = last): an unvisited child's UCT score is infinite, so its length term
    breaks the tie: edits that save more blocks come first (skip 2, skip 1, then repeat), random among equals."""
    keys = rng.permutation(len(edits))
    ranked = sorted(zip(edits, keys, strict=True), key=lambda e: (-apply_edit(path, *e[0]).blocks, e[1]))
    return [edit for edit, _ in ranked]


def _uct(child: _Node, parent: _Node, config: SearchConfig, num_layers: int) -> float:
    visits = child.visits + child.pending
    if visits == 0:
        return math.inf
    total = parent.visits + parent.pending
    exploit = child.value / visits  # virtual visits count as reward 0
    explore = config.exploration * math.sqrt(math.log(max(total, 1)) / visits)
    return exploit + explore - config.length_penalty * child.path.blocks / num_layers


# ---- baselines ----------------------------------------------------------------------------------------------
def _random_edit(path: LayerPath, rng: np.random.Generator, constraints: PathConstraints, kinds) -> LayerPath:
    """A random valid edit of the given kinds anywhere in the path (resampled up to 20 times, else none)."""
    for _ in range(20):
        kind = kinds[rng.integers(len(kinds))]
        position = int(rng.integers(path.num_layers - (1 if kind == "skip2" else 0)))
        child = apply_edit(path, position, kind)
        if child.is_valid(path.num_layers, constraints):
            return child
    return path


def _chain(tracker: _Tracker, rng: np.random.Generator) -> None:
    """The published search: one chain of stacked random edits, a quarter of them no-ops."""
    kinds = ("skip1", "skip2", "repeat0", "repeat")
    leaf = LayerPath.default(tracker.num_layers)
    while not tracker.done:
        batch = []
        for _ in range(min(tracker.config.parallel, tracker.budget_left)):
            leaf = _random_edit(leaf, rng, tracker.config.constraints, kinds)
            batch.append(leaf)
        tracker.score(batch)


def _random(tracker: _Tracker, rng: np.random.Generator) -> None:
    """Independent draws: each simulation applies 1..random_max_edits random edits to the default path."""
    default = LayerPath.default(tracker.num_layers)
    while not tracker.done:
        batch = []
        for _ in range(min(tracker.config.parallel, tracker.budget_left)):
            path = default
            for _ in range(int(rng.integers(1, tracker.config.random_max_edits + 1))):
                path = _random_edit(path, rng, tracker.config.constraints, EDIT_KINDS)
            batch.append(path)
        tracker.score(batch)


def _singles(tracker: _Tracker, rng: np.random.Generator) -> None:
    """Every single-layer skip: what skipping each layer alone does to the answer, the data of the skip-cost
    labels and of the static baselines' first step. Each path shares the default path up to its skipped
    layer, so the L skips cost about L / 2 forwards; they are scored in one batch, not `parallel` at a
    time (nothing here needs virtual loss), which runs each layer once for all the rows that reach it."""
    layers = tracker.num_layers
    default = LayerPath.default(layers)
    paths = [default.with_count(layer, SKIP) for layer in range(layers)]
    tracker.score([p for p in paths if p.is_valid(layers, tracker.config.constraints)])
