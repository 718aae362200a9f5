"""The pipeline report: figures (matplotlib) and the same tables as Markdown and as a self-contained HTML page.

Every number in a table comes from the stage outputs as written (metrics/eval.json, metrics/train/*.json,
data/paths/*/stats.json, metrics/speed.json), so the report can be checked against them.
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

from drllm_core.labels import CLASS_NAMES

FIGURES = {
    "pareto": "Accuracy vs blocks executed per token (in-domain test)",
    "routing": "Dr.LLM routing: share of skip / execute / repeat by layer and task family",
    "labels": "Label classes found by each search strategy",
    "confusion": "Router confusion matrix on held-out search examples (MCTS labels)",
}


def pareto_figure(eval_metrics: dict, path: Path) -> None:
    configs = {k.split("/")[0]: v for k, v in eval_metrics["configs"].items() if k.endswith("/eval_id")}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, row in configs.items():
        err = [[row["accuracy"] - row["ci_low"]], [row["ci_high"] - row["accuracy"]]]
        style = {"color": "C3", "marker": "*", "markersize": 12} if name == "drllm" else {"marker": "o"}
        ax.errorbar(row["blocks_per_token"], row["accuracy"], yerr=err, capsize=3, linestyle="none", **style)
        ax.annotate(
            name,
            (row["blocks_per_token"], row["accuracy"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=7,
        )
    ax.set_xlabel("blocks executed per token")
    ax.set_ylabel("accuracy (95% interval)")
    ax.set_title(FIGURES["pareto"], fontsize=10)
    ax.grid(alpha=0.3)
    _save(fig, path)


def routing_figure(results: pd.DataFrame, families: dict[str, str], num_layers: int, path: Path) -> None:
    routed = results[results["config"] == "drllm"].copy()
    routed["family"] = routed["task"].map(lambda t: families.get(t, t))
    groups = sorted(routed["family"].unique())
    fig, axes = plt.subplots(1, 3, figsize=(12, 0.5 * len(groups) + 2), sharey=True)
    for axis, (value, name) in zip(axes, CLASS_NAMES.items(), strict=True):
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
    for name in CLASS_NAMES.values():
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
    names = list(CLASS_NAMES.values())
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
def fmt(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "_none_\n"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def html_table(rows: list[dict], table_id: str) -> str:
    if not rows:
        return "<p><em>none</em></p>"
    columns = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(f'<td data-col="{html.escape(c)}">{html.escape(fmt(r[c]))}</td>' for c in columns)
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
