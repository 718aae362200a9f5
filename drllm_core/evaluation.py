"""The evaluation runner: configurations scored on the same questions, checkpointed; and the evaluate stage's
work on it: Dr.LLM against vanilla and the static baselines, and the documents it writes.

A configuration is the vanilla model, a router set at a knob, one fixed path for every question, the
early exit (drllm_core.early_exit), or random paths saving per question what another configuration
saves. Every (configuration, question) result is
checkpointed, so a long evaluation resumes; the checkpoint is named by everything the results depend on.
drllm_core.comparison summarises and compares the results; drllm_core.generation_check measures routing on
generation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm import tqdm

from drllm_core import tracking
from drllm_core.baselines import (
    block_influence,
    deepest_path,
    lowest_influence_path,
    random_path,
    random_questions,
    static_paths,
)
from drllm_core.checkpoint import Checkpoint, checkpoint_path, content_key
from drllm_core.comparison import comparisons, summarize
from drllm_core.early_exit import EarlyExit, choose_exit, exit_decisions, exit_layers
from drllm_core.errors import ConfigError, DrllmError, config_from, listed, typed
from drllm_core.inference import RoutedModel
from drllm_core.models import LoadedModel, weights_fingerprint
from drllm_core.paths import LayerPath, PathConstraints
from drllm_core.prepare import sample
from drllm_core.routers import RouterSet
from drllm_core.routing import check_knob, read_router_config, router_set_names, routers_hash
from drllm_core.stats import SCORE_COLUMNS
from drllm_core.tasks.answers import Decision, decide_choice
from drllm_core.tasks.packing import PackedBatch, choice_loglikelihoods
from drllm_core.tasks.prompts import settings_for
from drllm_core.tasks.schema import Example, letter
from drllm_core.tasks.scorer import ExampleScorer

log = logging.getLogger(__name__)


@dataclass
class Configuration:
    name: str
    sets: list[str]
    identity: dict  # what its results depend on besides model, tasks and data (for the checkpoint key)
    routers: str | None = None  # router folder
    knob: float = 0.0
    path: LayerPath | None = None  # one static path for every question
    like: Configuration | None = None  # random skips: per question, as many as this configuration's path
    constraints: PathConstraints | None = None  # random skips: the limits their paths keep to
    seed: int = 0
    early_exit: EarlyExit | None = None

    @classmethod
    def routed(cls, name: str, sets: list[str], folder: str, knob: float) -> Configuration:
        """Routers at a knob, keyed by their content hash (their folder also holds how they route)."""
        return cls(name, sets, {"routers": routers_hash(folder), "knob": knob}, folder, knob)

    @classmethod
    def static(cls, name: str, sets: list[str], path: LayerPath) -> Configuration:
        return cls(name, sets, {"static": str(path)}, path=path)

    @classmethod
    def exiting(cls, name: str, sets: list[str], early_exit: EarlyExit) -> Configuration:
        identity = {"early_exit": early_exit.layer, "threshold": early_exit.threshold}
        return cls(name, sets, identity, early_exit=early_exit)

    @classmethod
    def random_like(
        cls, name: str, sets: list[str], like: Configuration, constraints: PathConstraints, seed: int
    ) -> Configuration:
        """Per question, a random valid path saving as many blocks as `like`'s path there (scored in the
        same run as `like`, which must come before it): the control for where a router skips."""
        identity = {"random_like": like.identity, "constraints": str(constraints), "seed": seed}
        return cls(name, sets, identity, like=like, constraints=constraints, seed=seed)


class EvaluationRunner:
    """Scores configurations on named example sets with one model, checkpointing every result."""

    def __init__(
        self,
        loaded: LoadedModel,
        scorer: ExampleScorer,
        sets: dict[str, list[Example]],
        data_hashes: dict[str, str],
        checkpoints: Path,
        code: str,
        batch_size: int = 16,
    ):
        self.loaded = loaded
        self.scorer = scorer
        self.sets = sets
        self.data_hashes = data_hashes
        self.checkpoints = Path(checkpoints)
        self.code = code
        self.batch_size = batch_size
        self.fingerprint = weights_fingerprint(loaded.model)
        self._routed: dict[str, RoutedModel] = {}

    def routed(self, folder: str, knob: float) -> RoutedModel:
        """The router set in `folder` on this runner's model and engine, set to `knob`."""
        if folder not in self._routed:
            self._routed[folder] = RoutedModel.from_folder(self.loaded, folder, engine=self.scorer.engine)
        model = self._routed[folder]
        model.knob = knob
        return model

    def run(self, config: Configuration) -> list[dict]:
        return self.run_many([config])[config.name]

    def add_set(self, name: str, examples: list[Example]) -> None:
        """Another named set to score configurations on (a subset of a set, say), keyed by its questions."""
        self.sets[name] = examples
        self.data_hashes[name] = content_key(sorted(e.example_id for e in examples))

    def run_many(self, configs: Sequence[Configuration]) -> dict[str, list[dict]]:
        """Every configuration's result rows on its sets, each (configuration, question) checkpointed.
        Configurations whose paths are known before the forward (fixed paths, cost routers, which decide
        every skip from the state entering their decision layer, and the early exit, which reads its
        layer) are scored together, batch by
        batch: the vanilla model's hidden states are computed once and each path resumes from them at its
        first skipped layer, exact up to the rounding of other batch shapes."""
        rows: dict[str, list[dict]] = {c.name: [] for c in configs}
        for index, config in enumerate(configs):
            if config.like and not any(
                c.name == config.like.name and set(config.sets) <= set(c.sets) for c in configs[:index]
            ):
                raise DrllmError(
                    f"configuration {config.name!r} draws its paths like {config.like.name!r}, which must be "
                    f"scored before it on the same sets: put {config.like.name!r} earlier in the list"
                )
        for set_name in dict.fromkeys(s for c in configs for s in c.sets):
            active = [c for c in configs if set_name in c.sets]
            examples = self.sets[set_name]
            with ExitStack() as stack:
                checkpoints = {
                    c.name: stack.enter_context(Checkpoint(self._checkpoint(c, set_name))) for c in active
                }
                todo = {
                    c.name: {e.example_id for e in examples} - set(checkpoints[c.name].records)
                    for c in active
                }
                shared = [c for c in active if self._path_known(c)]
                generated = {e.example_id for e in examples if self.scorer.scorer_kind(e) != "loglikelihood"}
                alone = {  # class routers, and generated answers (each path generates): one forward each
                    c.name: [
                        e
                        for e in examples
                        if e.example_id in todo[c.name] and (c not in shared or e.example_id in generated)
                    ]
                    for c in active
                }
                union = [
                    e
                    for e in examples
                    if e.example_id not in generated and any(e.example_id in todo[c.name] for c in shared)
                ]
                bar = tqdm(total=len(union) + sum(map(len, alone.values())), desc=f"evaluate {set_name}")
                union.sort(key=lambda e: len(self.scorer.prompt(e).context))
                for start in range(0, len(union), self.batch_size):
                    batch = union[start : start + self.batch_size]
                    wanted = {
                        c.name: [i for i, e in enumerate(batch) if e.example_id in todo[c.name]]
                        for c in shared
                    }
                    records = {name: checkpoint.records for name, checkpoint in checkpoints.items()}
                    for config, decisions in self._shared_decisions(shared, batch, wanted, records).items():
                        chosen = [batch[i] for i in wanted[config]]
                        for row in result_rows(config, set_name, chosen, decisions):
                            checkpoints[config].add(row)
                    bar.update(len(batch))
                for config in active:
                    pending = alone[config.name]
                    size = max(self.batch_size * 4, self.scorer.generation_batch_size or 0)
                    for start in range(0, len(pending), size):
                        chunk = pending[start : start + size]
                        decisions = self._decisions(
                            config, chunk, checkpoints[config.like.name].records if config.like else {}
                        )
                        for row in result_rows(config.name, set_name, chunk, decisions):
                            checkpoints[config.name].add(row)
                        bar.update(len(chunk))
                bar.close()
                for config in active:
                    rows[config.name] += [checkpoints[config.name].records[e.example_id] for e in examples]
        return rows

    def _checkpoint(self, config: Configuration, set_name: str) -> Path:
        tasks = sorted({e.task for e in self.sets[set_name]})
        key = content_key(
            config.identity,
            self.fingerprint,
            str(self.loaded.dtype),
            self.loaded.device.type,
            {t: settings_for(t, self.scorer.task_params) for t in tasks},
            self.data_hashes[set_name],
        )
        return checkpoint_path(self.checkpoints, f"{config.name}-{set_name}", key, self.code)

    def _path_known(self, config: Configuration) -> bool:
        """Whether a configuration's paths follow from the vanilla model's states before any skip."""
        if config.like:
            return self._path_known(config.like)
        return not config.routers or read_router_config(config.routers).kind == "costs"

    def _shared_decisions(
        self,
        configs: Sequence[Configuration],
        batch: Sequence[Example],
        wanted: dict[str, list[int]],
        records: dict[str, dict[str, dict]],
    ) -> dict[str, list[Decision]]:
        """Decisions of each configuration on the rows of one batch it wants, resuming from vanilla. A path
        two configurations give the same question (neighbouring knobs, static paths chosen alike) is run
        once: on the default model, calibration's knobs share most of their paths. `records`: the results
        checkpointed so far, per configuration (random skips save what their model's recorded path saved)."""
        engine, layers = self.scorer.engine, self.scorer.engine.num_layers
        packed = PackedBatch.collate([self.scorer.pack(e) for e in batch], self.scorer.tokenizer.pad_token_id)
        state = packed.embed(engine, self.scorer.shared_prefix)
        entering = []  # the vanilla state entering each layer
        for layer in range(layers):
            entering.append(state)
            state = engine.run(state, engine.default_paths(len(batch)), stop=layer + 1)
        vanilla = choice_loglikelihoods(engine, state, packed)
        # configuration -> (B, L) counts, in order: random skips come after the configuration they follow
        counts: dict[str, Tensor] = {}
        for c in configs:
            if c.like:
                done = records[c.like.name]
                blocks = [
                    done[e.example_id]["blocks"] if e.example_id in done else int(path.sum())
                    for e, path in zip(batch, counts[c.like.name], strict=True)
                ]
                counts[c.name] = self._random_counts(c, [e.example_id for e in batch], blocks)
            else:
                counts[c.name] = self._known_counts(c, batch, packed, entering)
        plans = {c.name: (wanted[c.name], counts[c.name][wanted[c.name]]) for c in configs if wanted[c.name]}
        distinct = list(  # (row, path) of every path that skips or repeats, once
            dict.fromkeys(
                (row, path)
                for rows, counts in plans.values()
                for row, path in zip(rows, map(tuple, counts.tolist()), strict=True)
                if any(c != 1 for c in path)
            )
        )
        scored = {}
        if distinct:
            resume = []  # each path from the vanilla state entering its first skipped or repeated layer
            for row, path in distinct:
                first = next(i for i, c in enumerate(path) if c != 1)
                resume.append((first, entering[first].hidden[row : row + 1]))
            final = engine.run_trie(state, distinct, resume, max_rows=self.batch_size)
            for start in range(0, len(distinct), self.batch_size):  # the lm_head's logits, a chunk at a time
                chunk = range(start, min(start + self.batch_size, len(distinct)))
                rows = [distinct[i][0] for i in chunk]
                scores = choice_loglikelihoods(engine, final.select(list(chunk)), packed.select(rows))
                scored |= dict(zip((distinct[i] for i in chunk), scores, strict=True))
        results = {}
        for name, (rows, counts) in plans.items():
            decisions = []
            for row, path in zip(rows, map(tuple, counts.tolist()), strict=True):
                example = batch[row]
                scores = scored.get((row, path), vanilla[row])
                decision = decide_choice(scores, example, self.scorer.settings(example.task))
                decision.path = path
                decisions.append(decision)
            results[name] = decisions
        return results

    def _known_counts(self, config, batch, packed, entering) -> Tensor:
        """(B, L) counts of a fixed path, the early exit's or a cost router's, decided on the vanilla states
        as a routed forward would (every layer before its decision executes)."""
        if config.early_exit:
            read = exit_decisions(self.scorer, entering[config.early_exit.layer], packed, batch)
            return config.early_exit.counts([d.lead for d in read], len(entering))
        if not config.routers:
            return torch.tensor([config.path.counts] * len(entering[0].hidden))
        decide = self.routed(config.routers, config.knob).decider(packed.prompt_mask())
        engine = self.scorer.engine
        return torch.stack([decide(layer, engine.readable(s)) for layer, s in enumerate(entering)], dim=1)

    def _decisions(
        self, config: Configuration, examples: Sequence[Example], like_done: dict[str, dict]
    ) -> list[Decision]:
        """One configuration's decisions, a forward of its own; `like_done`: a random_like configuration's
        model's checkpointed results (it came earlier, so every question is there)."""
        if config.routers:
            return self.routed(config.routers, config.knob).score(self.scorer, examples, self.batch_size)
        if config.like:
            blocks = [like_done[e.example_id]["blocks"] for e in examples]
            counts = self._random_counts(config, [e.example_id for e in examples], blocks)
        else:  # a generated answer is not read early: the early exit runs it in full
            path = LayerPath.default(self.loaded.num_layers) if config.path is None else config.path
            counts = torch.tensor([path.counts] * len(examples))
        return self.scorer.score(examples, counts, self.batch_size)

    def _random_counts(
        self, config: Configuration, example_ids: Sequence[str], blocks: Sequence[int]
    ) -> Tensor:
        """(B, L) random paths of a `random_like` configuration, saving the blocks its model's paths save."""
        layers = self.scorer.engine.num_layers
        return torch.tensor(
            [
                random_path(example_id, layers - count, layers, config.constraints, config.seed).counts
                for example_id, count in zip(example_ids, blocks, strict=True)
            ]
        )


