"""The layer path: how many times each decoder block runs for one input.

A path is stored as per-layer counts (0 = skip, 1 = execute, 2 = repeat), the label format the routers learn.
The execution order is derived from the counts: layers in order, a repeated layer runs twice in a row. This is
the paper's path space: its edits (skip one or two consecutive layers, repeat a layer once) never reorder layers.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from drllm_core.errors import ConfigError, DrllmError, typed

SKIP, EXECUTE, REPEAT = 0, 1, 2
CLASS_NAMES = ("skip", "execute", "repeat")  # a layer's count is its class: CLASS_NAMES[count]


class PathError(DrllmError, ValueError):
    """A layer path that is malformed or breaks a constraint."""


@dataclass(frozen=True)
class PathConstraints:
    """The paper's limits on a path. Counts are always within 0..max_count."""

    max_skip_run: int | None = 2  # longest run of consecutive skipped layers (None: unlimited)
    max_count: int = REPEAT  # most executions of one layer (2: at most one repeat per layer)
    max_blocks: int | None = None  # budget of block executions per token (None: 2L, the paper's bound)

    @classmethod
    def from_params(cls, search: dict) -> PathConstraints:
        """The limits of params.yaml's `search` section: the ones the labels were searched under, which
        routing and the static baselines keep to."""
        skip_run = typed(search.get("max_skip_run", cls.max_skip_run), int | None, "search.max_skip_run")
        blocks = typed(search.get("max_blocks"), int | None, "search.max_blocks")
        if (skip_run is not None and skip_run < 0) or (blocks is not None and blocks < 1):
            raise ConfigError(
                f"search.max_skip_run must be at least 0 and search.max_blocks at least 1 (or null), got "
                f"{skip_run} and {blocks}"
            )
        return cls(max_skip_run=skip_run, max_blocks=blocks)

    def budget(self, num_layers: int) -> int:
        return self.max_blocks if self.max_blocks is not None else 2 * num_layers

    def fewest_blocks(self, layers: int, skip_run: int = 0) -> int:
        """The fewest blocks `layers` more layers can take after a run of `skip_run` skipped ones."""
        if self.max_skip_run is None:
            return 0
        return (layers + skip_run) // (self.max_skip_run + 1)

    def allowed_count(self, wanted: int, layer: int, num_layers: int, blocks: int, skip_run: int) -> int:
        """`wanted` if layer `layer` may take it and the path can still end inside the constraints (given the
        `blocks` run so far and the current run of `skip_run` skipped layers), else execute, else skip:
        how routing keeps every constraint the labels were searched under."""
        budget = self.budget(num_layers)
        for count in dict.fromkeys((min(wanted, self.max_count), EXECUTE, SKIP)):
            run = skip_run + 1 if count == SKIP else 0
            if self.max_skip_run is not None and run > self.max_skip_run:
                continue
            if blocks + count + self.fewest_blocks(num_layers - layer - 1, run) <= budget:
                return count
        raise PathError(
            f"no count of layer {layer} keeps the path within {budget} blocks after {blocks} blocks: the budget "
            "cannot be met under the skip-run limit"
        )

    def check_feasible(self, num_layers: int) -> None:
        """Refuse a budget no path of `num_layers` layers can meet under the skip-run limit."""
        if self.fewest_blocks(num_layers) > self.budget(num_layers):
            raise PathError(
                f"a budget of {self.budget(num_layers)} blocks cannot be met by {num_layers} layers with at most "
                f"{self.max_skip_run} skipped in a row (at least {self.fewest_blocks(num_layers)} blocks)"
            )


PAPER_CONSTRAINTS = PathConstraints()


@dataclass(frozen=True)
class LayerPath:
    """Per-layer execution counts; hashable so that evaluated paths can be memoised."""

    counts: tuple[int, ...]

    @classmethod
    def default(cls, num_layers: int) -> LayerPath:
        """Every layer once: the model as trained."""
        return cls((EXECUTE,) * num_layers)

    @classmethod
    def from_counts(cls, counts: Iterable[int]) -> LayerPath:
        return cls(tuple(int(c) for c in counts))

    @classmethod
    def from_order(cls, order: Sequence[int], num_layers: int) -> LayerPath:
        """Counts from an execution order such as [0, 1, 1, 3, ...]; the order must be non-decreasing."""
        if any(b < a for a, b in itertools.pairwise(order)):
            raise PathError(f"execution order must not go back to an earlier layer: {list(order)}")
        counts = [0] * num_layers
        for layer in order:
            if not 0 <= layer < num_layers:
                raise PathError(f"layer index {layer} out of range for a model with {num_layers} layers")
            counts[layer] += 1
        return cls(tuple(counts))

    @property
    def num_layers(self) -> int:
        return len(self.counts)

    @property
    def order(self) -> list[int]:
        """Layer indices in execution order; a repeated layer appears twice in a row."""
        return [layer for layer, count in enumerate(self.counts) for _ in range(count)]

    @property
    def blocks(self) -> int:
        """Block executions per token along this path (the compute this path costs)."""
        return sum(self.counts)

    @property
    def blocks_saved(self) -> int:
        """Block executions saved against the default path (negative when repeats outweigh skips)."""
        return self.num_layers - self.blocks

    @property
    def is_default(self) -> bool:
        return all(c == EXECUTE for c in self.counts)

    def distinct_layers(self) -> int:
        """Layers that run at least once (the paper's tie-break between equally short paths)."""
        return sum(1 for c in self.counts if c > 0)

    def with_count(self, layer: int, count: int) -> LayerPath:
        counts = list(self.counts)
        counts[layer] = count
        return LayerPath(tuple(counts))

    def validate(self, num_layers: int, constraints: PathConstraints | None = PAPER_CONSTRAINTS) -> LayerPath:
        """Raise PathError naming the first problem; return self so calls can chain."""
        if len(self.counts) != num_layers:
            raise PathError(f"path has {len(self.counts)} layer counts but the model has {num_layers} layers")
        limit = constraints.max_count if constraints else REPEAT
        for layer, count in enumerate(self.counts):
            if not 0 <= count <= limit:
                raise PathError(f"layer {layer} has count {count}; counts must lie in 0..{limit}")
        if constraints is None:
            return self
        if constraints.max_skip_run is not None:
            run = longest_skip_run(self.counts)
            if run > constraints.max_skip_run:
                raise PathError(
                    f"path skips {run} consecutive layers; at most {constraints.max_skip_run} are allowed"
                )
        budget = constraints.budget(num_layers)
        if self.blocks > budget:
            raise PathError(f"path executes {self.blocks} blocks, above the budget of {budget}")
        return self

    def is_valid(self, num_layers: int, constraints: PathConstraints | None = PAPER_CONSTRAINTS) -> bool:
        try:
            self.validate(num_layers, constraints)
        except PathError:
            return False
        return True

    def __str__(self) -> str:
        return "".join(str(c) for c in self.counts)


def longest_skip_run(counts: Sequence[int]) -> int:
    """Length of the longest run of consecutive zeros."""
    longest = run = 0
    for count in counts:
        run = run + 1 if count == SKIP else 0
        longest = max(longest, run)
    return longest
