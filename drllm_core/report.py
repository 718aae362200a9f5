"""The pipeline report: figures (matplotlib) and the same tables as Markdown and as a self-contained HTML page.

Every number in a table comes from the stage outputs as written (metrics/eval.json, metrics/train/*.json,
data/paths/*/stats.json), so the report can be checked against them.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from drllm_core.paths import CLASS_NAMES
from drllm_core.stats import SCORE_COLUMNS

FIGURES = {
    "pareto": "Accuracy and agreement with vanilla vs blocks executed per token (in-domain test)",
    "routing": "Dr.LLM routing: share of skip / execute / repeat by layer and task family",
    "labels": "Label classes found by each search strategy",
    "confusion": "Router confusion matrix on held-out search examples (MCTS labels)",
}


OTHER_COLOURS = ("C0", "C1", "C2", "C4", "C5", "C6", "C7", "C8", "C9")  # C3 (red) is Dr.LLM's alone
DODGE = 0.04  # blocks between neighbouring single points of the Pareto picture


def pareto_figure(eval_metrics: dict, path: Path) -> None:
    """Accuracy and agreement with vanilla against blocks per token, in-domain: each family of
    configurations (Dr.LLM over its knobs, each static baseline over its budgets) one line, the others
    points, named in the legend so that no label covers another. The points sit at Dr.LLM's own blocks, so
    each is moved sideways by a few hundredths of a block (the axis label says so) not to hide the others."""
    configs = {k.split("/")[0]: v for k, v in eval_metrics["configs"].items() if k.endswith("/eval_id")}
    families: dict[str, list[tuple[str, dict]]] = {}
    for name, row in configs.items():
        family = (
            "drllm" if name.startswith("drllm") else name.rsplit("_", 1)[0] if name[-1].isdigit() else name
        )
        families.setdefault(family, []).append((name, row))
    dodge = sideways(families)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, (metric, low, high, label) in zip(
        axes,
        (
            ("accuracy", "ci_low", "ci_high", "accuracy"),
            ("agreement", "agreement_low", "agreement_high", "agreement with vanilla"),
        ),
        strict=True,
    ):
        others = [f for f in sorted(families) if f != "drllm"]
        for family, members in sorted(families.items()):
            members = sorted(members, key=lambda m: m[1]["blocks_per_token"])
            x = [m[1]["blocks_per_token"] + dodge[family] for m in members]
            y = [m[1][metric] for m in members]
            err = [[m[1][metric] - m[1][low] for m in members], [m[1][high] - m[1][metric] for m in members]]
            style = (
                {"color": "C3", "marker": "*", "markersize": 11, "linewidth": 2}
                if family == "drllm"
                else {"color": OTHER_COLOURS[others.index(family) % len(OTHER_COLOURS)], "marker": "o"}
            )
            axis.errorbar(x, y, yerr=err, capsize=3, label=family, **style)
        axis.set_xlabel(f"blocks executed per token (single points moved by up to {max(dodge.values()):.2f})")
        axis.set_ylabel(f"{label} (95% interval)")
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(FIGURES["pareto"], fontsize=10)
    _save(fig, path)


def sideways(families: dict[str, list]) -> dict[str, float]:
    """Each family's sideways shift in blocks: the single points (not vanilla) spread by DODGE around their
    blocks, lines and vanilla in place."""
    points = [f for f in sorted(families) if len(families[f]) == 1 and f not in ("drllm", "vanilla")]
    return {f: DODGE * (points.index(f) - (len(points) - 1) / 2) if f in points else 0.0 for f in families}


def routing_figure(results: pd.DataFrame, families: dict[str, str], num_layers: int, path: Path) -> None:
    routed = results[results["config"] == "drllm"].copy()
    routed["family"] = routed["task"].map(lambda t: families.get(t, t))
    groups = sorted(routed["family"].unique())
    fig, axes = plt.subplots(1, 3, figsize=(12, 0.5 * len(groups) + 2), sharey=True)
    for axis, (value, name) in zip(axes, enumerate(CLASS_NAMES), strict=True):
        grid = (
            np.array(
                [
                    (np.stack(routed[routed["family"] == g]["path"].map(np.asarray).tolist()) == value).mean(
                        0
                    )
                    for g in groups
                ]
            )
            if len(routed)
            else np.zeros((len(groups), num_layers))
        )
        image = axis.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=max(grid.max(), 1e-6))
        axis.set_title(name)
        axis.set_xlabel("layer")
        axis.set_yticks(range(len(groups)), groups)
        fig.colorbar(image, ax=axis, fraction=0.046)
    fig.suptitle(FIGURES["routing"], fontsize=10)
    _save(fig, path)


def labels_figure(search_stats: dict[str, dict], path: Path) -> None:
    strategies = list(search_stats)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bottom = np.zeros(len(strategies))
    for name in CLASS_NAMES:
        shares = np.array([search_stats[s]["label_shares"][name] for s in strategies])
        ax.bar(strategies, shares, bottom=bottom, label=name)
        bottom += shares
    ax.set_ylabel("share of layer labels")
    ax.legend(loc="lower right")
    ax.set_title(FIGURES["labels"], fontsize=10)
    _save(fig, path)


def confusion_figure(confusion: Sequence[Sequence[int]], path: Path) -> None:
    matrix = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(matrix, cmap="Blues")
    names = list(CLASS_NAMES)
    ax.set_xticks(range(3), names)
    ax.set_yticks(range(3), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    for i in range(3):
        for j in range(3):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color="black")
    ax.set_title(FIGURES["confusion"], fontsize=9)
    _save(fig, path)


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- tables -------------------------------------------------------------------------------------------------
SEARCH_COLUMNS = (
    "examples",
    "kept",
    "kept_share",
    "wrong_to_correct",
    "mean_blocks_saved",
    "simulations_per_example",
)
ROUTER_COLUMNS = (  # class routers, then cost routers: each set shows the columns it has
    "train_examples",
    "val_examples",
    "val_macro_f1",
    "majority_macro_f1",
    "prior_macro_f1",
    "val_accuracy",
    "majority_accuracy",
    "val_changed",
    "static_changed",
    "oracle_changed",
    "val_mse",
    "trivial_mse",
)


def report_sections(
    evaluation: dict,
    calibration: dict,
    search_stats: dict[str, dict],
    training: dict[str, dict],
    runs: list[tuple[str, str]],
    figures: Sequence[str],
) -> list[tuple[str, str, object]]:
    """The report's sections (see render) from metrics/eval.json, metrics/calibration.json, the search stats
    per strategy, the train metrics per router set, the MLflow run links and the figures drawn."""
    layers = evaluation["num_layers"]
    oracle = evaluation["oracle_search"]
    config_rows = [
        {"configuration": key.split("/")[0], "set": key.split("/")[1], **values}
        for key, values in evaluation["configs"].items()
    ]
    config_rows.append(
        {
            "configuration": "oracle_search",
            "set": "search",
            "n": oracle["n"],
            "accuracy": oracle["accuracy"],
            "ci_low": "",
            "ci_high": "",
            "blocks_per_token": oracle["blocks_per_token"],
            "saved_pct": 100 * (1 - oracle["blocks_per_token"] / layers),
            "distinct_paths": "",
        }
    )
    comparison_rows = [
        {
            "configuration": c["config"],
            "versus": c["reference"],
            "set": c["set"],
            "n": c["n"],
            "difference": c["difference"],
            "ci_low": c["ci_low"],
            "ci_high": c["ci_high"],
            "mcnemar_p": c["mcnemar_p"],
            "verdict": verdict(c),
            "agreement_difference": c["agreement_difference"],
            "agreement_p": c["agreement_mcnemar_p"],
        }
        for c in evaluation["comparisons"]
    ]
    task_rows = [
        {k: r[k] for k in ("config", "set", "task", *SCORE_COLUMNS)}
        for r in evaluation["per_task"]
        if r["config"] in ("vanilla", "drllm") and r["task"] != "all"
    ]
    search_rows = [{"strategy": s, **{k: v[k] for k in SEARCH_COLUMNS}} for s, v in search_stats.items()]
    router_rows = [
        {"routers": name, **{k: m.get(k, "") for k in ROUTER_COLUMNS}} for name, m in training.items()
    ]
    calibration_rows = [
        {"knob": r["knob"], "accuracy": r["accuracy"], "blocks_saved": r["blocks_saved"]}
        for r in calibration["calibration"]
    ]
    generation_rows = [
        {"prompts": name, **figures} for name, figures in evaluation.get("generation", {}).items()
    ]
    static_rows = [
        {"baseline": name, "skipped": budget, "path": path}
        for name, paths in evaluation["static_paths"].items()
        for budget, path in paths.items()
    ]
    return [
        ("Summary", "text", headline(evaluation)),
        ("Accuracy and compute", "figure", "pareto"),
        ("Results per configuration", "table", (config_rows, "results")),
        ("Paired comparisons", "table", (comparison_rows, "comparisons")),
        ("Vanilla and Dr.LLM per task", "table", (task_rows, "per-task")),
        (
            "Generation: routed answers against vanilla's (greedy, served format)",
            "table",
            (generation_rows, "generation"),
        ),
        ("Knob calibration on held-out search questions", "table", (calibration_rows, "calibration")),
        ("Static baselines (layer counts, 0 = skipped)", "table", (static_rows, "static")),
        ("Routing patterns", "figure", "routing"),
        ("Search", "table", (search_rows, "search")),
        ("Label classes", "figure", "labels"),
        ("Routers", "table", (router_rows, "routers")),
        *([("Router confusion", "figure", "confusion")] if "confusion" in figures else []),
        ("MLflow runs", "links", runs),
    ]


def headline(evaluation: dict) -> str:
    versus = comparisons_by_key(evaluation)
    drllm = versus.get(("drllm", "vanilla", "eval_id"))
    if drllm is None:
        return "Dr.LLM was not evaluated."
    text = (
        f"In-domain, Dr.LLM scores {drllm['difference'] * 100:+.1f} points against the vanilla model "
        f"(paired 95% interval {drllm['ci_low'] * 100:+.1f} to {drllm['ci_high'] * 100:+.1f}, McNemar p = "
        f"{drllm['mcnemar_p']:.3f}) while executing {evaluation['configs']['drllm/eval_id']['blocks_per_token']:.2f} "
        f"of {evaluation['num_layers']} blocks per token (knob {evaluation.get('knob', 0.0):+g}); "
    )
    exited = versus.get(("early_exit", "vanilla", "eval_id"))
    if exited is not None:
        text += (
            f"the early exit after {evaluation['early_exit']['layer']} layers scores "
            f"{exited['difference'] * 100:+.1f} ({exited['ci_low'] * 100:+.1f} to {exited['ci_high'] * 100:+.1f}, "
            f"p = {exited['mcnemar_p']:.3f}) executing "
            f"{evaluation['configs']['early_exit/eval_id']['blocks_per_token']:.2f}; "
        )
    return text + f"computed in {computed_in(evaluation)}."


def computed_in(evaluation: dict) -> str:
    """The dtype and device of a run (metrics/eval.json `numerics`; runs before it was recorded say so)."""
    numerics = evaluation.get("numerics")
    if not numerics:
        return "a dtype the run did not record"
    return f"{numerics['dtype']} on {numerics['device']} (torch {numerics['torch']})"


def verdict(comparison: dict) -> str:
    """A paired accuracy comparison in words: better or worse only when McNemar's test says so."""
    if not comparison["significant"]:
        return "within noise"
    return "better" if comparison["difference"] > 0 else "worse"


