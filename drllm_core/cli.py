"""`drllm`: routed inference from the command line, outside MLflow.

  drllm generate "What causes the seasons?" ...
  drllm score --examples data/prepared/eval_id.parquet --limit 100

Both print one JSON object per input with the path each input took (per-layer counts: 0 skip, 1 execute,
2 repeat) and the blocks executed per token; `score` ends with a summary line. They use a router folder
(default models/drllm, the calibrated routers the pipeline evaluated) and route and prompt as it says: its
knob, its path limits, its prompt format, on its base model, unless an option says otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys

from drllm_core.errors import DrllmError
from drllm_core.inference import RoutedModel
from drllm_core.models import ModelSpec, load_model
from drllm_core.routers import RouterSet
from drllm_core.routing import check_knob
from drllm_core.tasks.schema import read_examples


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--routers", default="models/drllm", help="router folder (default: models/drllm)")
    parser.add_argument(
        "--model", default=None, help="base model spec (default: the routers' own base model)"
    )
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--knob", default=None, help="p in [-1, 1], < 0 saves more compute (default: the routers' knob)"
    )
    parser.add_argument("--force", action="store_true", help="use routers trained on another model")


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
        help="wrap prompts in the model's chat template (default: as the routers were trained)",
    )
    generate.add_argument("--batch-size", type=int, default=None, help="prompts per batch (default: all)")
    generate.add_argument(
        "--group-by-path",
        action="store_true",
        help="with --batch-size: route all prompts first, then batch them in the order of their paths (same "
        "answers; faster batched decoding when many prompts share few paths)",
    )
    score = commands.add_parser("score", help="score prepared examples (parquet in the prepare schema)")
    _common(score)
    score.add_argument("--examples", required=True)
    score.add_argument("--limit", type=int, default=None)
    score.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    try:
        _run(args)
    except DrllmError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def _run(args) -> None:
    knob = None if args.knob is None else check_knob(args.knob, "--knob")
    for name in ("limit", "batch_size", "max_new_tokens"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise DrllmError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    config = RouterSet.read_config(args.routers)
    if args.command == "score":  # read before the model loads: a bad file is refused at once
        examples = read_examples(args.examples)[: args.limit]
        if not examples:
            raise DrllmError(f"{args.examples} holds no examples")
    spec = args.model or config.base_model
    loaded = load_model(ModelSpec(spec=spec, dtype=args.dtype, device=args.device))
    routed = RoutedModel.from_folder(loaded, args.routers, force=args.force, knob=knob)
    print(f"routing at knob {routed.knob:+g} under {routed.routing.constraints}", file=sys.stderr)
    if args.command == "generate":
        answers = routed.generate(
            args.prompts, args.max_new_tokens, args.chat_template, args.batch_size, args.group_by_path
        )
        for prompt, answer in zip(args.prompts, answers, strict=True):
            print(
                json.dumps(
                    {"prompt": prompt, "text": answer.text, "path": answer.path, "blocks": answer.blocks}
                )
            )
        return
    scorer = routed.scorer()
    scorer.check_lengths(examples)
    decisions = routed.score(scorer, examples, args.batch_size)
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
    summary = {
        "examples": len(decisions),
        "accuracy": sum(d.correct for d in decisions) / len(decisions),
        "blocks_per_token": sum(sum(d.path) for d in decisions) / len(decisions),
        "num_layers": loaded.num_layers,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    sys.exit(main())