def random_deepest_rows(
    runner: EvaluationRunner, results: pd.DataFrame, set_name: str, seed: int
) -> list[dict]:
    """`random_deepest` on a set: Dr.LLM's deepest path on as many random questions as save, in all, the
    blocks Dr.LLM saves there, and vanilla's answer on the others. The budget spent in the router's own shape
    (deep skips on a few questions change fewer answers than one skip on all) without reading the prompt:
    what Dr.LLM gains over it is what its router reads. Needs Dr.LLM's and vanilla's rows in `results`."""
    layers = runner.loaded.num_layers
    rows = results[results["set"] == set_name]
    drllm = rows[rows["config"] == "drllm"]
    deepest = deepest_path([LayerPath.from_counts(p) for p in drllm["path"]])
    depth = layers - sum(deepest.counts)
    saved = float(np.maximum(0, layers - drllm["blocks"]).sum())
    chosen = random_questions(list(drllm["example_id"]), round(saved / depth) if depth > 0 else 0, seed)
    scored = {}
    if chosen:
        subset = f"{set_name}.random_deepest"
        runner.add_set(subset, [e for e in runner.sets[set_name] if e.example_id in chosen])
        config = Configuration.static("random_deepest", [subset], deepest)
        scored = {r["example_id"]: {**r, "set": set_name} for r in runner.run(config)}
    vanilla = rows[rows["config"] == "vanilla"].to_dict("records")
    return [scored.get(r["example_id"], {**r, "config": "random_deepest"}) for r in vanilla]


