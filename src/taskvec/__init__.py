"""taskvec: in-context-learning task vectors (Hendel, Geva & Globerson, 2023) for Hugging Face causal LMs."""

from taskvec.api import (
    PromptTemplate,
    SweepResult,
    TaskVector,
    apply_task_vector,
    extract,
    extract_task_vector,
    layer_sweep,
)
from taskvec.errors import TaskvecError
from taskvec.models import BUNDLED_MODELS, DEFAULT_MODEL, LoadedModel, load_model
from taskvec.version import __version__

__all__ = [
    "BUNDLED_MODELS",
    "DEFAULT_MODEL",
    "LoadedModel",
    "PromptTemplate",
    "SweepResult",
    "TaskVector",
    "TaskvecError",
    "__version__",
    "apply_task_vector",
    "extract",
    "extract_task_vector",
    "layer_sweep",
    "load_model",
]
