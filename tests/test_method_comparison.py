"""Function vectors as a method beside the task vector (``taskvec run --methods tv,fv``), on tiny models:
the method written against executor reads equals the attribution's own vector, both executors agree on its
edits, and a compared run writes every method and control, resumes, and refuses bad settings."""

from __future__ import annotations

import json
import random

import pytest
import torch
from tiny_models import make_tiny_model

from taskvec.cli import main
from taskvec.core.methods import FunctionVectorMethod, parse_methods
from taskvec.errors import TaskvecError
from taskvec.experiments import MainConfig, run_main
from taskvec.experiments.method_comparison import method_entry, random_same_norm, shuffled
from taskvec.heads import head_attribution, sample_icl_examples, shuffled_examples
from taskvec.heads.examples import IclExample
from taskvec.heads.function_vector import function_vector
from taskvec.prompts import DEFAULT_TEMPLATE
from taskvec.report.methods import method_tables
from taskvec.runtime import make_executor

PAIRS = [(c, c.upper()) for c in "abcdefghijklmnop"]
TASKS = ("to_upper", "next_letter")


@pytest.fixture(scope="module")
def gemma():
    return make_tiny_model("gemma3")


def compared_config(**changes) -> MainConfig:
    values = {"model": "tiny", "tasks": TASKS, "n_dev": 4, "n_test": 3, "n_baseline": 3, "seed": 3,
              "methods": ("task_vector", "function_vector"),
              "fv": {"n_corrupted": 3, "ks": [1, 2], "scales": [1.0, 4.0]}}  # fmt: skip
    values.update(changes)
    return MainConfig(**values)


@pytest.mark.parametrize("family", ["gemma3", "gpt2", "llama"])
def test_method_vector_equals_attribution_vector_on_both_executors(family):
    """FunctionVectorMethod reads head outputs through an executor; over the clean prompts it must equal the
    vector built from the attribution's mean head outputs (post-attention norm folded in the same way)."""
    lm = make_tiny_model(family)
    clean = sample_icl_examples(PAIRS, 4, 3, seed=0)
    corrupted = shuffled_examples(sample_icl_examples(PAIRS, 2, 3, seed=1))
    att = head_attribution(make_executor(lm, "fast", 4), clean, corrupted, DEFAULT_TEMPLATE)
    fv = function_vector(lm, att, 3, DEFAULT_TEMPLATE)
    method = FunctionVectorMethod(fv.heads, att.mean_outputs.attention_rms, scale=2.0)
    prompts = [[e.prompt(DEFAULT_TEMPLATE) for e in clean]]
    for kind in ("plain", "fast"):
        got = method.from_prompts(make_executor(lm, kind, 4), prompts)[0]
        torch.testing.assert_close(got, fv.vector, rtol=1e-4, atol=1e-5)
    (edit,) = method.edits(1, fv.vector)
    assert edit.site.layer == 1 and torch.equal(edit.value, 2.0 * fv.vector)
    queries = [DEFAULT_TEMPLATE.query_prompt(q) for q in "dkx"]
    edits = [method.edits(layer, fv.vector) for layer in (0, 1, lm.num_layers - 1)]
    plain = make_executor(lm, "plain", 4).predict(queries, edits, short=True).ids
    fast = make_executor(lm, "fast", 4).predict(queries, edits, short=True).ids
    assert torch.equal(plain, fast)


def test_parse_methods_aliases_order_and_errors():
    assert parse_methods("tv") == ("task_vector",)
    assert parse_methods("fv") == ("task_vector", "function_vector")  # the task vector is always compared
    assert parse_methods("function_vector, tv") == ("task_vector", "function_vector")
    with pytest.raises(TaskvecError, match="'nope'"):
        parse_methods("tv,nope")
    with pytest.raises(TaskvecError, match="names no method"):
        parse_methods(" , ")


def test_controls_helpers():
    vectors = torch.randn(5, 8) * torch.arange(1, 6)[:, None]
    noise = random_same_norm(vectors, seed=4)
    torch.testing.assert_close(noise.norm(dim=-1), vectors.norm(dim=-1))
    assert torch.equal(noise, random_same_norm(vectors, seed=4)) and not torch.equal(noise, vectors)
    entry = method_entry([True, False, True, False], [True, True, False, False], icl_accuracy=0.5)
    assert entry["accuracy"] == 0.5 and entry["icl_correct"]["accuracy"] == 0.5 and entry["icl_correct"]["n"] == 2
    assert entry["recovered"] == 1.0

    same = IclExample((("a", "X"), ("b", "X")), "c", "X")
    moved = IclExample((("a", "A"), ("b", "B"), ("c", "C")), "d", "D")
    out = shuffled([same, moved], random.Random(0))
    assert out[0] == same  # nothing to shuffle: kept
    assert [y for _, y in out[1].demonstrations] != ["A", "B", "C"] and out[1].answer == "D"