def result_rows(config: str, set_name: str, examples: Sequence[Example], decisions) -> list[dict]:
    return [
        {
            "config": config,
            "set": set_name,
            "example_id": example.example_id,
            "task": example.task,
            "prediction": decision.prediction,
            "gold": letter(example.answer_index) if example.choices else example.answer,
            "correct": bool(decision.correct),
            "margin": float(decision.margin),
            "path": list(decision.path),
            "blocks": int(sum(decision.path)),
            "scores": list(decision.scores),  # per choice: the distribution agreement and KL compare
        }
        for example, decision in zip(examples, decisions, strict=True)
    ]


@dataclass(frozen=True)
class EvaluateSettings:
    """params.yaml's `evaluate` section."""

    knob_sweep: tuple[float, ...] = ()  # Dr.LLM at other knobs, in-domain (the accuracy/compute trade-off)
    other_routers: tuple[str, ...] = ()  # router sets of train.routers compared in-domain at Dr.LLM's knob
    static_budgets: tuple[int, ...] = (1, 2, 3)  # skipped layers of the static baselines
    static_examples: int | None = None  # labelled search questions choosing the static baselines (None: all)
    static_shortlist: int = 5  # after the first skip, the greedy static paths try the layers best alone
    exit_depths: tuple[float, ...] = (0.3, 0.5, 0.67, 0.8, 0.9)  # where the early exit may read
    exit_blocks_saved: float = 1.05  # what the early exit saves per token on the search questions
    seed: int = 0
    generation_questions: int = 40  # in-domain questions asked open: routed generation against vanilla's
    generation_tokens: int = 48

    @classmethod
    def from_params(cls, params: dict) -> EvaluateSettings:
        values = dict(params)
        sweep = tuple(
            check_knob(v, "evaluate.knob_sweep")
            for v in listed(values.pop("knob_sweep", None), "evaluate.knob_sweep")
        )
        listed_other = listed(values.pop("other_routers", None), "evaluate.other_routers")
        other = tuple(router_set_names(listed_other, "evaluate.other_routers"))
        budgets = tuple(
            typed(b, int, "evaluate.static_budgets")
            for b in listed(values.pop("static_budgets", [1]), "evaluate.static_budgets")
        )
        if any(b < 1 for b in budgets):
            raise ConfigError(
                f"evaluate.static_budgets must be numbers of skipped layers, at least 1, got {list(budgets)}"
            )
        depths = tuple(
            typed(d, float, "evaluate.exit_depths")
            for d in listed(values.pop("exit_depths", list(cls.exit_depths)), "evaluate.exit_depths")
        )
        if not depths or not all(0 < d < 1 for d in depths):
            raise ConfigError(
                f"evaluate.exit_depths must be shares of the model's depth in (0, 1), got {list(depths)}"
            )
        values |= {
            "knob_sweep": sweep,
            "other_routers": other,
            "static_budgets": tuple(sorted(set(budgets))),
            "exit_depths": depths,
        }
        settings = config_from(cls, "evaluate", values)
        for name in ("static_examples", "static_shortlist", "generation_questions", "generation_tokens"):
            if getattr(settings, name) is not None and getattr(settings, name) < 1:
                raise ConfigError(f"evaluate.{name} must be at least 1, got {getattr(settings, name)}")
        if not settings.exit_blocks_saved > 0:
            raise ConfigError(f"evaluate.exit_blocks_saved must be above 0, got {settings.exit_blocks_saved}")
        return settings


