"""The early exit: on the questions whose answer, read partway through the model, is surest, every layer
from m on is skipped; the others run in full. A routing policy with nothing trained, chosen on the labelled
search questions (never a test set) and scored by evaluate beside Dr.LLM.

Entering layer m, the final norm and the head on the residual stream at the positions that score a
question's choices give the exit's answer and how sure it is (Decision.lead: the log ratio of the top
choice's probability to the runner-up's). Skipping every layer from m is a path (a skipped layer is the
identity), so the exit is scored, costed and compared as any path is. Only questions scored by
log-likelihood exit: a generated answer (or a letter-scored reply, also generated) runs in full. Why this
policy, and what it measured: docs/experiments.md, rounds 8 and 9.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from drllm_core.engine import HiddenState
from drllm_core.errors import ConfigError
from drllm_core.paths import EXECUTE, SKIP, LayerPath
from drllm_core.tasks.answers import Decision, decide_choice
from drllm_core.tasks.packing import PackedBatch, choice_loglikelihoods
from drllm_core.tasks.schema import Example
from drllm_core.tasks.scorer import ExampleScorer


@dataclass(frozen=True)
class EarlyExit:
    """Layers 0 .. layer-1 run; a question whose lead entering `layer` is above `threshold` skips the rest."""

    layer: int
    threshold: float

    def counts(self, leads: Sequence[float], num_layers: int) -> Tensor:
        """(B, L) counts: the exit's path where a lead is above the threshold (never a NaN), vanilla's
        elsewhere."""
        exit_counts = exit_path(self.layer, num_layers).counts
        vanilla = LayerPath.default(num_layers).counts
        return torch.tensor([exit_counts if lead > self.threshold else vanilla for lead in leads])


def exit_path(layer: int, num_layers: int) -> LayerPath:
    """Layers 0 .. layer-1 run, every later one is skipped."""
    return LayerPath(tuple(EXECUTE if i < layer else SKIP for i in range(num_layers)))


def exit_layers(depths: Sequence[float], num_layers: int) -> list[int]:
    """The layers `depths` of the way through the model an exit may read at (evaluate.exit_depths), each
    leaving at least one layer to skip."""
    return sorted({min(num_layers - 1, max(1, round(d * num_layers))) for d in depths})


def exit_decisions(
    scorer: ExampleScorer, state: HiddenState, packed: PackedBatch, examples: Sequence[Example]
) -> list[Decision]:
    """Each question's decision read from `state` (the residual stream entering some layer of the packed
    batch's vanilla forward): its exit path's, the final norm and the head at the choices' positions."""
    engine = scorer.engine
    counts = exit_path(state.layer, engine.num_layers).counts
    exited = engine.run(state, torch.tensor([counts] * state.batch_size))  # skips only: now after the last
    scores = choice_loglikelihoods(engine, exited, packed)
    return [decide_choice(s, e, scorer.settings(e.task)) for s, e in zip(scores, examples, strict=True)]


def choose_exit(
    scorer: ExampleScorer,
    examples: Sequence[Example],
    layers: Sequence[int],
    blocks_saved: float,
    batch_size: int = 16,
) -> tuple[EarlyExit, list[dict]]:
    """The exit that keeps most of vanilla's answers on `examples` (labelled search questions) while saving
    `blocks_saved` blocks per token there: at each of `layers`, the threshold on the exit's lead that sends
    that share of the questions, the surest first. One vanilla forward reads every layer. Returns the exit
    and, per layer, what it did on the questions (the metrics record how it was chosen)."""
    examples = [e for e in examples if scorer.scorer_kind(e) == "loglikelihood"]  # the runner's test
    num_layers = scorer.engine.num_layers
    feasible = [m for m in sorted(set(layers)) if blocks_saved < num_layers - m]
    if not examples or not feasible:
        raise ConfigError(
            f"the early exit cannot save {blocks_saved} blocks per token exiting at layers {list(layers)} of "
            f"{num_layers} on {len(examples)} choice questions: lower evaluate.exit_blocks_saved or add "
            "shallower evaluate.exit_depths"
        )
    reads, vanilla = _reads(scorer, examples, feasible, batch_size)
    table = []
    for layer in feasible:
        leads = np.nan_to_num([d.lead for d in reads[layer]], nan=-np.inf)  # no lead: never sent
        threshold = float(np.quantile(leads, 1 - blocks_saved / (num_layers - layer)))
        sent = leads > threshold
        changed = np.array([d.prediction != v.prediction for d, v in zip(reads[layer], vanilla, strict=True)])
        right = np.where(sent, [d.correct for d in reads[layer]], [v.correct for v in vanilla])
        table.append(
            {
                "layer": layer,
                "threshold": threshold,
                "exits": float(sent.mean()),
                "blocks_saved": float(sent.mean() * (num_layers - layer)),
                "agreement": 1 - float((sent & changed).mean()),
                "accuracy": float(right.mean()),
            }
        )
    best = max(table, key=lambda row: row["agreement"])  # the first (shallowest) of equals
    return EarlyExit(best["layer"], best["threshold"]), table


@torch.no_grad()
def _reads(scorer: ExampleScorer, examples: list[Example], layers: list[int], batch_size: int):
    """Per layer, every question's decision read entering it, and vanilla's, in the order of `examples`: the
    evaluation runner's batches (sorted by prompt length), one vanilla forward each."""
    engine = scorer.engine
    order = sorted(range(len(examples)), key=lambda i: len(scorer.prompt(examples[i]).context))
    reads: dict[int, dict[int, Decision]] = {m: {} for m in layers}
    vanilla: dict[int, Decision] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = [examples[i] for i in chunk]
        packed = PackedBatch.collate([scorer.pack(e) for e in batch], scorer.tokenizer.pad_token_id)
        counts = engine.default_paths(len(batch))
        state = packed.embed(engine, scorer.shared_prefix)
        for layer in layers:
            state = engine.run(state, counts, stop=layer)
            reads[layer] |= dict(zip(chunk, exit_decisions(scorer, state, packed, batch), strict=True))
        final = engine.run(state, counts)
        vanilla |= dict(zip(chunk, exit_decisions(scorer, final, packed, batch), strict=True))
    ordered = range(len(examples))
    return {m: [reads[m][i] for i in ordered] for m in layers}, [vanilla[i] for i in ordered]
