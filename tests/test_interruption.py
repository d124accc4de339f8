"""kill -9 of ``taskvec run`` at several moments; the rerun must finish with the results of an uninterrupted run.

The run is a real subprocess on a tiny random model saved to a folder (``--model <folder>``). Also: the
atomic writer under kill -9, and the output-directory lock (a second run refused or waiting, a killed
holder never leaving a stale lock).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tiny_models import make_tiny_model

from taskvec.cli import main
from taskvec.experiments import MainConfig, run_main
from taskvec.experiments.locking import LOCK_FILE, OutputDirectoryLockedError, output_dir_lock

SRC = str(Path(__file__).resolve().parents[1] / "src")
TASKS = ["to_upper", "to_lower", "next_letter", "prev_letter", "list_first", "list_last"]
SIZES = ["--n-dev", "6", "--n-test", "5", "--n-baseline", "8", "--seed", "3"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama-model")
    lm = make_tiny_model("llama")
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


def run_argv(model_dir: Path, out: Path) -> list[str]:
    return ["run", "--model", str(model_dir), "--tasks", *TASKS, *SIZES, "--out", str(out)]


def spawn(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; from taskvec.cli import main; sys.exit(main(sys.argv[1:]))", *argv],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def comparable(out: Path) -> tuple[dict, str]:
    """results.json without wall-time fields, and predictions.jsonl as text."""
    results = json.loads((out / "results.json").read_text())
    for key in ("created", "timing"):
        results.pop(key)
    for entry in results["tasks"].values():
        entry.pop("seconds")
    return results, (out / "predictions.jsonl").read_text()


@pytest.fixture(scope="module")
def reference(model_dir, tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(run_argv(model_dir, out)) == 0
    return comparable(out)


def wait_until(proc: subprocess.Popen, condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before the kill point: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "kill point not reached"
        time.sleep(0.005)


def finished_tasks(out: Path) -> int:
    return len(list((out / "tasks").glob("*.json"))) if (out / "tasks").is_dir() else 0


KILL_POINTS = {
    "while loading (lock held, nothing written)": lambda out: (out / LOCK_FILE).exists(),
    "after 1 task": lambda out: finished_tasks(out) >= 1,
    "after 4 tasks": lambda out: finished_tasks(out) >= 4,
    "all tasks done, writing results/report": lambda out: finished_tasks(out) == len(TASKS),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_9_then_rerun_gives_the_uninterrupted_results(point, model_dir, reference, tmp_path):
    out = tmp_path / "run"
    proc = spawn(run_argv(model_dir, out))
    try:
        wait_until(proc, lambda: KILL_POINTS[point](out))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / "results.json").exists() or json.loads((out / "results.json").read_text())  # never partial
    assert main(run_argv(model_dir, out)) == 0  # the same command again: no lock, no leftovers in the way
    assert comparable(out) == reference
    assert not list(out.rglob("*.tmp")) and not (out / LOCK_FILE).exists()


def test_kill_9_at_random_moments(model_dir, reference, tmp_path):
    """Two kills at random delays into the same directory, then a rerun."""
    out = tmp_path / "run"
    rng = random.Random(11)
    for _ in range(2):
        proc = spawn(run_argv(model_dir, out))
        time.sleep(rng.uniform(0.5, 5.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert main(run_argv(model_dir, out)) == 0
    assert comparable(out) == reference


WRITER = textwrap.dedent(
    """
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("results_io", sys.argv[2])  # no torch import: starts fast
    results_io = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(results_io)
    write_text_atomic = results_io.write_text_atomic
    i = 0
    while True:
        i += 1
        write_text_atomic(sys.argv[1], str(i % 10) * 3_000_000)
        print(i, flush=True)
    """
)


def test_atomic_writes_survive_kill_9(tmp_path):
    """A process rewriting a 3 MB file is killed at random moments: the file is always one whole version."""
    target = tmp_path / "results.json"
    rng = random.Random(5)
    module = Path(SRC) / "taskvec" / "io" / "atomic.py"
    for _ in range(10):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(module)], stdout=subprocess.PIPE)
        proc.stdout.readline()  # at least one version written
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        text = target.read_text()
        assert len(text) == 3_000_000 and len(set(text)) == 1
    leftovers = [p for p in tmp_path.iterdir() if p.name != "results.json"]
    assert all(p.name.startswith(".results.json.") and p.suffix == ".tmp" for p in leftovers)


# ------------------------------------------------------------------------------------------------- the lock
def test_a_second_run_into_a_busy_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    with output_dir_lock(out):
        busy = rf"'{out}' is in use by another taskvec run \(pid "
        with pytest.raises(OutputDirectoryLockedError, match=busy), output_dir_lock(out):
            pass
        # A bundled model passes the checks made before loading (its packages are installed), so the run
        # reaches the directory's lock, which refuses it before any model is loaded.
        assert main(["run", "--model", "gemma-3-270m", "--tasks", "to_upper", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"pid {os.getpid()}" in err and "--wait" in err and err.count("\n") == 1, err
    assert not out.exists()  # created by the lock, left empty: removed


def test_the_lock_of_a_killed_process_is_free_at_once(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from taskvec.experiments.locking import output_dir_lock\n"
         "with output_dir_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(600)", str(out)],
        env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(OutputDirectoryLockedError, match=rf"pid {holder.pid}\)"), output_dir_lock(out):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (out / LOCK_FILE).exists()  # the file stays behind, but not the lock
    with output_dir_lock(out):
        assert (out / LOCK_FILE).read_text().strip() == str(os.getpid())


def test_wait_queues_behind_the_holder(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from taskvec.experiments.locking import output_dir_lock\n"
         "with output_dir_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(1.5)", str(out)],
        env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    started = time.monotonic()
    with output_dir_lock(out, wait=True):
        waited = time.monotonic() - started
        assert (out / LOCK_FILE).read_text().strip() == str(os.getpid())
    assert waited > 1.0  # the holder kept the lock for 1.5 s after saying so
    holder.wait()


def test_two_concurrent_runs_do_not_interleave(model_dir, reference, tmp_path):
    """Two real runs started together into one directory: one refuses with exit 2, the other completes."""
    out = tmp_path / "run"
    procs = [spawn(run_argv(model_dir, out)) for _ in range(2)]
    codes = sorted(p.wait() for p in procs)
    errors = [p.stderr.read() for p in procs]
    assert codes == [0, 2], errors
    assert any("is in use by another taskvec run" in e for e in errors)
    assert comparable(out) == reference


def test_resume_after_a_corrupted_task_file(model_dir, reference, tmp_path):
    """A partial-results file damaged by hand (or by a disk) is recomputed, not trusted."""
    out = tmp_path / "run"
    assert main(run_argv(model_dir, out)) == 0
    (out / "tasks" / "to_lower.json").write_text('{"result": {"category": "algorithm')
    (out / "results.json").unlink()
    (out / ".results.json.abc123.tmp").write_text("partial")  # a crash leftover
    assert main(run_argv(model_dir, out)) == 0
    assert comparable(out) == reference
    assert not list(out.glob("*.tmp"))


def test_the_api_run_locks_too(tmp_path):
    tiny = make_tiny_model("llama")
    config = MainConfig(model="tiny-llama", tasks=("to_upper",), n_dev=4, n_test=3, n_baseline=5)
    with output_dir_lock(tmp_path / "out"), pytest.raises(OutputDirectoryLockedError):
        run_main(config, tmp_path / "out", lm=tiny)
    run_main(config, tmp_path / "out", lm=tiny)
    assert (tmp_path / "out" / "results.json").exists() and not (tmp_path / "out" / LOCK_FILE).exists()


@pytest.mark.parametrize("fail_at", [1, 3, 8])
def test_a_full_disk_loses_nothing(fail_at, model_dir, reference, tmp_path, monkeypatch, capsys):
    """The ``fail_at``-th file write fails with ENOSPC: exit 1 with one line, no partial file; rerun completes."""
    import errno

    from taskvec.io import atomic as results_io

    writes = []
    real_fsync = results_io.os.fsync

    def full_disk(fd):
        writes.append(fd)
        if len(writes) == fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(results_io.os, "fsync", full_disk)
    out = tmp_path / "run"
    assert main(run_argv(model_dir, out)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("taskvec: error: No space left on device") and "Traceback" not in "".join(err)
    assert not list(out.rglob("*.tmp")) and not (out / "results.json").exists()
    monkeypatch.setattr(results_io.os, "fsync", real_fsync)
    assert main(run_argv(model_dir, out)) == 0
    assert comparable(out) == reference


def test_a_run_killed_before_its_configuration_was_written_does_not_block_the_rerun(model_dir, reference, tmp_path):
    # what a kill -9 right after taking the lock can leave: the lock file, the writability probe, a temp file
    out = tmp_path / "run"
    out.mkdir()
    leftovers = [out / LOCK_FILE, out / ".taskvec-write-test.tmp", out / ".run-config.json.k1l2.tmp"]
    for path in leftovers:
        path.write_text("")
    assert main(run_argv(model_dir, out)) == 0
    assert comparable(out) == reference
    assert not any(path.exists() for path in leftovers)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    assert main(run_argv(model_dir, tmp_path / "foreign")) == 2  # a foreign file still refuses the directory