def router_folders(root: str | Path, names: Sequence[str]) -> dict[str, str]:
    """The folder of each named router set under `root` (evaluate.other_routers), each checked whole before any
    model loads."""
    folders = {name: str(Path(root) / name) for name in names}
    for name, folder in folders.items():
        if not (Path(folder) / "config.json").is_file():
            raise ConfigError(
                f"evaluate.other_routers names {name!r}, but {folder} holds no router set: each must be a router "
                "set of train.routers"
            )
        read_router_config(folder)
    return folders


def check_prompt_format(folders: Sequence[str], task_params: dict, tasks: Sequence[str]) -> None:
    """Every router folder routes the evaluated tasks prompted as params.yaml's `tasks` says, which vanilla and
    the baselines are scored with: a router set trained on other prompts would be compared unpaired."""
    for folder in folders:
        trained = read_router_config(folder).routing.tasks
        differing = sorted(t for t in set(tasks) if settings_for(t, trained) != settings_for(t, task_params))
        if differing:
            raise ConfigError(
                f"the routers in {folder} were trained on prompts formatted otherwise than params.yaml `tasks` "
                f"formats {differing}: run `dvc repro` (features, train and calibrate rerun on the new format)"
            )


def labels_folder(routers: str | Path, paths: str | Path) -> Path:
    """The search output (under `paths`) the router set in `routers` learned from: the oracle's source."""
    strategy = read_router_config(routers).provenance.get("search", {}).get("strategy")
    if strategy is None:
        raise DrllmError(
            f"{routers} does not record the search its labels came from: retrain it (dvc repro train)"
        )
    return Path(paths) / strategy


