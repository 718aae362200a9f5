"""`drllm`: routed inference from the command line, outside MLflow.

  drllm generate --routers models/routers/mcts "What causes the seasons?" ...
  drllm score --routers models/routers/mcts --examples data/prepared/eval_id.parquet --limit 100

Both print one JSON object per input with the path each input took (per-layer counts: 0 skip, 1 execute,
2 repeat) and the blocks executed per token; `score` ends with a summary line. Run from the repository root,
they route at the operating point the calibrate stage chose for these routers (metrics/knob.json: the knob
and the skip-run limit) unless `--knob` is given, and prompt as params.yaml's `tasks` section says: `score`
each task as `evaluate` does, `generate` in the default prompt format (`tasks.defaults.chat_template`: the
format the default routers were trained on) unless `--chat-template` or `--no-chat-template` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from drllm_core import io
from drllm_core.errors import DrllmError
from drllm_core.evaluation import OperatingPoint, operating_point
from drllm_core.inference import RoutedModel
from drllm_core.models import DEFAULT_SPEC, ModelSpec, load_model
from drllm_core.paths import PathConstraints
from drllm_core.routers import check_knob
from drllm_core.tasks.evaluator import examples_from_frame
from drllm_core.tasks.prompts import default_settings

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
    parser.add_argument(
        "--params",
        default="params.yaml",
        help="its `tasks` section (how prompts are formatted and scored) and `search.max_skip_run`, if found",
    )


def default_point(routers: str, params: dict) -> OperatingPoint:
    """The operating point the calibrate stage chose for these routers (same content hash), else knob 0 under
    the params' skip-run limit (saying why on stderr)."""
    try:
        return operating_point(CALIBRATED, routers)
    except DrllmError as err:  # not calibrated, calibrated for other routers, or by an older version
        print(f"not using the calibrated knob: {err}", file=sys.stderr)
        return OperatingPoint(0.0, PathConstraints.from_params(params.get("search") or {}).max_skip_run, [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="drllm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="answer prompts with routed greedy generation")
    _common(generate)
    generate.add_argument("prompts", nargs="+")
    generate.add_argument("--max-new-tokens", type=int, default=64)
    generate.add_argument(
        "--chat-template",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="wrap prompts in the model's chat template (default: tasks.defaults.chat_template)",
    )
    score = commands.add_parser("score", help="score prepared examples (parquet in the prepare schema)")
    _common(score)
    score.add_argument("--examples", required=True)
    score.add_argument("--limit", type=int, default=None)
    score.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    try:
        loaded = load_model(ModelSpec(spec=args.model, dtype=args.dtype, device=args.device))
        params = io.read_yaml(args.params) if Path(args.params).is_file() else {}
        tasks = params.get("tasks")
        point = default_point(args.routers, params)
        knob = point.knob if args.knob is None else check_knob(args.knob, "--knob")
        print(f"routing at knob {knob:+g}, skip runs up to {point.max_skip_run}", file=sys.stderr)
        routed = RoutedModel.from_folder(
            loaded, args.routers, force=args.force, knob=knob, max_skip_run=point.max_skip_run
        )
        if args.command == "generate":
            chat = default_settings(tasks).chat_template if args.chat_template is None else args.chat_template
            for prompt, answer in zip(
                args.prompts, routed.generate(args.prompts, args.max_new_tokens, chat), strict=True
            ):
                print(
                    json.dumps(
                        {"prompt": prompt, "text": answer.text, "path": answer.path, "blocks": answer.blocks}
                    )
                )
        else:
            examples = examples_from_frame(pd.read_parquet(args.examples))[: args.limit]
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
