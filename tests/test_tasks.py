"""Built-in task data, task files, scoring, sampling and per-tokenizer preparation."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from tiny_models import make_tiny_model

from taskvec.errors import TaskDataError
from taskvec.tasks import ALL_TASKS, PAPER_TASKS, Pair, builtin_task, is_correct, load_task_file, prepare_task
from taskvec.tasks.registry import load_tasks, resolve_task_names
from taskvec.tasks.sampling import draw_splits

WORD_CATEGORIES = {"translation", "linguistic", "knowledge"}


def test_the_paper_has_18_tasks_in_four_categories():
    assert len(PAPER_TASKS) == 18
    assert Counter(builtin_task(n).category for n in PAPER_TASKS) == {
        "algorithmic": 6, "translation": 4, "linguistic": 4, "knowledge": 4,
    }  # fmt: skip


@pytest.mark.parametrize("name", ALL_TASKS)
def test_builtin_task_is_well_formed(name):
    task = builtin_task(name)
    inputs = [p.input for p in task.pairs]
    assert len(inputs) == len(set(inputs)), "inputs must be unique"
    assert all(p.input and p.output and p.input != p.output for p in task.pairs)
    if task.category in WORD_CATEGORIES:
        assert task.provenance, "every data file carries a provenance note"
        assert len(task.pairs) >= (400 if task.category == "translation" else 150)


@pytest.mark.parametrize("name", [n for n in ALL_TASKS if builtin_task(n).category == "knowledge"])
def test_knowledge_tasks_are_not_dominated_by_one_answer(name):
    answers = Counter(p.output for p in builtin_task(name).pairs)
    top, count = answers.most_common(1)[0]
    assert count / sum(answers.values()) <= 0.4, f"{top!r} is {count} of {sum(answers.values())} answers"


def test_algorithmic_tasks_compute_the_right_answers():
    assert builtin_task("next_letter").pairs[0] == Pair("a", "b")
    assert builtin_task("prev_letter").pairs[0] == Pair("b", "a")
    for p in builtin_task("list_max").pairs[:20]:
        assert p.output == max(p.input.split(","))
    for p in builtin_task("list_length").pairs[:20]:
        assert p.output == str(len(p.input.split(",")))
    assert builtin_task("char_to_int").pairs[2] == Pair("c", "3")


def test_resolve_task_names_expands_groups_and_commas():
    assert resolve_task_names(["paper"]) == list(PAPER_TASKS)
    assert resolve_task_names(["to_upper,list_min", "to_upper"]) == ["to_upper", "list_min"]
    assert len(resolve_task_names(["all"])) == len(ALL_TASKS)


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(TaskDataError, match=r"unknown task 'nope'; known tasks: next_letter, prev_letter"):
        resolve_task_names(["nope"])


def test_scoring_rules():
    helsinki = Pair("Finland", "Helsinki")
    assert is_correct("Hel", helsinki, "prefix") and is_correct("Helsinki", helsinki, "prefix")
    assert not is_correct("", helsinki, "prefix") and not is_correct("Oslo", helsinki, "prefix")
    assert not is_correct("Hel", helsinki, "exact")
    car = Pair("car", "voiture", ("auto",))
    assert is_correct("auto", car, "alternatives") and not is_correct("auto", car, "exact")


# --- task files -----------------------------------------------------------------------------------


def test_task_file_formats(tmp_path):
    pairs = [{"input": "one", "output": "1"}, {"input": "two", "output": "2", "alternatives": ["II"]}]
    (tmp_path / "a.json").write_text(json.dumps(pairs))
    (tmp_path / "b.json").write_text(json.dumps({"name": "numbers", "scoring": "alternatives", "pairs": pairs}))
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(p) for p in pairs) + "\n")
    (tmp_path / "d.csv").write_text("input,output,alternatives\none,1,\ntwo,2,II|ii\n")
    for name in ("a.json", "b.json", "c.jsonl", "d.csv"):
        task = load_task_file(tmp_path / name)
        assert [p.input for p in task.pairs] == ["one", "two"]
        assert "II" in task.pairs[1].alternatives
    assert load_task_file(tmp_path / "b.json").name == "numbers"
    assert load_task_file(tmp_path / "c.jsonl").name == "c"


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ('[{"input": "a"}]', ".json", r"pair 1 .* is missing field\(s\) output"),
        ('[{"input": "a", "output": "b"}, {"input": "a", "output": "c"}]', ".json", "pair 2 repeats input 'a'"),
        ("input,answer\na,b\n", ".csv", "CSV header must have 'input' and 'output'"),
        ("{not json", ".json", "is not valid JSON"),
        ("[]", ".json", "expected a non-empty list of pairs"),
        ('{"input": "a", "output": "b"}\nnot json\n', ".jsonl", "is not valid JSONL"),
        ("a,b", ".txt", "expected .json, .jsonl or .csv"),
    ],
)
def test_bad_task_files(tmp_path, content, suffix, message):
    path = tmp_path / f"task{suffix}"
    path.write_text(content)
    with pytest.raises(TaskDataError, match=message):
        load_task_file(path)


def test_missing_task_file_and_name_clash(tmp_path):
    with pytest.raises(TaskDataError, match="does not exist"):
        load_task_file(tmp_path / "nope.json")
    (tmp_path / "to_upper.json").write_text('[{"input": "a", "output": "b"}]')
    with pytest.raises(TaskDataError, match="two tasks are named 'to_upper'"):
        load_tasks(["to_upper"], [tmp_path / "to_upper.json"])


# --- sampling -------------------------------------------------------------------------------------


def test_draw_splits_is_reproducible_and_keeps_sets_clean():
    pairs = builtin_task("antonyms").pairs
    first = draw_splits(pairs, 5, 50, 50, 100, 2, random.Random("41:antonyms"))
    again = draw_splits(pairs, 5, 50, 50, 100, 2, random.Random("41:antonyms"))
    assert first == again
    dev, test, baseline = first
    assert len(dev) == len(test) == 50 and len(baseline) == 100
    assert not {s.query.input for s in dev} & {s.query.input for s in test}, "dev and test queries are distinct"
    for s in dev + test:
        used = [p.input for p in s.demonstrations] + [s.query.input] + list(s.dummies)
        assert len(used) == len(set(used)) == 8


def test_small_pools_repeat_queries_but_never_inside_a_set():
    pairs = builtin_task("char_to_int").pairs  # 9 pairs: 5 demonstrations + query + 2 dummies fit
    dev, test, _ = draw_splits(pairs, 5, 20, 20, 10, 2, random.Random(0))
    for s in dev + test:
        used = [p.input for p in s.demonstrations] + [s.query.input] + list(s.dummies)
        assert len(set(used)) == 8


# --- per-tokenizer preparation --------------------------------------------------------------------


def test_preparation_filters_multi_token_answers_and_picks_the_answer_prefix():
    lm = make_tiny_model("llama")  # one token per character: " A" is two tokens, "A" one
    prepared = prepare_task(lm, builtin_task("to_upper"))
    assert prepared.template.answer_prefix == "" and prepared.n_usable == 26
    prepared = prepare_task(lm, builtin_task("list_length"))  # answers are digits: all one token
    assert prepared.n_usable == len(prepared.task.pairs)
    assert prepare_task(lm, builtin_task("antonyms")).n_usable == 0  # no one-character antonyms