def test_compared_run_writes_methods_controls_and_resumes(gemma, tmp_path):
    results = run_main(compared_config(), tmp_path, lm=gemma)
    expected_controls = {"shuffled_icl", "shuffled_icl+task_vector", "task_vector_random", "function_vector_random",
                         "shuffled_icl+function_vector", "task_vector_task_agnostic",
                         "function_vector_task_agnostic"}  # fmt: skip
    for name in TASKS:
        task = results["tasks"][name]
        assert set(task["methods"]) == {"task_vector", "function_vector"}
        assert set(task["controls"]) == expected_controls
        assert task["methods"]["task_vector"]["accuracy"] == task["hypothesis"]["accuracy"]
        fv = task["function_vector"]
        assert 0 <= fv["layer"] < gemma.num_layers and fv["k"] in (1, 2) and fv["scale"] in (1.0, 4.0)
        assert len(fv["dev_accuracy_by_layer"]) == gemma.num_layers and fv["norm_corrected"]
        assert len(fv["attribution"]["aie"]) == gemma.num_layers
        assert (tmp_path / "tasks" / f"{name}.vectors.safetensors").is_file()
    summary = results["summary"]["methods"]
    assert set(summary) == {"task_vector", "function_vector"} | expected_controls
    top = results["head_attribution"]["top_heads"]
    assert len(top) == min(10, gemma.num_layers * 4) and top[0]["mean_aie"] >= top[-1]["mean_aie"]
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    methods = {r["method"] for r in rows}
    assert {"function_vector", "task_vector_task_agnostic", "shuffled_icl+function_vector"} <= methods
    assert sum(r["method"] == "function_vector_random" for r in rows) == len(TASKS) * 3
    report = (tmp_path / "report.md").read_text()
    assert "## Methods compared" in report and "FV task-agnostic" in report and "Top heads" in report
    assert "aie_heatmap" not in report and "data:image/png" in (tmp_path / "report.html").read_text()
    saved = json.loads((tmp_path / "run-config.json").read_text())
    assert saved["methods"] == ["task_vector", "function_vector"] and saved["fv"]["ks"] == [1, 2]
    # Resume: the task files and their vectors are read back; the controls are the same.
    (tmp_path / "results.json").unlink()
    again = run_main(compared_config(), tmp_path, lm=gemma)
    for name in TASKS:
        assert again["tasks"][name]["controls"] == results["tasks"][name]["controls"]


def test_paper_run_config_unchanged_by_methods(gemma, tmp_path):
    """A tv-only run writes the configuration it wrote before methods existed (old runs still resume)."""
    config = compared_config(methods=("task_vector",), fv={})
    assert "methods" not in config.to_dict() and "fv" not in config.to_dict()
    results = run_main(config, tmp_path, lm=gemma)
    assert "methods" not in results["summary"] and "head_attribution" not in results
    assert "controls" not in results["tasks"]["to_upper"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "tv,xx"], "unknown method 'xx'"),
        (["--methods", "tv,fv", "--fv-k", "0,2"], "--fv-k '0,2'"),
        (["--methods", "tv,fv", "--fv-scales", "a"], "--fv-scales 'a'"),
        (["--methods", "tv,fv", "--fv-corrupted", "0"], "--fv-corrupted 0"),
    ],
)
def test_cli_refuses_bad_method_settings_before_loading(argv, message, tmp_path, capsys):
    code = main(["run", "--model", str(tmp_path / "no-model"), "--tasks", "to_upper", "--out", str(tmp_path / "o"),
                 *argv])  # fmt: skip
    assert code != 0
    assert message in capsys.readouterr().err


def test_heads_command_writes_tables_and_resumes(tmp_path):
    from taskvec.experiments.heads_run import HeadsConfig, run_heads

    lm = make_tiny_model("gpt2")
    config = HeadsConfig(model="tiny", tasks=TASKS, n_prompts=3, shots=3)
    results = run_heads(config, tmp_path, lm=lm)
    n_layers, n_heads = lm.num_layers, len(results["tasks"]["to_upper"]["aie"][0])
    assert len(results["mean_aie"]) == n_layers and len(results["top_heads"]) == min(10, n_layers * n_heads)
    for name in TASKS:
        table = results["tasks"][name]["aie"]
        assert len(table) == n_layers and all(v is not None for row in table for v in row)
    mean = sum(results["tasks"][t]["aie"][0][0] for t in TASKS) / 2
    assert results["mean_aie"][0][0] == pytest.approx(mean, abs=1e-6)
    assert "Top heads, mean over tasks" in (tmp_path / "report.md").read_text()
    (tmp_path / "results.json").unlink()
    again = run_heads(config, tmp_path, lm=lm)  # read back from tasks/*.json
    assert again["tasks"] == results["tasks"]
    assert main(["heads", "--tasks", "to_upper", "--shots", "1", "--out", str(tmp_path / "x")]) == 2


