"""What a newcomer meets at the command line: usage without a command, defaults in --help, repeated
options, and bad values refused before any model is loaded (every model of a multi-model run)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from taskvec import cli
from taskvec.experiments.main_experiment import MainConfig
from taskvec.experiments.outdir import task_result_path, write_run_config
from taskvec.models import loading
from taskvec.models.registry import BUNDLED_MODELS
from taskvec.report import compare


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if anything tries to load a model or start an experiment."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad argument was refused")

    monkeypatch.setattr(loading, "load_model", forbidden)
    monkeypatch.setattr("taskvec.experiments.runner.run_main", forbidden)


def test_no_command_lists_the_commands(capsys):
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    for command in ("demo", "run", "apply", "extract", "compare"):
        assert command in err
    assert "taskvec: error: taskvec:" not in err and "name a command" in err


def test_usage_error_names_the_program_once(capsys):
    assert cli.main(["run", "--shots", "many"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("taskvec: error: run: argument --shots: invalid int value: 'many'")
    assert err.count("taskvec: error") == 1


def test_help_shows_defaults(capsys):
    assert cli.main(["run", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split()).split("options:", 1)[1]  # past the usage line
    for option, default in (("--shots", 5), ("--n-dev", 50), ("--n-test", 50), ("--n-baseline", 100), ("--seed", 41)):
        start = text.index(option)
        assert f"(default: {default})" in text[start : start + 200], option
    assert "--threads" in text


def test_repeated_query_options_accumulate(monkeypatch):
    seen = {}
    apply_module = next(m for m in cli._command_modules() if m.NAME == "apply")
    monkeypatch.setattr(apply_module, "run", lambda args: seen.update(query=args.query))
    assert cli.main(["apply", "tv.safetensors", "--query", "c", "--query", "f", "g"]) == 0
    assert seen["query"] == ["c", "f", "g"]


def test_unknown_demo_task_is_refused_before_loading(no_model_loads, capsys):
    assert cli.main(["demo", "--task", "contry_capital"]) == 2
    assert "contry_capital" in capsys.readouterr().err


@pytest.mark.parametrize("bundled", ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"])
def test_missing_model_extra_is_named_before_any_work(bundled, no_model_loads, capsys, tmp_path, monkeypatch):
    model = BUNDLED_MODELS[bundled]
    if importlib.util.find_spec(model.chunk_modules[0]) is not None:  # the extra is installed here: hide it only
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in model.chunk_modules
                            else real(name, *a))  # fmt: skip
    monkeypatch.setattr(loading.dense_cache, "is_complete", lambda entry: False)
    code = cli.main(["run", "--model", f"gemma-3-270m,{bundled}", "--tasks", "to_upper", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"pip install -e '.[{model.extra}]'" in err, err
    assert not (tmp_path / "r").exists()


def test_bad_second_model_path_is_refused_before_the_first_model_runs(no_model_loads, capsys, tmp_path):
    code = cli.main(["run", "--model", f"gemma-3-270m,{tmp_path}/nowhere", "--tasks", "to_upper"])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_bad_task_file_is_refused_before_loading(no_model_loads, capsys, tmp_path):
    bad = tmp_path / "pairs.csv"
    bad.write_text("question,answer\na,b\n")
    assert cli.main(["run", "--task-file", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "input" in capsys.readouterr().err


def test_other_configuration_in_a_later_models_directory_is_refused_first(no_model_loads, capsys, tmp_path):
    other = MainConfig(model="gemma-3-270m", tasks=("to_upper",), shots=3)
    (tmp_path / "gemma-3-270m").mkdir()
    write_run_config(tmp_path / "gemma-3-270m", other.to_dict())
    code = cli.main(["run", "--model", "gemma-3-270m,gemma-3-270m", "--tasks", "to_upper", "--out", str(tmp_path)])
    assert code == 2
    assert "another configuration" in capsys.readouterr().err


def test_resume_is_announced_with_the_tasks_it_skips(monkeypatch, capsys, tmp_path):
    config = MainConfig(model="gemma-3-270m", tasks=("to_upper", "to_lower"))
    write_run_config(tmp_path, config.to_dict())
    done = task_result_path(tmp_path, "to_upper")
    done.parent.mkdir(parents=True)
    done.write_text(json.dumps({"result": {}, "predictions": []}))
    monkeypatch.setattr(loading, "check_model_spec", lambda spec: None)

    def fake_run(config, out, **kwargs):
        mean = {"n_tasks": 2, "baseline": 0, "hypothesis": 0, "regular": 0, "tv_over_icl": 0}
        return {"summary": {"mean": mean}, "timing": {"seconds": 0}}

    monkeypatch.setattr("taskvec.experiments.runner.run_main", fake_run)
    assert cli.main(["run", "--tasks", "to_upper", "to_lower", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "resuming the run in" in err and "1 of 2 tasks already done" in err and "to_upper" in err


def _results(**config) -> dict:
    task = {"baseline": {"accuracy": 0.1}, "hypothesis": {"accuracy": 0.5}, "regular": {"accuracy": 0.6},
            "category": "algorithmic", "best_layer": 3, "num_layers": 6}  # fmt: skip
    return {"taskvec_version": "0", "model": {"id": "m", "num_layers": 6}, "tasks": {"t": task},
            "config": {"model": "m", "tasks": ["t"], "seed": 41, "shots": 5, "n_test": 50, **config}}  # fmt: skip


def test_compare_warns_when_protocols_differ(tmp_path, caplog):
    runs = []
    for name, n_test in (("a", 50), ("b", 10)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(_results(n_test=n_test)))
        runs.append(tmp_path / name)
    assert compare.protocol_differences([_results(), _results(seed=1, batch_size=8)]) == {}
    with caplog.at_level("WARNING"):
        paths = compare.write_comparison(tmp_path / "cmp", runs)
    assert "different protocols" in caplog.text and "n_test" in caplog.text
    assert "different protocols" in paths["md"].read_text()
    assert json.loads(paths["json"].read_text())["protocol_differences"] == {"n_test": [50, 10]}
