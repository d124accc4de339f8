"""The main experiment's runner on a tiny model: files, schema, reproducibility, resume, bad input."""

from __future__ import annotations

import json

import pytest
from tiny_models import make_tiny_model

from taskvec.cli import main
from taskvec.errors import OutputDirectoryError, TaskDataError
from taskvec.experiments import MainConfig, run_main
from taskvec.experiments import runner as runner_module

TASKS = ("to_upper", "next_letter")


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_model("llama")


def small_config(**changes) -> MainConfig:
    values = {"model": "tiny-llama", "tasks": TASKS, "n_dev": 4, "n_test": 3, "n_baseline": 5, "seed": 7}
    values.update(changes)
    return MainConfig(**values)


def test_run_writes_results_predictions_and_report(tiny, tmp_path):
    results = run_main(small_config(), tmp_path, lm=tiny)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        "predictions.jsonl", "report.html", "report.md", "results.json", "run-config.json",
    ]  # fmt: skip
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["tasks"] == results["tasks"]
    assert on_disk["seed"] == 7 and on_disk["config"]["n_dev"] == 4 and on_disk["model"]["num_layers"] == 3
    assert {"taskvec", "torch", "transformers", "python"} <= set(on_disk["versions"])
    for name in TASKS:
        entry = on_disk["tasks"][name]
        assert entry["regular"]["n"] == 3 and entry["hypothesis"]["n"] == 3 and entry["baseline"]["n"] == 5
        assert len(entry["dev_accuracy_by_layer"]) == 3
        assert entry["best_layer"] == entry["dev_accuracy_by_layer"].index(max(entry["dev_accuracy_by_layer"]))
        lo, hi = entry["regular"]["ci95"]
        assert 0 <= lo <= entry["regular"]["accuracy"] <= hi <= 1
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == len(TASKS) * (4 * 3 + 3 + 3 + 5)
    assert {r["method"] for r in rows} == {"dev_sweep", "hypothesis", "regular", "baseline"}
    regular = [r for r in rows if r["method"] == "regular" and r["task"] == "to_upper"]
    assert sum(r["correct"] for r in regular) / 3 == on_disk["tasks"]["to_upper"]["regular"]["accuracy"]
    assert regular[0]["prompt"].count("\n") == 5  # 5 demonstrations, then the query
    assert "to_upper" in (tmp_path / "report.md").read_text()


def test_same_seed_same_numbers_and_resume_skips_finished_tasks(tiny, tmp_path, monkeypatch):
    first = run_main(small_config(), tmp_path / "a", lm=tiny)
    second = run_main(small_config(), tmp_path / "b", lm=tiny)
    assert first["tasks"] == {k: {**v, "seconds": first["tasks"][k]["seconds"]} for k, v in second["tasks"].items()}
    # A killed run: one task finished, the other not, and no results.json yet.
    (tmp_path / "a" / "tasks" / "next_letter.json").unlink()
    (tmp_path / "a" / "results.json").unlink()
    evaluated = []
    real = runner_module.evaluate_task
    monkeypatch.setattr(
        runner_module, "evaluate_task", lambda lm, p, c, **kw: evaluated.append(p.name) or real(lm, p, c, **kw)
    )
    resumed = run_main(small_config(), tmp_path / "a", lm=tiny)
    assert evaluated == ["next_letter"]
    assert (
        resumed["tasks"]["next_letter"]["dev_accuracy_by_layer"]
        == first["tasks"]["next_letter"]["dev_accuracy_by_layer"]
    )
    assert resumed["summary"] == first["summary"]


def test_a_seed_changes_the_samples(tiny, tmp_path):
    run_main(small_config(), tmp_path / "a", lm=tiny)
    run_main(small_config(seed=8), tmp_path / "b", lm=tiny)
    prompts = [
        {json.loads(line)["prompt"] for line in (tmp_path / d / "predictions.jsonl").read_text().splitlines()}
        for d in ("a", "b")
    ]
    assert prompts[0] != prompts[1]


def test_a_directory_holding_another_configuration_is_refused(tiny, tmp_path):
    run_main(small_config(), tmp_path, lm=tiny)
    with pytest.raises(OutputDirectoryError, match=r"another configuration \(n_test: 3 there, 4 now\)"):
        run_main(small_config(n_test=4), tmp_path, lm=tiny)


def test_unwritable_or_foreign_output_directories(tiny, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    with pytest.raises(OutputDirectoryError, match="is not writable"):
        run_main(small_config(), blocker / "out", lm=tiny)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirectoryError, match="not empty and holds no taskvec run"):
        run_main(small_config(), tmp_path / "other", lm=tiny)


def test_task_file_with_too_few_usable_pairs(tiny, tmp_path):
    """Enough pairs before the tokenizer, too few one-token answers after it: refused before any task runs."""
    pairs = [{"input": c, "output": c.upper()} for c in "abcdefg"] + [{"input": "k", "output": "KK"}]
    (tmp_path / "mine.json").write_text(json.dumps(pairs))
    config = small_config(tasks=("to_upper",), task_files=(str(tmp_path / "mine.json"),))
    with pytest.raises(TaskDataError, match=r"task 'mine' has 7 usable pairs \(of 8\) but one set needs 8"):
        run_main(config, tmp_path / "out", lm=tiny)
    assert not (tmp_path / "out" / "results.json").exists()
    assert not (tmp_path / "out" / "tasks").exists()  # to_upper, valid, was not computed either


def test_a_task_file_runs_like_a_builtin_task(tiny, tmp_path):
    pairs = [{"input": c, "output": c.upper()} for c in "abcdefghijklmnopqrst"]
    (tmp_path / "caps.csv").write_text("input,output\n" + "".join(f"{p['input']},{p['output']}\n" for p in pairs))
    results = run_main(small_config(tasks=(), task_files=(str(tmp_path / "caps.csv"),)), tmp_path / "out", lm=tiny)
    assert results["tasks"]["caps"]["n_usable"] == 20 and results["tasks"]["caps"]["category"] == "custom"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--tasks", "nope"], "unknown task 'nope'"),
        (["run", "--shots", "0"], "--shots must be at least 1, got 0"),
        (["demo", "--model", "/no/such/model"], "model path '/no/such/model' does not exist"),
        (["compare", "/no/such/run"], "/no/such/run"),
    ],
)
def test_cli_bad_input_exits_2_with_a_clear_message(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "taskvec: error:" in err and message in err
    assert "Traceback" not in err


def test_cli_lists_tasks(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "country_capital" in out and "list_min" in out
