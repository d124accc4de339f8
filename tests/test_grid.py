"""``taskvec grid``: grid.yaml checks, and the local submitit path end to end on a tiny model saved to a
folder: several jobs in worker processes, one SIGKILLed half-way and resumed by a rerun that skips the
finished jobs and tasks; then the summary."""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml
from tiny_models import make_tiny_model

import taskvec
from taskvec.cli import main
from taskvec.errors import TaskvecError
from taskvec.experiments import run_main
from taskvec.grid import load_grid, parse_grid, run_grid, write_summary

SRC = str(Path(taskvec.__file__).parents[1])
TASKS = ["to_upper", "to_lower", "next_letter", "prev_letter", "list_first", "list_last", "list_min", "list_max"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    lm = make_tiny_model("llama")
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


def grid_dict(model_dir, **changes):
    grid = {"models": [str(model_dir)], "tasks": TASKS, "seeds": [1, 2, 3], "shots": [3], "n_dev": 12,
            "n_test": 6, "n_baseline": 6}  # fmt: skip
    grid.update(changes)
    return grid


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": "x"}, "unknown key(s) 'model'; known: models"),
        ({"models": []}, "'models' is required"),
        ({"seeds": ["one"]}, "'seeds' must be a list of int, got ['one']"),
        ({"seeds": [1, 1]}, "'seeds' lists a value twice"),
        ({"shots": [0, 2]}, "'shots' values must be at least 1"),
        ({"tasks": ["to_upper", "no_such_task"]}, "unknown task 'no_such_task'"),
        ({"n_dev": "10"}, "'n_dev' must be a whole number of at least 1, got '10'"),
        ({"dtype": "int8"}, "unknown dtype 'int8'"),
        ({"device": "gpu"}, "unknown device 'gpu'"),
        ({"batch_size": 0}, "batch size must be a whole number"),
        ({"slurm": {"partition": "gpu", "nodes": 2}}, "unknown slurm key 'nodes'"),
        ({"slurm": {"mem_gb": "lots"}}, "slurm 'mem_gb' must be a int, got 'lots'"),
        ({"models": ["a/m", "b/m"]}, "share a directory name"),
    ],
)
def test_bad_grid_files_are_refused_with_the_key_and_value(changes, message):
    with pytest.raises(TaskvecError) as info:
        parse_grid(grid_dict("m", **changes), where="grid.yaml")
    assert message in str(info.value) and str(info.value).startswith("grid.yaml: ")


def test_grid_expands_models_seeds_shots_and_maps_slurm_parameters(tmp_path):
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(
        {"models": ["m1", "m2"], "tasks": ["paper", "list_min"], "seeds": [1, 2], "shots": [1, 5], "n_dev": 7,
         "batch_size": "auto", "slurm": {"partition": "gpu", "gpus_per_node": 1, "array_parallelism": 4}}
    ))  # fmt: skip
    spec = load_grid(tmp_path / "g.yaml")
    jobs = spec.jobs(tmp_path / "out")
    assert len(jobs) == 8 and len(spec.tasks) == 19 and spec.tasks[-1] == "list_min"
    assert [j.name for j in jobs[:3]] == ["m1/seed1-shots1", "m1/seed1-shots5", "m1/seed2-shots1"]
    assert jobs[-1].run_dir == tmp_path / "out" / "runs" / "m2" / "seed2-shots5"
    assert jobs[0].config.n_dev == 7 and jobs[0].config.n_test == 50 and jobs[0].config.batch_size == "auto"
    assert spec.slurm == {"slurm_partition": "gpu", "gpus_per_node": 1, "slurm_array_parallelism": 4}
    (tmp_path / "bad.yaml").write_text("models: [a\n")
    assert main(["grid", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert main(["grid-summary", str(tmp_path / "nothing")]) == 2


def test_slurm_parameters_are_ones_submitit_knows_and_no_slurm_is_a_clear_error(tmp_path, model_dir):
    import shutil

    import submitit

    from taskvec.grid.config import SLURM_KEYS

    slurm_only = {f"slurm_{k}" for k in submitit.SlurmExecutor._valid_parameters()}
    known = submitit.AutoExecutor._valid_parameters() | slurm_only
    assert {name for name, _ in SLURM_KEYS.values()} <= known
    if shutil.which("srun") is None:
        with pytest.raises(TaskvecError, match="--executor slurm: no SLURM here"):
            run_grid(parse_grid(grid_dict(model_dir, seeds=[1])), tmp_path, executor="slurm")


def _worker_of(controller_pid: int) -> int | None:
    children = Path(f"/proc/{controller_pid}/task/{controller_pid}/children")
    pids = children.read_text().split() if children.exists() else []
    return int(pids[0]) if pids else None


def _kill_half_way(run_dir: Path, controllers: dict[str, int], name: str, killed: list[int], stop) -> None:
    """Watch ``run_dir``: once a task is finished there but not the whole run, SIGKILL the job's worker."""
    while not stop.is_set() and not killed:
        done = list((run_dir / "tasks").glob("*.json")) if (run_dir / "tasks").is_dir() else []
        worker = _worker_of(controllers[name]) if name in controllers else None
        if done and worker and not (run_dir / "results.json").exists():
            os.kill(worker, signal.SIGKILL)
            killed.append(len(done))
        time.sleep(0.005)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the worker process through /proc")
def test_local_grid_end_to_end_with_a_killed_job(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])))
    spec = parse_grid(grid_dict(model_dir))
    out = tmp_path / "grid"
    victim = spec.jobs(out)[1]
    controllers: dict[str, int] = {}
    killed: list[int] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_kill_half_way, args=(victim.run_dir, controllers, victim.name, killed, stop))
    watcher.start()
    try:
        first = run_grid(
            spec,
            out,
            workers=2,
            on_event=lambda j, what, d: what == "started" and controllers.setdefault(j.name, int(d)),
        )
    finally:
        stop.set()
        watcher.join()
    assert killed and killed[0] >= 1, "the job finished before it could be killed half-way"
    assert sorted(first.done) == sorted(j.name for j in spec.jobs(out) if j != victim)
    assert list(first.failed) == [victim.name] and "ended without a result" in first.failed[victim.name]
    assert not (victim.run_dir / "results.json").exists()
    kept = {p.name: p.stat().st_mtime_ns for p in (victim.run_dir / "tasks").glob("*.json")}
    assert 1 <= len(kept) < len(TASKS)
    assert write_summary(out)["md"].read_text().count(victim.name) == 1  # listed as unfinished

    finished = {j.name: (j.run_dir / "results.json").stat().st_mtime_ns for j in spec.jobs(out) if j != victim}
    second = run_grid(spec, out, workers=2)
    assert second.done == [victim.name] and sorted(second.skipped) == sorted(finished) and not second.failed
    for job in spec.jobs(out):
        if job != victim:
            assert (job.run_dir / "results.json").stat().st_mtime_ns == finished[job.name]
    assert {p.name: p.stat().st_mtime_ns for p in (victim.run_dir / "tasks").glob("*.json") if p.name in kept} == kept

    resumed = json.loads((victim.run_dir / "results.json").read_text())
    clean = run_main(victim.config, tmp_path / "clean", lm=taskvec.load_model(str(model_dir)))
    for task, entry in clean["tasks"].items():
        assert {**resumed["tasks"][task], "seconds": 0} == {**entry, "seconds": 0}

    paths = write_summary(out)
    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == 3 * len(TASKS) and {r["seed"] for r in rows} == {"1", "2", "3"}
    assert "Unfinished" not in paths["md"].read_text() and paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert "data:image/png;base64," in paths["html"].read_text()
