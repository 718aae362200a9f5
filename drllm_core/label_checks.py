"""The Great Expectations suite that guards path labels before training (GX Core 1.x, defined in code).

GX checks columns, so each property of a label vector is first derived as a scalar column (its length,
smallest and largest count, longest skip run, blocks, whether the stored execution order matches the
labels, whether the example leaks into an evaluation set, ...). Every expectation carries `meta.level`:
`fail` stops the pipeline, `warn` is reported only. Class-share bounds have both levels, from params.yaml.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from drllm_core.errors import ConfigError, typed
from drllm_core.paths import PAPER_CONSTRAINTS, LayerPath, PathConstraints, longest_skip_run

REQUIRED = {
    "example_id": "str",
    "task": "str",
    "labels": None,  # list column: checked through derived columns
    "order": None,
    "kept": "bool",
    "wrong_to_correct": "bool",
}


@dataclass
class ShareBounds:
    """Allowed range of a label class share: outside `warn` is reported, outside `fail` stops the pipeline."""

    warn: tuple[float, float]
    fail: tuple[float, float]


@dataclass(frozen=True)
class ValidateSettings:
    """params.yaml's `validate` section, checked before any work: `shares` bounds the skip and repeat shares
    (execute is what remains), each a `warn` and a `fail` range within [0, 1]."""

    min_examples: int
    shares: dict[str, ShareBounds]

    @classmethod
    def from_params(cls, params: dict) -> ValidateSettings:
        if not isinstance(params, dict) or set(params) != {"min_examples", "shares"}:
            raise ConfigError(
                f"params.yaml `validate` needs exactly the keys min_examples and shares, got {params!r}"
            )
        min_examples = typed(params["min_examples"], int, "validate.min_examples")
        if min_examples < 1:
            raise ConfigError(f"validate.min_examples must be at least 1, got {min_examples}")
        shares = params["shares"] or {}
        if not isinstance(shares, dict) or not set(shares) <= {"skip", "repeat"}:
            raise ConfigError(f"validate.shares bounds the classes skip and repeat only, got {shares!r}")
        return cls(min_examples, {kind: _bounds(kind, bounds) for kind, bounds in shares.items()})


def _bounds(kind: str, bounds) -> ShareBounds:
    where = f"validate.shares.{kind}"
    if not isinstance(bounds, dict) or set(bounds) != {"warn", "fail"}:
        raise ConfigError(
            f"{where} needs a warn and a fail range, e.g. {{warn: [0.05, 0.35], fail: [0, 0.6]}}"
        )
    ranges = {}
    for level, pair in bounds.items():
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise ConfigError(f"{where}.{level} must be a [low, high] pair of shares, got {pair!r}")
        low, high = (typed(v, float, f"{where}.{level}") for v in pair)
        if not 0 <= low <= high <= 1:
            raise ConfigError(f"{where}.{level} must be 0 <= low <= high <= 1, got {pair!r}")
        ranges[level] = (low, high)
    return ShareBounds(ranges["warn"], ranges["fail"])


@dataclass
class CheckResult:
    name: str
    level: str  # fail | warn
    success: bool
    description: str
    observed: object = None
    offending_ids: list[str] = field(default_factory=list)
    offending_count: int = 0

    def message(self) -> str:
        text = f"{self.name}: {self.description}"
        if self.offending_count:
            text += f" ({self.offending_count} examples, e.g. {', '.join(self.offending_ids[:5])})"
        elif self.observed is not None:
            text += f" (observed {self.observed})"
        return text


def derived_columns(
    paths: pd.DataFrame, search: pd.DataFrame, evaluation: list[pd.DataFrame]
) -> pd.DataFrame:
    """One row per example with the scalar properties the suite checks."""
    frame = paths.copy()
    if "labels" in frame:
        raw = [np.asarray(v if v is not None else [], dtype=float) for v in frame["labels"]]
        frame["labels_are_whole"] = [bool(np.all(v == np.round(v))) for v in raw]
        labels = [np.round(v).astype(int) for v in raw]
        frame["labels_length"] = [len(v) for v in labels]
        frame["labels_min"] = [int(v.min()) if v.size else -1 for v in labels]
        frame["labels_max"] = [int(v.max()) if v.size else -1 for v in labels]
        frame["longest_skip_run"] = [longest_skip_run(v.tolist()) for v in labels]
        frame["path_blocks"] = [int(v.sum()) for v in labels]
        frame["skip_share"] = [float((v == 0).mean()) if v.size else 0.0 for v in labels]
        frame["repeat_share"] = [float((v == 2).mean()) if v.size else 0.0 for v in labels]
        if {"scored_labels", "scored_reward"} <= set(frame) and not {"costs", "soft_labels"} & set(frame):
            frame["label_was_rewarded"] = [
                any(list(s) == v.tolist() and r >= 1.0 for s, r in zip(scored, rewards, strict=True))
                for v, scored, rewards in zip(
                    labels, frame["scored_labels"], frame["scored_reward"], strict=True
                )
            ]
        if "order" in frame:
            frame["order_matches_labels"] = [
                v.size > 0 and v.min() >= 0 and list(order) == LayerPath.from_counts(v).order
                for v, order in zip(labels, frame["order"], strict=True)
            ]
    if "costs" in frame:  # skip-cost labels: per layer a KL divergence (NaN: not searched) and a kept answer
        costs = [np.asarray(v if v is not None else [], dtype=float) for v in frame["costs"]]
        frame["costs_length"] = [len(v) for v in costs]
        frame["costs_valid"] = [bool(np.all(np.isnan(v) | (v >= 0))) and not np.isinf(v).any() for v in costs]
        keeps = [np.asarray(v if v is not None else [], dtype=float) for v in frame["keeps"]]
        frame["skips_known"] = [int((~np.isnan(v)).sum()) for v in keeps]
        frame["keeps_valid"] = [bool(np.all(np.isnan(v) | (v == 0) | (v == 1))) for v in keeps]
    if "example_id" in frame:
        hashes = dict(zip(search["example_id"], search["question_hash"], strict=True))
        frame["in_search_set"] = frame["example_id"].isin(hashes)
        eval_ids = set().union(*(set(e["example_id"]) for e in evaluation))
        eval_hashes = set().union(*(set(e["question_hash"]) for e in evaluation))
        frame["leaks_into_evaluation"] = [
            example_id in eval_ids or hashes.get(example_id) in eval_hashes
            for example_id in frame["example_id"]
        ]
    return frame


def _expectations(
    frame: pd.DataFrame,
    num_layers: int,
    min_examples: int,
    shares: dict[str, ShareBounds],
    constraints: PathConstraints,
):
    """(name, level, description, expectation) for every check whose input columns exist; the path limits are
    the ones the search ran under (`search.max_skip_run`, `search.max_blocks`)."""
    import great_expectations as gx

    E = gx.expectations
    checks = [
        (
            "enough examples",
            "fail",
            f"at least {min_examples} kept examples",
            E.ExpectTableRowCountToBeBetween(min_value=min_examples),
        )
    ]
    for column, kind in REQUIRED.items():
        checks.append(
            (
                f"column {column}",
                "fail",
                f"column `{column}` is present",
                E.ExpectColumnToExist(column=column),
            )
        )
        if kind and column in frame:
            checks.append(
                (
                    f"type of {column}",
                    "fail",
                    f"`{column}` values are {kind}",
                    E.ExpectColumnValuesToBeOfType(column=column, type_=kind),
                )
            )
    if "example_id" in frame:
        checks += [
            (
                "unique ids",
                "fail",
                "example ids are unique",
                E.ExpectColumnValuesToBeUnique(column="example_id"),
            ),
            (
                "from the search set",
                "fail",
                "every example is in data/prepared/search.parquet",
                E.ExpectColumnValuesToBeInSet(column="in_search_set", value_set=[True]),
            ),
            (
                "no leakage",
                "fail",
                "no example shares an id or a normalised question with an evaluation set",
                E.ExpectColumnValuesToBeInSet(column="leaks_into_evaluation", value_set=[False]),
            ),
        ]
    if "labels" in frame:
        budget = constraints.budget(num_layers)
        checks += [
            (
                "label length",
                "fail",
                f"every label vector has {num_layers} entries (the model's layers)",
                E.ExpectColumnValuesToBeBetween(
                    column="labels_length", min_value=num_layers, max_value=num_layers
                ),
            ),
            (
                "whole labels",
                "fail",
                "labels are whole numbers (a layer runs a whole number of times)",
                E.ExpectColumnValuesToBeInSet(column="labels_are_whole", value_set=[True]),
            ),
            (
                "labels in {0,1,2}",
                "fail",
                "labels are 0 (skip), 1 (execute) or 2 (repeat)",
                E.ExpectColumnValuesToBeBetween(column="labels_min", min_value=0, max_value=2),
            ),
            (
                "labels at most 2",
                "fail",
                "no layer runs more than twice",
                E.ExpectColumnValuesToBeBetween(column="labels_max", min_value=0, max_value=2),
            ),
            (
                "path length",
                "fail",
                f"a path executes at most {budget} blocks (search.max_blocks; null: 2L)",
                E.ExpectColumnValuesToBeBetween(column="path_blocks", min_value=0, max_value=budget),
            ),
        ]
        if constraints.max_skip_run is not None:
            checks.append(
                (
                    "skip runs",
                    "fail",
                    f"no run of more than {constraints.max_skip_run} consecutive skipped layers (search.max_skip_run)",
                    E.ExpectColumnValuesToBeBetween(
                        column="longest_skip_run", min_value=0, max_value=constraints.max_skip_run
                    ),
                )
            )
        for kind, bounds in shares.items() if not {"costs", "soft_labels"} & set(frame) else ():
            for level in ("fail", "warn"):
                low, high = getattr(bounds, level)
                checks.append(
                    (
                        f"{kind} share ({level})",
                        level,
                        f"the share of {kind} labels lies in [{low}, {high}]",
                        E.ExpectColumnMeanToBeBetween(column=f"{kind}_share", min_value=low, max_value=high),
                    )
                )
    if "costs" in frame:
        checks += [
            (
                "cost length",
                "fail",
                f"every cost vector has {num_layers} entries (the model's layers)",
                E.ExpectColumnValuesToBeBetween(
                    column="costs_length", min_value=num_layers, max_value=num_layers
                ),
            ),
            (
                "costs are divergences",
                "fail",
                "every skip cost is a finite KL divergence (at least 0), or NaN where not searched",
                E.ExpectColumnValuesToBeInSet(column="costs_valid", value_set=[True]),
            ),
            (
                "skips were searched",
                "fail",
                "every question has at least one searched skip",
                E.ExpectColumnValuesToBeBetween(column="skips_known", min_value=1),
            ),
            (
                "kept answers",
                "fail",
                "whether a skip keeps the answer is 0, 1, or NaN where not searched",
                E.ExpectColumnValuesToBeInSet(column="keeps_valid", value_set=[True]),
            ),
        ]
    if "order" in frame and "labels" in frame:
        checks.append(
            (
                "path matches labels",
                "fail",
                "the stored execution order is the one the labels give",
                E.ExpectColumnValuesToBeInSet(column="order_matches_labels", value_set=[True]),
            )
        )
    if "label_was_rewarded" in frame:
        checks.append(
            (
                "labels were rewarded",
                "fail",
                "every label is a path the search scored with reward 1",
                E.ExpectColumnValuesToBeInSet(column="label_was_rewarded", value_set=[True]),
            )
        )
    return checks


def run_suite(
    frame: pd.DataFrame,
    num_layers: int,
    min_examples: int,
    shares: dict[str, ShareBounds],
    constraints: PathConstraints = PAPER_CONSTRAINTS,
) -> list[CheckResult]:
    """Validate the derived frame with an ephemeral GX context; one CheckResult per expectation."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    batch = (
        context.data_sources.add_pandas("drllm")
        .add_dataframe_asset("paths")
        .add_batch_definition_whole_dataframe("all")
    )
    checks = _expectations(frame, num_layers, min_examples, shares, constraints)
    suite = context.suites.add(gx.ExpectationSuite(name="path_labels"))
    for name, level, description, expectation in checks:
        expectation.meta = {"name": name, "level": level, "description": description}
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="path_labels", data=batch, suite=suite)
    )
    index = ["example_id"] if "example_id" in frame else []
    outcome = definition.run(
        batch_parameters={"dataframe": frame},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": index},
    )
    results = []
    for item in outcome.results:
        meta = item.expectation_config.meta
        unexpected = item.result.get("unexpected_index_list") or []
        ids = list(dict.fromkeys(str(u.get("example_id")) for u in unexpected if isinstance(u, dict)))
        observed = item.result.get("observed_value")
        results.append(
            CheckResult(
                meta["name"],
                meta["level"],
                bool(item.success),
                meta["description"],
                observed=float(observed) if isinstance(observed, int | float | np.number) else observed,
                offending_ids=ids[:20],
                offending_count=len(ids),
            )
        )
    return results


