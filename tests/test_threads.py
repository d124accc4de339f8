"""The thread count: option, then environment, then the cores that other processes leave idle."""

from __future__ import annotations

import subprocess
import sys

import pytest

from taskvec import threads
from taskvec.errors import TaskvecError


def test_option_then_environment_then_auto(monkeypatch):
    monkeypatch.setenv(threads.ENV_VAR, "3")
    assert threads.resolve_threads("2") == (2, "--threads")
    assert threads.resolve_threads(None) == (3, "$TASKVEC_THREADS")
    monkeypatch.setenv(threads.ENV_VAR, "auto")
    monkeypatch.setattr(threads, "idle_cores", lambda: 5)
    assert threads.resolve_threads(None) == (5, "auto (idle cores)")
    assert threads.resolve_threads("auto") == (5, "auto (idle cores)")


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5"])
def test_bad_values_name_the_source(bad, monkeypatch):
    with pytest.raises(TaskvecError, match=r"--threads"):
        threads.resolve_threads(bad)
    monkeypatch.setenv(threads.ENV_VAR, bad)
    with pytest.raises(TaskvecError, match=r"\$TASKVEC_THREADS"):
        threads.resolve_threads(None)


def test_idle_cores_subtracts_busy_ones_and_keeps_one():
    assert threads.idle_cores(cores=2, busy=0.1) == 2
    assert threads.idle_cores(cores=2, busy=0.9) == 1
    assert threads.idle_cores(cores=2, busy=5.0) == 1
    assert threads.idle_cores(cores=8, busy=2.4) == 6


def test_a_competing_process_is_seen_as_a_busy_core():
    if threads.busy_cores(0.05) is None:
        pytest.skip("no /proc/stat on this platform")
    quiet = threads.busy_cores(0.3)
    hog = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 5\nwhile time.time() < end: pass"])
    try:
        busy = threads.busy_cores(0.5)
    finally:
        hog.kill()
        hog.wait()
    assert busy is not None and quiet is not None
    assert busy >= 0.6 and busy > quiet - 0.5  # the spinning process holds (most of) one core


def test_the_cli_sets_torchs_thread_count(monkeypatch):
    import torch

    from taskvec import cli

    seen = {}
    module = next(m for m in cli._command_modules() if m.NAME == "demo")
    monkeypatch.setattr(module, "run", lambda args: seen.update(threads=torch.get_num_threads()))
    before = torch.get_num_threads()
    try:
        assert cli.main(["demo", "--threads", "1"]) == 0
        assert seen["threads"] == 1
        assert cli.main(["demo", "--threads", "zero"]) == 2
    finally:
        torch.set_num_threads(before)