SUMMARY_CONFIGS = (
    "vanilla",
    "drllm",
    "early_exit",
    "best_static",
    "faithful_static",
    "shortgpt_bi",
    "random_skip",
    "random_deepest",
)


def at_budget(config: str, budget: int) -> str:
    """A static baseline's configuration name at `budget` skipped layers; other configurations as named."""
    return f"{config}_{budget}" if config.endswith(("static", "_bi")) else config


def comparisons_by_key(evaluation: dict) -> dict[tuple[str, str, str], dict]:
    """eval.json's paired comparisons by (config, reference, set)."""
    return {(c["config"], c["reference"], c["set"]): c for c in evaluation["comparisons"]}


def interval(low: float, high: float) -> str:
    """A paired interval of a difference of shares, in points."""
    return f"[{100 * low:+.1f}, {100 * high:+.1f}]"


def summary_markdown(evaluation: dict) -> str:
    """reports/summary.md, which the README includes: the headline configurations in percent (the static
    baselines at the budget Dr.LLM is compared at), and Dr.LLM and the early exit against each on the same
    questions."""
    wanted = [at_budget(c, evaluation["static_budget"]) for c in SUMMARY_CONFIGS]
    versus = comparisons_by_key(evaluation)
    lines = [
        "| configuration | set | n | accuracy % [95% CI] | agrees with vanilla % | blocks saved / token "
        "| vs vanilla, points [paired 95% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, row in evaluation["configs"].items():
        config, set_name = key.split("/")
        if config not in wanted:
            continue
        paired = versus.get((config, "vanilla", set_name))
        difference = (
            f"{100 * paired['difference']:+.1f} {interval(paired['ci_low'], paired['ci_high'])}"
            if paired
            else "–"
        )
        lines.append(
            f"| {config} | {set_name} | {row['n']} | {100 * row['accuracy']:.1f} [{100 * row['ci_low']:.1f}, "
            f"{100 * row['ci_high']:.1f}] | {100 * row['agreement']:.1f} | {evaluation['num_layers'] - row['blocks_per_token']:.2f} "
            f"| {difference} |"
        )
    lines += [
        "",
        "| configuration | versus | set | accuracy, points [paired 95% CI] | McNemar p | verdict "
        "| agreement with vanilla, points [paired 95% CI] | McNemar p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    # the early exit against the best static path, random_deepest and Dr.LLM only (the report has the rest)
    exit_references = (at_budget("best_static", evaluation["static_budget"]), "random_deepest", "drllm")
    for c in evaluation["comparisons"]:
        if c["config"] not in ("drllm", "early_exit") or c["reference"] == "vanilla":
            continue
        if c["config"] == "early_exit" and c["reference"] not in exit_references:
            continue
        lines.append(
            f"| {c['config']} | {c['reference']} | {c['set']} | {100 * c['difference']:+.1f} {interval(c['ci_low'], c['ci_high'])} "
            f"| {c['mcnemar_p']:.3f} | {verdict(c)} | {100 * c['agreement_difference']:+.1f} "
            f"{interval(c['agreement_ci_low'], c['agreement_ci_high'])} | {c['agreement_mcnemar_p']:.3f} |"
        )
    return "\n".join([headline(evaluation), "", *lines]) + "\n"


def models_markdown(runs: dict[str, dict]) -> str:
    """docs/models.md: each model's run (model name -> its eval.json) side by side, then its own summary.
    Every comparison is paired within a model, on that model's test questions."""

    def paired(evaluation: dict, reference: str, set_name: str, agreement: bool) -> str:
        c = comparisons_by_key(evaluation).get(
            ("drllm", at_budget(reference, evaluation["static_budget"]), set_name)
        )
        if c is None:
            return "–"
        key = "agreement_" if agreement else ""
        return (
            f"{100 * c[f'{key}difference']:+.1f} {interval(c[f'{key}ci_low'], c[f'{key}ci_high'])}, "
            f"p = {c[f'{key}mcnemar_p']:.3f}"
        )

    def vanilla(evaluation: dict, set_name: str, task: str) -> str:
        row = next(
            (
                r
                for r in evaluation["per_task"]
                if (r["config"], r["set"], r["task"]) == ("vanilla", set_name, task)
            ),
            None,
        )
        if row is None:
            return "–"
        return f"{100 * row['accuracy']:.1f} [{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}] (n {row['n']})"

    def drllm(evaluation: dict, set_name: str) -> str:
        row, layers = evaluation["configs"][f"drllm/{set_name}"], evaluation["num_layers"]
        return (
            f"{layers - row['blocks_per_token']:.2f} of {layers} saved; accuracy {100 * row['accuracy']:.1f}, "
            f"agreement with vanilla {100 * row['agreement']:.1f}"
        )

    tasks = sorted(
        {(r["set"], r["task"]) for e in runs.values() for r in e["per_task"] if r["config"] == "vanilla"},
        key=lambda t: (t[0], t[1] != "all", t[1]),
    )
    rows: list[tuple[str, list[str]]] = [
        (f"vanilla accuracy %, {s} {'(all)' if t == 'all' else t}", [vanilla(e, s, t) for e in runs.values()])
        for s, t in tasks
    ]
    rows.insert(0, ("computed in", [computed_in(e) for e in runs.values()]))
    rows += [
        (f"Dr.LLM per token, {s}", [drllm(e, s) for e in runs.values()]) for s in ("eval_id", "eval_ood")
    ]
    for reference in ("vanilla", "best_static", "shortgpt_bi", "random_deepest", "routers_shuffled"):
        for set_name in ("eval_id", "eval_ood"):
            for agreement in (False, True) if reference != "vanilla" else (False,):
                cells = [paired(e, reference, set_name, agreement) for e in runs.values()]
                if any(cell != "–" for cell in cells):
                    what = "agreement with vanilla" if agreement else "accuracy"
                    rows.append((f"Dr.LLM − {reference}, {set_name}: {what}, points [paired 95% CI]", cells))
    rows.append(
        (
            "open answers generated exactly as vanilla's, %",
            [
                f"{100 * e['generation']['open']['identical_share']:.1f} (n {e['generation']['open']['n']})"
                for e in runs.values()
            ],
        )
    )
    lines = ["| | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    for name, evaluation in runs.items():
        lines += ["", f"## {name}", "", summary_markdown(evaluation).rstrip("\n")]
    return "\n".join(lines) + "\n"


def fmt(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value != value:  # NaN: not measured
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)


def columns_of(rows: list[dict]) -> list[str]:
    """Every row's keys in first-seen order: rows may differ (a set without a reference has no score)."""
    return list(dict.fromkeys(c for row in rows for c in row))


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "_none_\n"
    columns = columns_of(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def html_table(rows: list[dict], table_id: str) -> str:
    if not rows:
        return "<p><em>none</em></p>"
    columns = columns_of(rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(f'<td data-col="{html.escape(c)}">{html.escape(fmt(r.get(c, "")))}</td>' for c in columns)
        + "</tr>"
        for r in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render(sections: list[tuple[str, str, object]], title: str) -> tuple[str, str]:
    """sections: (heading, kind, payload) with kind 'text' (markdown-ish paragraph), 'table' (rows, id) or
    'figure' (name). Returns (markdown, html)."""
    md = [f"# {title}\n"]
    body = [f"<h1>{html.escape(title)}</h1>"]
    for heading, kind, payload in sections:
        md.append(f"\n## {heading}\n")
        body.append(f"<h2>{html.escape(heading)}</h2>")
        if kind == "text":
            md.append(f"{payload}\n")
            body.append(f"<p>{html.escape(str(payload))}</p>")
        elif kind == "links":
            md.extend(f"- [{label}]({url})\n" for label, url in payload)
            body.append(
                "<ul>"
                + "".join(
                    f'<li><a href="{html.escape(url)}">{html.escape(label)}</a></li>'
                    for label, url in payload
                )
                + "</ul>"
            )
        elif kind == "table":
            rows, table_id = payload
            md.append(markdown_table(rows))
            body.append(html_table(rows, table_id))
        elif kind == "figure":
            name = payload
            md.append(f"![{FIGURES[name]}](figures/{name}.png)\n")
            body.append(
                f'<figure><img id="figure-{name}" src="figures/{name}.png" alt="{html.escape(FIGURES[name])}">'
                f"<figcaption>{html.escape(FIGURES[name])}</figcaption></figure>"
            )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px}"
        "img{max-width:100%}figcaption{font-size:12px;color:#555}"
    )
    page = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f'<link rel=icon href="data:,"><style>{style}</style></head><body>{"".join(body)}</body></html>'
    )
    return "".join(md), page