def test_report_marks_tasks_whose_function_vector_never_worked():
    def task(best, none_worked):
        fv = {"heads": [[1, 0]], "k": 1, "layer": 1, "scale": 1.0,
              "selection": {"best_dev_accuracy": best, "none_worked": none_worked}}  # fmt: skip
        return {"best_layer": 2, "function_vector": fv, "methods": {}, "controls": {}}

    results = {"tasks": {"a": task(0.0, True), "b": task(0.5, False)},
               "summary": {"methods": {"function_vector": {"accuracy": 0.25}}, "mean": {}}}  # fmt: skip
    chosen = {title: rows for title, _, rows in method_tables(results)}["Chosen on dev"]
    assert [row[5] for row in chosen] == ["0.00 (none worked)", "0.50"]


EVERY = ("in_context_vector", "mean_difference", "icl_shift")


def test_every_position_methods_with_their_controls_resume_and_leave_the_others_unchanged(gemma, tmp_path):
    """``--methods tv,fv,icv,meandiff,shift``: each every-position method gets its dev choice, its random,
    shuffled-label and task-agnostic controls; the task vector's and function vector's numbers equal those of a
    tv,fv run (the every-position draws come after theirs); a resumed run gives the same controls."""
    config = compared_config(methods=("task_vector", "function_vector", *EVERY))
    results = run_main(config, tmp_path / "all", lm=gemma)
    before = run_main(compared_config(), tmp_path / "tvfv", lm=gemma)
    for name in TASKS:
        task = results["tasks"][name]
        assert set(task["methods"]) == {"task_vector", "function_vector", *EVERY}
        for method in EVERY:
            assert {f"{method}_random", f"shuffled_icl+{method}", f"{method}_task_agnostic"} <= set(task["controls"])
            chosen = task["every_position"][method]
            assert chosen["layer"] is None or 0 <= chosen["layer"] < gemma.num_layers
            assert chosen["dev_accuracy"] == max(g["dev_accuracy"] for g in chosen["grid"])
        for method in ("task_vector", "function_vector"):
            assert task["methods"][method] == before["tasks"][name]["methods"][method]
        for control, entry in before["tasks"][name]["controls"].items():
            assert task["controls"][control] == entry
    saved = json.loads((tmp_path / "all" / "run-config.json").read_text())
    assert saved["every"] == {"single_layers": True, "refine_layers": 3}
    assert "every" not in json.loads((tmp_path / "tvfv" / "run-config.json").read_text())
    report = (tmp_path / "all" / "report.md").read_text()
    assert "ICV task-agnostic" in report and "Every-position methods chosen on dev" in report
    (tmp_path / "all" / "results.json").unlink()
    again = run_main(config, tmp_path / "all", lm=gemma)
    for name in TASKS:
        assert again["tasks"][name]["controls"] == results["tasks"][name]["controls"]


def test_every_position_dev_search_scores_each_configuration_as_alone(gemma):
    """The batched dev search gives each configuration the accuracy of its own predict call."""
    from taskvec.experiments.every_position import EverySettings, choose_config, configured, row_edits_of
    from taskvec.tasks.definitions import Pair
    from taskvec.tasks.sampling import EvalSet

    executor = make_executor(gemma, "plain", 4)
    pairs = [Pair(x, y) for x, y in PAIRS]
    sets = [EvalSet(tuple(pairs[i : i + 3]), pairs[i + 3], (pairs[i + 4].input,)) for i in range(5)]
    prompts = [DEFAULT_TEMPLATE.query_prompt(s.query.input) for s in sets]
    vectors = configured("mean_difference", 1.0).vectors(executor, DEFAULT_TEMPLATE, sets, range(gemma.num_layers))
    from taskvec.core.decoding import decode_predictions

    def score(predictions):
        return sum(p == s.query.output for p, s in zip(predictions, sets)) / len(sets)

    chosen = choose_config(executor, "mean_difference", prompts, vectors, score, EverySettings(refine_layers=1))
    for g in chosen.grid:
        edits = row_edits_of(configured("mean_difference", g["strength"]), vectors, g["layer"])
        assert g["dev_accuracy"] == score(decode_predictions(gemma, executor.predict(prompts, edits).ids))