def render_html(strategy: str, summary: dict, checks: list[CheckResult]) -> str:
    """The validation report: the summary and one row per check, failed and warned ones highlighted."""
    rows = "".join(
        f"<tr class={'ok' if c.success else c.level}><td>{html.escape(c.name)}</td><td>{c.level}</td>"
        f"<td>{'pass' if c.success else 'FAIL' if c.level == 'fail' else 'warn'}</td>"
        f"<td>{html.escape(c.description)}</td><td>{html.escape(str(c.observed if c.observed is not None else ''))}</td>"
        f"<td>{c.offending_count or ''} {html.escape(', '.join(c.offending_ids[:5]))}</td></tr>"
        for c in checks
    )
    facts = "".join(
        f"<li>{html.escape(k)}: {html.escape(str(v))}</li>" for k, v in summary.items() if k != "checks"
    )
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>Label validation</title><style>"
        "body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px 8px}"
        "table{border-collapse:collapse}.fail{background:#fdd}.warn{background:#ffd}.ok{background:#efe}"
        f"</style></head><body><h1>Label validation: {html.escape(strategy)}</h1><ul>{facts}</ul>"
        "<table><tr><th>check</th><th>level</th><th>result</th><th>expectation</th><th>observed</th>"
        f"<th>offending examples</th></tr>{rows}</table></body></html>"
    )


def summarize_checks(
    strategy: str, paths: pd.DataFrame, frame: pd.DataFrame, checks: list[CheckResult]
) -> dict:
    """What result.json reports besides the checks: the outcome, and the label shares and W->C share."""
    failed = [c for c in checks if not c.success and c.level == "fail"]

    def mean(data: pd.DataFrame, column: str) -> float:
        return float(data[column].mean()) if column in data and len(data) else 0.0

    return {
        "strategy": strategy,
        "success": not failed,
        "examples": len(paths),
        "failed_checks": len(failed),
        "warnings": sum(1 for c in checks if not c.success and c.level == "warn"),
        "wrong_to_correct_share": mean(paths, "wrong_to_correct"),
        "skip_share": mean(frame, "skip_share"),
        "repeat_share": mean(frame, "repeat_share"),
    }
