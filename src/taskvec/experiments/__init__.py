"""The paper's experiments."""

from taskvec.experiments.main_experiment import MainConfig, evaluate_task
from taskvec.experiments.runner import run_main

__all__ = ["MainConfig", "evaluate_task", "run_main"]
