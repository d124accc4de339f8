"""The engine: prompting, batching, theta extraction, patching and the layer sweep."""

from taskvec.engine.decoding import StopRule, decode_predictions
from taskvec.engine.extraction import extract_task_vector, mean_states
from taskvec.engine.forward import predict_token_ids
from taskvec.engine.generation import generate, generate_ids
from taskvec.engine.patching import apply_task_vector, patched_token_ids
from taskvec.engine.sweep import SweepResult, layer_sweep, sweep_token_ids
from taskvec.engine.task_vector import TaskVector
from taskvec.prompts import DEFAULT_TEMPLATE, PromptTemplate

__all__ = [
    "DEFAULT_TEMPLATE",
    "PromptTemplate",
    "StopRule",
    "SweepResult",
    "TaskVector",
    "apply_task_vector",
    "decode_predictions",
    "extract_task_vector",
    "generate",
    "generate_ids",
    "layer_sweep",
    "mean_states",
    "patched_token_ids",
    "predict_token_ids",
    "sweep_token_ids",
]
