"""The public functions and the TaskVector value (re-exported by :mod:`taskvec`)."""

from taskvec.api.extraction import extract, extract_task_vector, mean_states
from taskvec.api.patching import apply_task_vector
from taskvec.api.sweep import SweepResult, layer_sweep
from taskvec.api.task_vector import TaskVector
from taskvec.core.decoding import StopRule, decode_predictions
from taskvec.engine.generation import generate, generate_ids
from taskvec.prompts import DEFAULT_TEMPLATE, PromptTemplate

__all__ = [
    "DEFAULT_TEMPLATE",
    "PromptTemplate",
    "StopRule",
    "SweepResult",
    "TaskVector",
    "apply_task_vector",
    "decode_predictions",
    "extract",
    "extract_task_vector",
    "generate",
    "generate_ids",
    "layer_sweep",
    "mean_states",
]
