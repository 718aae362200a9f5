"""How a task is prompted and scored: per-task settings from params.yaml (`tasks:`), and prompt rendering.

A prompt is a context string plus, for multiple choice, one continuation per choice. Formats:
  question_answer   the task's plain template (e.g. "Question: ...\\nAnswer:"), each choice as continuation
  letter_choices    the question followed by lettered options ("A. ..."), answers are the letters
Few-shot examples are rendered the same way with their gold answer, separated by a blank line. With
`chat_template` the prompt becomes a user turn (shots as earlier turns) and the answer the assistant's reply.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from drllm_core.errors import ConfigError, config_from
from drllm_core.tasks.registry import TaskSpec
from drllm_core.tasks.schema import Example, letter

FORMATS = ("question_answer", "letter_choices")
SCORERS = ("loglikelihood", "letter", "math")
CHOICE_SCORERS = ("loglikelihood", "letter")  # need answer choices; math scores generated text


@dataclass(frozen=True)
class TaskSettings:
    """Per-task prompt and scoring choices; defaults are the ones measured best for the embedded model."""

    format: str = "question_answer"
    shots: int = 0  # few-shot examples, drawn from the task's shots pool (prepare writes it)
    chat_template: bool = False  # wrap the prompt in the tokenizer's chat template (instruct models)
    scorer: str = "loglikelihood"  # loglikelihood | letter (greedy letter, strict match) | math (generated)
    metric: str = "acc"  # loglikelihood only: acc (summed log-likelihood) | acc_norm (per character)
    max_new_tokens: int = 4  # generation scorers: tokens to generate
    instruction: str = ""  # text placed before the question (e.g. how to state a math answer)
    template: str | None = None  # overrides the task's plain template

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ConfigError(f"unknown prompt format {self.format!r}; use one of {FORMATS}")
        if self.scorer not in SCORERS:
            raise ConfigError(f"unknown scorer {self.scorer!r}; use one of {SCORERS}")
        if self.metric not in ("acc", "acc_norm"):
            raise ConfigError(f"unknown metric {self.metric!r}; use acc or acc_norm")
        if self.shots < 0 or self.max_new_tokens < 1:
            raise ConfigError(
                f"a task's shots must be at least 0 and max_new_tokens at least 1, got {self.shots}, {self.max_new_tokens}"
            )


def default_settings(params: dict | None) -> TaskSettings:
    """`tasks.defaults` alone: how a task without its own section is prompted (and raw prompts are served)."""
    return settings_for("", {"defaults": (params or {}).get("defaults", {})})


def settings_for(task: str, params: dict | None) -> TaskSettings:
    """`tasks.defaults` overlaid with `tasks.<task>` from params.yaml, every value checked."""
    params = params or {}
    for name in ("defaults", task):
        if not isinstance(params.get(name) or {}, dict):
            raise ConfigError(
                f"params.yaml `tasks.{name}` must be a mapping of settings, got {params[name]!r}"
            )
    merged = {**(params.get("defaults") or {}), **(params.get(task) or {})}
    return config_from(TaskSettings, f"tasks.{task or 'defaults'}", merged)


def checked_tasks(params: dict, manifest: dict) -> dict:
    """params.yaml's `tasks` section, checked against the tasks the prepared sets hold (data/prepared's
    manifest.json): a section for a task no set holds is a typo."""
    tasks = params.get("tasks") or {}
    if not isinstance(tasks, dict):
        raise ConfigError(f"params.yaml `tasks` must be a mapping of task names to settings, got {tasks!r}")
    check_task_names(tasks, {t for described in manifest["sets"].values() for t in described["tasks"]})
    return tasks


def check_task_names(params: dict | None, tasks: Iterable[str]) -> None:
    """Refuse a section of params.yaml `tasks` that names no task of `tasks` (a typo such as `arc_eazy`
    would otherwise leave the task with the defaults, silently)."""
    unknown = sorted(set(params or {}) - {"defaults", *tasks})
    if unknown:
        raise ConfigError(
            f"params.yaml `tasks` has settings for {unknown}, which no set of the pipeline holds; its tasks: "
            f"{sorted(set(tasks))}. Check the spelling, or remove the section"
        )


@dataclass(frozen=True)
class Prompt:
    context: str
    continuations: tuple[str, ...] = ()  # one per choice (multiple choice scored by likelihood)
    stops: tuple[str, ...] = ()  # generation: text after which an answer is cut


def _body(example: Example, task: TaskSpec, settings: TaskSettings) -> str:
    template = settings.template or task.template
    question = f"{settings.instruction}{example.question}" if settings.instruction else example.question
    if settings.format == "letter_choices":
        options = "\n".join(f"{letter(i)}. {choice}" for i, choice in enumerate(example.choices))
        question = f"{question}\n{options}"
    text = template.format(question=question, passage=example.passage)
    return text.lstrip("\n")


def _answers(example: Example, settings: TaskSettings) -> list[str]:
    if not example.choices:
        return [example.answer]
    if settings.format == "letter_choices":
        return [letter(i) for i in range(len(example.choices))]
    return list(example.choices)


def _gold(example: Example, settings: TaskSettings) -> str:
    answers = _answers(example, settings)
    return answers[example.answer_index] if example.choices else example.answer


def chat_template_head(tokenizer) -> list[int]:
    """Token ids every chat prompt starts with (the template's opening and system turn): the common token
    prefix of two one-turn chats that differ only in their question."""
    first, second = (
        tokenizer(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
            ),
            add_special_tokens=False,
        ).input_ids
        for content in ("A", "B")
    )
    length = 0
    while length < min(len(first), len(second)) and first[length] == second[length]:
        length += 1
    return first[:length]


def render(example: Example, task: TaskSpec, settings: TaskSettings, tokenizer=None, shots=()) -> Prompt:
    """The prompt for one example; `tokenizer` is needed only for chat templates."""
    answers = _answers(example, settings)
    body = _body(example, task, settings)
    if settings.chat_template:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"task {task.name!r} asks for a chat template but the tokenizer has none: set tasks.{task.name}.chat_template: false"
            )
        messages = []
        for shot in shots:
            messages += [
                {"role": "user", "content": _body(shot, task, settings)},
                {"role": "assistant", "content": _gold(shot, settings)},
            ]
        messages.append({"role": "user", "content": body})
        context = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        continuations = tuple(answers) if example.choices else ()
        return Prompt(context, continuations, stops=())
    demos = "".join(f"{_body(shot, task, settings)} {_gold(shot, settings)}\n\n" for shot in shots)
    continuations = tuple(f" {answer}" for answer in answers) if example.choices else ()
    return Prompt(demos + body, continuations, stops=("\n\nQuestion:", "\nQuestion:"))
