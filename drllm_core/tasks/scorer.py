"""The example scorer: prompts, batches and scores examples under per-example layer paths, the one entry
point stages and benchmarks use.

Examples are grouped by scorer and sorted by length so that each batched forward wastes little padding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property

from torch import Tensor

from drllm_core.engine import Decide, PathEngine, SharedPrefix, token_batch
from drllm_core.errors import ConfigError
from drllm_core.tasks.answers import Decision, cut_at_stops, decide_choice, decide_letter, decide_math
from drllm_core.tasks.packing import PackedBatch, choice_loglikelihoods, pack_choices
from drllm_core.tasks.prompts import (
    CHOICE_SCORERS,
    Prompt,
    TaskSettings,
    chat_template_head,
    render,
    settings_for,
)
from drllm_core.tasks.registry import task_spec
from drllm_core.tasks.schema import Example

RouterFactory = Callable[[Tensor], Decide]  # prompt-token mask (B, T) -> the engine's per-layer decide hook


def eos_token_ids(model, tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


class ExampleScorer:
    """Prompts, batches and scores examples with one model; holds the per-task settings and shot pools."""

    def __init__(
        self,
        engine: PathEngine,
        tokenizer,
        task_params: dict | None = None,
        shots: dict[str, list[Example]] | None = None,
        generation_batch_size: int | None = None,
    ):
        self.engine = engine
        self.tokenizer = tokenizer
        self.task_params = task_params or {}
        self.shots = shots or {}
        # generated answers per batch (None: `score`'s batch_size); greedy decoding on a CPU reads every
        # weight once per token whatever the batch, so larger batches than a forward's pay (docs/gpu.md)
        self.generation_batch_size = generation_batch_size
        self.eos_ids = eos_token_ids(engine.model, tokenizer)
        self._prompts: dict[str, Prompt] = {}

    def settings(self, task: str) -> TaskSettings:
        return settings_for(task, self.task_params)

    def scorer_kind(self, example: Example) -> str:
        """The example's scorer; a choice scorer for an example without choices is a params mistake."""
        kind = self.settings(example.task).scorer
        if kind in CHOICE_SCORERS and not example.choices:
            raise ConfigError(
                f"task {example.task!r} has no answer choices (its answers are generated) but is scored by "
                f"{kind!r}: set tasks.{example.task}.scorer: math (and max_new_tokens) in params.yaml"
            )
        return kind

    def check_lengths(self, examples: Sequence[Example]) -> None:
        """Refuse examples longer than the model's context (its max_position_embeddings): a question with
        its choices, or a prompt with the tokens it may generate. Called before any work, so a long document
        stops the stage at once, naming the examples, instead of running for minutes."""
        limit = getattr(self.engine.config, "max_position_embeddings", None)
        if not limit:
            return
        too_long = []
        for example in examples:
            if self.scorer_kind(example) == "loglikelihood":
                length = len(self.pack(example).input_ids)
            else:
                length = len(self.prompt_ids(example)) + self.settings(example.task).max_new_tokens
            if length > limit:
                too_long.append(f"{example.example_id} ({length} tokens)")
        if too_long:
            raise ConfigError(
                f"{len(too_long)} examples are longer than the model's context of {limit} tokens: "
                f"{', '.join(too_long[:5])}. Shorten or drop them in the source (prepare), or use a model with a "
                "longer context"
            )

    @cached_property
    def shared_prefix(self) -> SharedPrefix | None:
        """The chat template's opening, which every chat prompt starts with: scored batches run it once per
        path prefix, not once per question (a third of an ARC question's tokens on the default model)."""
        if not getattr(self.tokenizer, "chat_template", None):
            return None
        head = chat_template_head(self.tokenizer)
        return self.engine.shared_prefix(head) if head else None

    def prompt(self, example: Example) -> Prompt:
        if example.example_id not in self._prompts:
            settings = self.settings(example.task)
            pool = [s for s in self.shots.get(example.task, []) if s.example_id != example.example_id]
            spec = task_spec(example.task)
            self._prompts[example.example_id] = render(
                example, spec, settings, self.tokenizer, pool[: settings.shots]
            )
        return self._prompts[example.example_id]

    def pack(self, example: Example):
        return pack_choices(
            self.tokenizer, self.prompt(example), not self.settings(example.task).chat_template
        )

    def prompt_ids(self, example: Example) -> list[int]:
        """Token ids of the context alone (what routers read and generation starts from)."""
        add_special = not self.settings(example.task).chat_template
        return self.tokenizer(self.prompt(example).context, add_special_tokens=add_special).input_ids

    def score(
        self,
        examples: Sequence[Example],
        counts: Tensor | None = None,
        batch_size: int = 8,
        on_batch: Callable[[int], None] | None = None,
        router: RouterFactory | None = None,
    ) -> list[Decision]:
        """Decisions for each example under its path: `counts` (n, L), None for the default path, or chosen
        by `router` (a factory that, given a batch's prompt-token mask, returns the engine's per-layer decide
        hook). Each decision records the path it was made under. Log-likelihoods go `batch_size` at a time,
        generated answers `generation_batch_size` at a time (when set)."""
        if counts is None or router is not None:
            counts = self.engine.default_paths(len(examples))
        decisions: list[Decision | None] = [None] * len(examples)
        by_kind: dict[str, list[int]] = {}
        for index, example in enumerate(examples):
            by_kind.setdefault(self.scorer_kind(example), []).append(index)
        for kind, indices in by_kind.items():
            indices = sorted(indices, key=lambda i: len(self.prompt(examples[i]).context))
            generated = kind != "loglikelihood" and self.generation_batch_size
            size = self.generation_batch_size if generated else batch_size
            for start in range(0, len(indices), size):
                chunk = indices[start : start + size]
                batch = [examples[i] for i in chunk]
                chunk_counts = counts[chunk].clone()
                if kind == "loglikelihood":
                    results = self._score_choices(batch, chunk_counts, router)
                else:
                    results = self.score_generated(batch, chunk_counts, kind, router)
                for i, row, decision in zip(chunk, chunk_counts.tolist(), results, strict=True):
                    decision.path = tuple(row)
                    decisions[i] = decision
                if on_batch:
                    on_batch(len(chunk))
        return decisions

    def choice_scores(
        self, examples: Sequence[Example], counts: Tensor, router: RouterFactory | None = None
    ) -> Tensor:
        """(n, C) log-likelihood of every choice of each example under its path (filled in by `router`)."""
        batch = PackedBatch.collate([self.pack(e) for e in examples], self.tokenizer.pad_token_id)
        decide = router(batch.prompt_mask()) if router is not None else None
        state = self.engine.run(batch.embed(self.engine, self.shared_prefix), counts, decide=decide)
        return choice_loglikelihoods(self.engine, state, batch)

    def _score_choices(self, examples: Sequence[Example], counts: Tensor, router) -> list[Decision]:
        scores = self.choice_scores(examples, counts, router)
        return [decide_choice(scores[i], e, self.settings(e.task)) for i, e in enumerate(examples)]

    def generate(
        self,
        examples: Sequence[Example],
        counts: Tensor,
        max_new_tokens: int,
        router: RouterFactory | None = None,
    ) -> list[str]:
        """Greedy replies (cut at the prompt's stop strings) under each example's path (or the router's)."""
        pad = self.tokenizer.pad_token_id
        ids, mask = token_batch([self.prompt_ids(e) for e in examples], pad, left=True)
        decide = router(mask.bool()) if router is not None else None
        out = self.engine.generate(ids, counts, mask, max_new_tokens, self.eos_ids, pad, decide=decide)
        if router is not None:
            counts.copy_(out.counts)
        texts = self.tokenizer.batch_decode(out.tokens, skip_special_tokens=True)
        return [cut_at_stops(t, self.prompt(e).stops) for t, e in zip(texts, examples, strict=True)]

    def score_generated(
        self, examples: Sequence[Example], counts: Tensor, kind: str, router: RouterFactory | None = None
    ) -> list[Decision]:
        longest = max(self.settings(e.task).max_new_tokens for e in examples)
        texts = self.generate(examples, counts, longest, router)
        decide = decide_letter if kind == "letter" else decide_math
        return [decide(text, example) for text, example in zip(texts, examples, strict=True)]
