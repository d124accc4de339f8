"""The main experiment on gemma-3-270m under both executors: identical float32 predictions, row by row."""

from __future__ import annotations

import pytest
import torch

import taskvec
from taskvec.experiments.main_experiment import MainConfig, evaluate_task
from taskvec.runtime import make_executor
from taskvec.tasks import builtin_task, prepare_task

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("task", ["to_upper", "list_first"])
def test_main_experiment_rows_equal_under_plain_and_fast_executors(task):
    torch.set_num_threads(1)
    lm = taskvec.load_model("gemma-3-270m")
    prepared = prepare_task(lm, builtin_task(task))
    config = MainConfig(n_dev=10, n_test=10, n_baseline=10, seed=5, batch_size=8)
    plain, plain_rows = evaluate_task(lm, prepared, config, executor=make_executor(lm, "plain", 8))
    fast, fast_rows = evaluate_task(lm, prepared, config, executor=make_executor(lm, "fast", 8))
    assert plain_rows == fast_rows
    assert {k: v for k, v in plain.items() if k != "seconds"} == {k: v for k, v in fast.items() if k != "seconds"}