@dataclass
class Evaluation:
    """What `evaluate_routers` found: every result row, their summary and the paired comparisons."""

    results: pd.DataFrame
    summary: pd.DataFrame
    comparisons: list[dict]
    knob: float
    static: dict  # the static baselines' paths and how they were chosen
    folders: dict[str, str]  # the router folder of each routed configuration


def evaluate_routers(
    runner: EvaluationRunner,
    routers: str,
    other_routers: dict[str, str],
    labelled: Sequence[Example],
    settings: EvaluateSettings,
    constraints: PathConstraints,
    known: dict[str, dict[LayerPath, Sequence[float]]] | None = None,
) -> Evaluation:
    """Score vanilla, Dr.LLM (the calibrated router set in `routers`, at its knob and over the sweep), the
    other router sets at the same knob, and the static baselines at every budget of `static_budgets`,
    chosen on the `labelled` search questions the routers learned from (`static_examples` of them; `known`:
    their search's scored paths, which cost nothing again): the
    greedy best static path (most answers right), the faithful static path (most vanilla answers kept) and
    ShortGPT's Block Influence pruning; the early exit, chosen on the same questions to save
    `exit_blocks_saved`; then random skips at Dr.LLM's own per-question budget, and Dr.LLM's
    deepest path on random questions at its total budget (random_deepest_rows). All on the
    same questions; Dr.LLM and the early exit are compared with each baseline at the budget nearest
    Dr.LLM's own blocks saved."""
    layers = runner.loaded.num_layers
    all_sets, in_domain = list(runner.sets), ["eval_id"]
    knob = RouterSet.read_routing(routers).knob
    chosen = sample(list(labelled), settings.static_examples, settings.seed)
    influence = block_influence(runner.scorer, chosen)
    static, trace = static_paths(
        runner.scorer, chosen, settings.static_budgets, constraints, settings.static_shortlist, known
    )
    static["shortgpt_bi"] = {b: lowest_influence_path(influence, b) for b in settings.static_budgets}
    early_exit, exit_trace = choose_exit(
        runner.scorer,
        chosen,
        exit_layers(settings.exit_depths, layers),
        settings.exit_blocks_saved,
        runner.batch_size,
    )
    first = min(settings.static_budgets)
    routed = [
        Configuration.routed("drllm", all_sets, routers, knob),
        *(
            Configuration.routed(f"drllm_knob_{v:+g}", in_domain, routers, v)
            for v in settings.knob_sweep
            if v != knob
        ),
        *(
            Configuration.routed(f"routers_{name}", in_domain, folder, knob)
            for name, folder in other_routers.items()
        ),
    ]
    configs = [
        Configuration.static("vanilla", all_sets, LayerPath.default(layers)),
        *routed,
        *(
            Configuration.static(
                f"{name}_{budget}",
                all_sets if budget == first and name != "faithful_static" else in_domain,
                path,
            )
            for name, paths in static.items()
            for budget, path in paths.items()
        ),
        Configuration.exiting("early_exit", all_sets, early_exit),
        Configuration.random_like("random_skip", in_domain, routed[0], constraints, settings.seed),
    ]
    results = pd.DataFrame([row for rows in runner.run_many(configs).values() for row in rows])
    deepest = random_deepest_rows(runner, results, "eval_id", settings.seed)
    results = pd.concat([results, pd.DataFrame(deepest)], ignore_index=True)
    drllm_id = results[(results["config"] == "drllm") & (results["set"] == "eval_id")]
    budget = min(settings.static_budgets, key=lambda b: abs(b - (layers - drllm_id["blocks"].mean())))
    references = [
        *(f"{name}_{budget}" for name in static),
        "random_skip",
        "random_deepest",
        *(f"routers_{n}" for n in other_routers),
    ]
    chosen_paths = {name: {str(b): str(p) for b, p in paths.items()} for name, paths in static.items()}
    details = {
        "static_budget": budget,
        "static_paths": chosen_paths,
        "static_trace": trace,
        "block_influence": influence,
        "early_exit": {"layer": early_exit.layer, "threshold": early_exit.threshold, "trace": exit_trace},
    }
    return Evaluation(
        results,
        summarize(results, layers),
        comparisons(results, [*references, "drllm"], all_sets, challengers=("drllm", "early_exit")),
        knob,
        details,
        {config.name: config.routers for config in routed},
    )


