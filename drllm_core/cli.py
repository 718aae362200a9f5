"""`drllm`: routed inference from the command line, outside MLflow.

  drllm generate --routers models/routers/mcts "What causes the seasons?" ...
  drllm score --routers models/routers/mcts --examples data/prepared/eval_id.parquet --limit 100

Both print one JSON object per input with the path each input took (per-layer counts: 0 skip, 1 execute,
2 repeat) and the blocks executed per token; `score` ends with a summary line. Run from the repository root,
they route at the knob the calibrate stage chose for these routers (metrics/knob.json) unless `--knob` is
given, and `score` prompts and scores each task as params.yaml's `tasks` section says (as `evaluate` does).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from drllm_core import io
from drllm_core.errors import DrllmError
from drllm_core.evaluation import calibrated_knob
from drllm_core.inference import RoutedModel
from drllm_core.models import DEFAULT_SPEC, ModelSpec, load_model
from drllm_core.tasks.evaluator import examples_from_frame

CALIBRATED = "metrics/knob.json"  # written by the calibrate stage, relative to the repository root


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--routers", required=True, help="router folder written by the train stage")
    parser.add_argument(
        "--model", default=DEFAULT_SPEC, help="base model spec (must be the routers' base model)"
    )
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--knob",
        type=float,
        default=None,
        help=f"p in [-1, 1]: < 0 saves more compute (default: the knob {CALIBRATED} holds for these routers, "
        "the one the pipeline evaluated, else 0)",
    )
    parser.add_argument("--force", action="store_true", help="use routers trained on another model")


def default_knob(routers: str) -> float:
    """The knob the calibrate stage chose when it calibrated these routers (same content hash), else 0."""
    try:
        return calibrated_knob(CALIBRATED, routers)[0]
    except DrllmError:  # not calibrated, or calibrated for other routers
        return 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="drllm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="answer prompts with routed greedy generation")
    _common(generate)
    generate.add_argument("prompts", nargs="+")
    generate.add_argument("--max-new-tokens", type=int, default=64)
    generate.add_argument("--no-chat-template", action="store_true")
    score = commands.add_parser("score", help="score prepared examples (parquet in the prepare schema)")
    _common(score)
    score.add_argument("--examples", required=True)
    score.add_argument(
        "--params",
        default="params.yaml",
        help="how tasks are prompted and scored: its `tasks` section, if found",
    )
    score.add_argument("--limit", type=int, default=None)
    score.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    try:
        loaded = load_model(ModelSpec(spec=args.model, dtype=args.dtype, device=args.device))
        knob = default_knob(args.routers) if args.knob is None else args.knob
        print(f"routing at knob {knob:+g}", file=sys.stderr)
        routed = RoutedModel.from_folder(loaded, args.routers, force=args.force, knob=knob)
        if args.command == "generate":
            for prompt, answer in zip(
                args.prompts,
                routed.generate(args.prompts, args.max_new_tokens, not args.no_chat_template),
                strict=True,
            ):
                print(
                    json.dumps(
                        {"prompt": prompt, "text": answer.text, "path": answer.path, "blocks": answer.blocks}
                    )
                )
        else:
            examples = examples_from_frame(pd.read_parquet(args.examples))[: args.limit]
            tasks = io.read_yaml(args.params).get("tasks") if Path(args.params).is_file() else None
            decisions = routed.score(routed.scorer(tasks), examples, args.batch_size)
            for example, decision in zip(examples, decisions, strict=True):
                print(
                    json.dumps(
                        {
                            "example_id": example.example_id,
                            "prediction": decision.prediction,
                            "correct": decision.correct,
                            "path": decision.path,
                            "blocks": sum(decision.path),
                        }
                    )
                )
            accuracy = sum(d.correct for d in decisions) / len(decisions)
            blocks = sum(sum(d.path) for d in decisions) / len(decisions)
            print(
                json.dumps(
                    {
                        "examples": len(decisions),
                        "accuracy": accuracy,
                        "blocks_per_token": blocks,
                        "num_layers": loaded.num_layers,
                    }
                )
            )
    except DrllmError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
