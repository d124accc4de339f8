"""The reference code's protocol: prompt strings per category, knowledge scoring, pool validation, task files."""

from __future__ import annotations

import json
import logging
import re
from types import SimpleNamespace

import pytest

from taskvec.cli import main
from taskvec.errors import OutputDirectoryError, TaskDataError
from taskvec.experiments import MainConfig, run_main
from taskvec.prompts import DEFAULT_TEMPLATE, SPACED_TEMPLATE
from taskvec.tasks import Pair, builtin_task, is_correct, load_task_file, prepare_task
from taskvec.tasks.definitions import Task
from taskvec.tasks.protocol import PROTOCOL_VERSION
from taskvec.tasks.scoring import prefix_match
from taskvec.tasks.validation import Pool, PoolSizes, check_pools, task_pools

# --- a word-level tokenizer: known words (with or without a leading space) are one token ------------

WORDS = {"want", " want", " wanting", " go", " going", " see", "Paris", "Hel", "Tok", "yo", " hello", "bonjour"}


class WordTokenizer:
    """Known words are one token, anything else one token per character (GPT-2-like spacing)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def _tokens(self, text: str) -> list[str]:
        out: list[str] = []
        for piece in re.findall(r" ?[A-Za-z]+|[^A-Za-z]", text):
            out.extend([piece] if piece in WORDS or len(piece) == 1 else list(piece))
        return out

    def __call__(self, texts, add_special_tokens: bool = False):
        return {"input_ids": [[self.ids.setdefault(t, len(self.ids)) for t in self._tokens(x)] for x in texts]}


WORD_LM = SimpleNamespace(tokenizer=WordTokenizer())
DEMOS = [("want", "wanting"), ("go", "going")]


def _task(category: str, scoring: str, pairs: list[tuple[str, str]]) -> Task:
    return Task("t", category, "", scoring, tuple(Pair(x, y) for x, y in pairs))


# --- exact prompt strings, one pair per category, in the reference's format -----------------------


def test_word_task_prompts_have_a_space_before_input_and_answer():
    task = _task("linguistic", "exact", [("want", "wanting"), ("go", "going"), ("see", "seeing")])
    prepared = prepare_task(WORD_LM, task)
    assert prepared.template == SPACED_TEMPLATE
    assert prepared.template.icl_prompt(DEMOS, "see") == "example: want-> wanting\nexample: go-> going\nexample: see->"
    assert prepared.template.query_prompt("see") == "example: see->"
    assert [p.input for p in prepared.pairs] == ["want", "go"]  # " seeing" is not one token


def test_translation_prompt_string():
    task = _task("translation", "alternatives", [("hello", "bonjour"), ("see", "yo")])
    prepared = prepare_task(WORD_LM, task)  # " bonjour"/" yo" are not one token, "bonjour"/"yo" are: no space
    assert prepared.template == DEFAULT_TEMPLATE
    assert prepared.template.icl_prompt([("hello", "bonjour")], "see") == "example:hello->bonjour\nexample:see->"


def test_the_space_variant_needs_70_percent_as_many_one_token_answers_as_without():
    words = [("want", "wanting"), ("go", "going"), ("x", "Paris"), ("y", "Hel"), ("z", "Tok")]
    assert prepare_task(WORD_LM, _task("linguistic", "exact", words[:2] + words[2:3])).template == SPACED_TEMPLATE
    assert prepare_task(WORD_LM, _task("linguistic", "exact", words)).template == DEFAULT_TEMPLATE  # 2 < 0.7 * 3


def test_algorithmic_prompt_string_has_no_spaces():
    prepared = prepare_task(WORD_LM, builtin_task("next_letter"))
    assert prepared.template == DEFAULT_TEMPLATE and prepared.n_usable == 25
    assert prepared.template.icl_prompt([("a", "b"), ("c", "d")], "e") == "example:a->b\nexample:c->d\nexample:e->"
    lists = prepare_task(WORD_LM, builtin_task("list_last")).template
    assert lists.icl_prompt([("a,b,c", "c")], "d,e") == "example:a,b,c->c\nexample:d,e->"


def test_knowledge_prompts_have_no_space_and_keep_every_pair():
    task = builtin_task("country_capital")
    prepared = prepare_task(WORD_LM, task)
    assert prepared.template == DEFAULT_TEMPLATE
    assert prepared.pairs == task.pairs  # multi-token answers too
    expected = "example:France->Paris\nexample:Finland->Helsinki\nexample:Japan->"
    assert prepared.template.icl_prompt([("France", "Paris"), ("Finland", "Helsinki")], "Japan") == expected


# --- knowledge scoring: prefix in either direction, both non-empty after stripping ------------------


@pytest.mark.parametrize(
    ("prediction", "gold", "correct"),
    [
        ("Hel", "Helsinki", True),  # the first sub-word of a multi-token gold
        ("Helsinki", "Helsinki", True),
        ("Parisian", "Paris", True),  # a prediction longer than the gold, starting with it
        (" Paris ", "Paris", True),  # stripped
        ("", "Paris", False),  # empty prediction: never a match (it is a prefix of everything)
        ("   ", "Paris", False),
        ("Paris", "", False),
        ("paris", "Paris", False),  # case-sensitive, as the reference
        ("Oslo", "Helsinki", False),
        ("Helsinkix", "Helsinki", True),
        ("He", "Hel", True),
    ],
)
def test_prefix_match(prediction, gold, correct):
    assert prefix_match(prediction, gold) is correct
    if gold:
        assert is_correct(prediction, Pair("x", gold), "prefix") is correct


def test_prefix_scoring_uses_alternatives_and_exact_does_not_use_prefixes():
    pair = Pair("USA", "Washington", ("DC",))
    assert is_correct("D", pair, "prefix") and is_correct("Wash", pair, "prefix")
    assert not is_correct("Wash", pair, "exact") and not is_correct("Washingtonian", pair, "alternatives")


# --- one validation rule for built-in tasks and task files -----------------------------------------

SIZES = PoolSizes(shots=5, n_dev=50, n_test=50, n_dummy=2)


def _file_task(tmp_path, n: int, name: str = "mine") -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps([{"input": f"w{i}", "output": f"v{i}"} for i in range(n)]))
    return str(path)


def test_a_26_pair_task_file_and_the_26_pair_builtin_task_are_treated_alike(tmp_path, caplog):
    from tiny_models import make_tiny_model

    rows = "".join(f"{p.input},{p.output}\n" for p in builtin_task("to_upper").pairs)
    (tmp_path / "caps.csv").write_text("input,output\n" + rows)
    assert not check_pools(task_pools([builtin_task("to_upper"), load_task_file(tmp_path / "caps.csv")]), SIZES)
    config = MainConfig(model="tiny", tasks=("to_upper",), task_files=(str(tmp_path / "caps.csv"),),
                        n_dev=20, n_test=20, n_baseline=5)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="taskvec.tasks.validation"):
        results = run_main(config, tmp_path / "out", lm=make_tiny_model("llama"))
    messages = [r.getMessage() for r in caplog.records]  # warned once each, after preparation
    assert len(messages) == 2 and messages[0].replace("to_upper", "caps") == messages[1]
    assert "26 usable pairs (of 26) for 40 dev+test queries" in messages[0] and "1.5 sets" in messages[0]
    assert {name: r["n_usable"] for name, r in results["tasks"].items()} == {"to_upper": 26, "caps": 26}


def test_pool_rule_refuses_below_one_set_and_warns_below_the_queries(caplog):
    assert check_pools([Pool("small", 8, 9)], SIZES) is None
    with pytest.raises(TaskDataError, match=r"task 'tiny' has 7 usable pairs \(of 9\) but one set needs 8"):
        check_pools([Pool("tiny", 7, 9), Pool("fine", 200, 200)], SIZES)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        check_pools([Pool("fine", 100, 100), Pool("raw", 26, 26, final=False)], SIZES)
    assert not caplog.records  # enough queries; raw pools (before the tokenizer) only refuse


def test_small_pools_are_refused_before_the_model_loads_and_nothing_is_written(tmp_path):
    small = _file_task(tmp_path, 7, "seven")
    config = MainConfig(model="/no/such/model", tasks=("to_upper",), task_files=(small,))
    with pytest.raises(TaskDataError, match=r"task 'seven' has 7 pairs \(of 7\) but one set needs 8"):
        run_main(config, tmp_path / "out")  # the model path does not exist: refused before loading it
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_small_task_file_before_loading_with_exit_2(tmp_path, capsys):
    small = _file_task(tmp_path, 5, "five")
    out = tmp_path / "out"
    assert main(["run", "--model", "/no/such/model", "--task-file", small, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "taskvec: error: task 'five' has 5 pairs (of 5) but one set needs 8" in err and "Traceback" not in err
    assert not out.exists()


def test_every_small_task_is_named_in_one_refusal(tmp_path):
    tasks = [load_task_file(_file_task(tmp_path, n, f"t{n}")) for n in (3, 4, 30)]
    with pytest.raises(TaskDataError, match=r"'t3' has 3 .*; task 't4' has 4 .*nothing was computed"):
        check_pools(task_pools(tasks), SIZES)


# --- task files set category and scoring in every format ------------------------------------------


def test_every_task_file_format_can_set_category_and_scoring(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"category": "knowledge", "pairs": [{"input": "a", "output": "b"}]}))
    (tmp_path / "b.jsonl").write_text('{"category": "knowledge", "scoring": "prefix"}\n{"input": "a", "output": "b"}\n')
    (tmp_path / "c.csv").write_text("# category: knowledge\n# scoring: prefix\ninput,output\na,b\n")
    for name in ("a.json", "b.jsonl", "c.csv"):
        task = load_task_file(tmp_path / name)
        assert (task.category, task.scoring, len(task.pairs)) == ("knowledge", "prefix", 1), name
    (tmp_path / "d.csv").write_text("# category: translation\ninput,output,alternatives\ncar,voiture,auto\n")
    assert load_task_file(tmp_path / "d.csv").scoring == "alternatives"
    (tmp_path / "e.jsonl").write_text('{"category": "linguistic", "scoring": "exact"}\n{"input": "a", "output": "b"}\n')
    assert load_task_file(tmp_path / "e.jsonl").scoring == "exact"
    assert load_task_file(tmp_path / "e.jsonl").category == "linguistic"


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("# scoring: fuzzy\ninput,output\na,b\n", ".csv", "scoring 'fuzzy' is not one of"),
        ("# colour: red\ninput,output\na,b\n", ".csv", "unknown task key"),
        ("# just a comment\ninput,output\na,b\n", ".csv", "is not '# key: value'"),
        ('{"category": "science"}\n{"input": "a", "output": "b"}\n', ".jsonl", "category 'science' is not one of"),
    ],
)
def test_bad_task_file_headers(tmp_path, content, suffix, message):
    path = tmp_path / f"task{suffix}"
    path.write_text(content)
    with pytest.raises(TaskDataError, match=message):
        load_task_file(path)


# --- the protocol is recorded: a run of the old protocol is not resumed with the new one -----------


def test_the_run_config_records_the_protocol_and_an_old_run_is_not_resumed(tmp_path):
    from tiny_models import make_tiny_model

    tiny = make_tiny_model("llama")
    config = MainConfig(model="tiny", tasks=("to_upper",), n_dev=4, n_test=3, n_baseline=5)
    assert config.to_dict()["protocol"]["version"] == PROTOCOL_VERSION
    old = {k: v for k, v in config.to_dict().items() if k != "protocol"}
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "run-config.json").write_text(json.dumps(old))
    with pytest.raises(OutputDirectoryError, match="protocol: None there"):
        run_main(config, tmp_path / "out", lm=tiny)