def metrics_document(
    evaluation: Evaluation,
    num_layers: int,
    routers: str,
    oracle: pd.DataFrame,
    searched: dict,
    generation: dict,
    numerics: dict[str, str],
) -> dict:
    """metrics/eval.json: per configuration and set the headline figures, the comparisons, per task
    figures, the static baselines, and the oracle on the search set (`oracle`: the search output the served
    routers learned from, `searched`: its stats) as an upper bound; `numerics` (LoadedModel.numerics) says
    in which dtype, on which device, they were computed."""
    overall = evaluation.summary[evaluation.summary["task"] == "all"]
    return {
        "num_layers": num_layers,
        "numerics": numerics,
        "routers_hash": routers_hash(routers),
        "knob": evaluation.knob,
        **evaluation.static,
        "configs": {
            f"{row.config}/{row.set}": {
                k: getattr(row, k)
                for k in (
                    *SCORE_COLUMNS,
                    "distinct_paths",
                    "agreement",
                    "agreement_low",
                    "agreement_high",
                    "kl_from_vanilla",
                )
            }
            for row in overall.itertuples()
        },
        "oracle_search": oracle_figures(oracle, searched, num_layers),
        "comparisons": evaluation.comparisons,
        "generation": generation,
        "per_task": evaluation.summary.to_dict("records"),
    }


