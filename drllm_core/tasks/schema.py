"""The unified example record every task converts its rows into, and the prepared-set schema.

A prepared set (data/prepared/<set>.parquet) has one row per example with these columns:

| column        | type        | meaning                                                            |
|---------------|-------------|--------------------------------------------------------------------|
| example_id    | str         | `<task>/<native id>`, unique across all sets                       |
| task          | str         | registry name (drllm_core.tasks.registry.TASKS) or a local task    |
| question      | str         | the question text, without prompt formatting                       |
| passage       | str         | supporting text shown before the question (BoolQ), else ""         |
| choices       | list[str]   | answer options (multiple choice); empty for generation tasks       |
| answer_index  | int         | index of the gold choice; -1 for generation tasks                  |
| answer        | str         | gold answer text (the gold choice, or the reference final answer)  |
| source        | str         | where the row came from: embedded | hub | local                    |
| split         | str         | the source split                                                   |
| question_hash | str         | hash of the normalised passage + question, for leakage checks      |
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from drllm_core.errors import DrllmError

COLUMNS = [
    "example_id",
    "task",
    "question",
    "passage",
    "choices",
    "answer_index",
    "answer",
    "source",
    "split",
    "question_hash",
]


class MalformedRow(DrllmError, ValueError):
    """A source row that cannot become an example; the message says which field is wrong."""


@dataclass
class Example:
    example_id: str
    task: str
    question: str
    choices: list[str] = field(default_factory=list)
    answer_index: int = -1
    answer: str = ""
    passage: str = ""
    source: str = ""
    split: str = ""

    def check(self) -> Example:
        """Raise MalformedRow unless the record is usable."""
        if not self.question.strip():
            raise MalformedRow("empty question")
        if self.choices:
            if len(self.choices) < 2:
                raise MalformedRow(f"needs at least 2 choices, got {len(self.choices)}")
            if any(not str(c).strip() for c in self.choices):
                raise MalformedRow("an answer choice is empty")
            if not 0 <= self.answer_index < len(self.choices):
                raise MalformedRow(f"gold index {self.answer_index} outside the {len(self.choices)} choices")
            self.answer = self.choices[self.answer_index]
        elif not str(self.answer).strip():
            raise MalformedRow("generation example without a reference answer")
        return self

    def record(self) -> dict:
        return {**asdict(self), "question_hash": question_hash(self.passage, self.question)}


def normalise_text(text: str) -> str:
    """Case-, accent-, punctuation- and whitespace-insensitive form used to detect the same question twice."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())


def question_hash(passage: str, question: str) -> str:
    return hashlib.sha256(normalise_text(f"{passage} {question}").encode()).hexdigest()[:16]


def letter(index: int) -> str:
    return chr(ord("A") + index)


EXAMPLE_FIELDS = (
    "example_id",
    "task",
    "question",
    "choices",
    "answer_index",
    "answer",
    "passage",
    "source",
    "split",
)


def read_examples(path: str | Path) -> list[Example]:
    """The examples of a parquet file in the prepared-set schema, or a DrllmError saying what is wrong."""
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as err:
        raise DrllmError(f"cannot read examples from {path} ({type(err).__name__}: {err})") from None
    return examples_from_frame(frame, str(path))


def examples_from_frame(frame: pd.DataFrame, where: str = "the prepared set") -> list[Example]:
    """The examples of a prepared set (data/prepared/<set>.parquet); a frame without the schema's columns is
    a DrllmError naming them."""
    fields = EXAMPLE_FIELDS
    missing = [name for name in fields if name not in frame]
    if missing:
        raise DrllmError(
            f"{where} lacks the columns {missing} of the prepared-set schema ({', '.join(fields)}): write it "
            "with the prepare stage"
        )
    return [
        Example(
            **{
                **{k: row[k] for k in fields},
                "choices": list(row["choices"]),
                "answer_index": int(row["answer_index"]),
            }
        )
        for row in frame.to_dict("records")
    ]