def headline(document: dict) -> dict:
    """metrics/headline.json: the few flat figures `dvc exp show` and `dvc metrics diff` compare at a glance
    (eval.json is nested lists). Accuracies and differences in points; None where a figure was not measured
    (Dr.LLM is compared with the best static path at the budget nearest its saving, which may be in-domain
    only)."""
    configs, static = document["configs"], f"best_static_{document['static_budget']}"
    flat: dict[str, float | None] = {"knob": document["knob"]}

    def points(value):
        return None if value is None else 100 * value

    for set_name, short in (("eval_id", "id"), ("eval_ood", "ood")):
        for config in ("vanilla", "drllm", "early_exit"):
            figures = configs.get(f"{config}/{set_name}", {})
            flat[f"{config}_{short}_acc"] = points(figures.get("accuracy"))
        for config in ("drllm", "early_exit"):
            blocks = configs.get(f"{config}/{set_name}", {}).get("blocks_per_token")
            flat[f"{config}_{short}_blocks_saved"] = (
                None if blocks is None else document["num_layers"] - blocks
            )
            for reference, name in (("vanilla", "vanilla"), (static, "static")):
                found = next(
                    (
                        c
                        for c in document["comparisons"]
                        if c["config"] == config and c["reference"] == reference and c["set"] == set_name
                    ),
                    {},
                )
                for key in ("difference", "ci_low", "ci_high"):
                    flat[f"{config}_{short}_vs_{name}_{key.replace('difference', 'diff')}"] = points(
                        found.get(key)
                    )
                flat[f"{config}_{short}_vs_{name}_p"] = found.get("mcnemar_p")
    return flat


def oracle_figures(paths: pd.DataFrame, searched: dict, num_layers: int) -> dict:
    """Each search question on its best labelled path: an upper bound, since no router sees the answer. Path
    labels: the kept path (right by construction; a dropped question counts as wrong on the default path).
    Skip costs: the single skip that changes the answer least (its correctness as the search scored it)."""
    if "costs" not in paths:
        blocks = paths["blocks"].sum() + num_layers * searched["dropped_no_correct_path"]
        return {
            "n": int(searched["examples"]),
            "accuracy": searched["kept"] / searched["examples"],
            "blocks_per_token": float(blocks / searched["examples"]),
        }
    correct = []
    for row in paths.itertuples():
        costs = np.nan_to_num(np.asarray(row.costs, dtype=float), nan=np.inf)
        if np.isinf(costs).all():  # a generated answer: no choice distribution, no cost
            continue
        path = [0 if i == int(costs.argmin()) else 1 for i in range(num_layers)]
        correct.append(bool(row.scored_correct[[list(p) for p in row.scored_labels].index(path)]))
    return {"n": len(paths), "accuracy": float(np.mean(correct)), "blocks_per_token": float(num_layers - 1)}


def pareto_rows(evaluation: Evaluation) -> pd.DataFrame:
    """In-domain accuracy against blocks per token, one row per configuration (plots/eval/pareto.csv)."""
    overall = evaluation.summary[
        (evaluation.summary["task"] == "all") & (evaluation.summary["set"] == "eval_id")
    ]
    return overall[["config", "accuracy", "blocks_per_token", "ci_low", "ci_high"]]


def log_runs(evaluation: Evaluation, registered_model: str, generation: dict) -> None:
    """One MLflow run per configuration: accuracy, agreement and layers saved per set and task, and the
    comparisons (Dr.LLM's with its generation agreement); routed configurations are tagged with their router
    set's hash, and Dr.LLM with its registered version."""
    for config, frame in evaluation.summary.groupby("config", sort=False):
        tags = {"drllm.config": config}
        if config in evaluation.folders:
            digest = routers_hash(evaluation.folders[config])
            tags[tracking.ROUTERS_HASH_TAG] = digest
            version = tracking.find_version(registered_model, digest) if config == "drllm" else None
            if version is not None:
                tags["drllm.registered_model"] = f"models:/{registered_model}/{version.version}"
        metrics = {}
        for row in frame.itertuples():
            prefix = f"{row.set}.{row.task}"
            metrics |= {
                f"{prefix}.accuracy": row.accuracy,
                f"{prefix}.layers_saved_pct": row.saved_pct,
                f"{prefix}.blocks_per_token": row.blocks_per_token,
            }
        if config == "drllm":
            metrics |= {
                f"generation.{s}.{k}": v for s, figures in generation.items() for k, v in figures.items()
            }
        for row in frame.itertuples():
            metrics[f"{row.set}.{row.task}.agreement"] = row.agreement
        for comparison in (c for c in evaluation.comparisons if c["config"] == config):
            ref = f"vs_{comparison['reference']}.{comparison['set']}"
            metrics |= {
                f"{ref}.difference": comparison["difference"],
                f"{ref}.mcnemar_p": comparison["mcnemar_p"],
            }
        tracking.log_stage("evaluate", {}, metrics, tags, name=f"evaluate-{config}")
