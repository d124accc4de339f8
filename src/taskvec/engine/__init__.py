"""The machinery of forward passes: batching, hooks and interventions, prefix sharing, the cached sweep,
the vocabulary shortlist, generation. The executors (:mod:`taskvec.runtime`) are built from it."""

from taskvec.core.decoding import StopRule, decode_predictions
from taskvec.engine.forward import predict_token_ids
from taskvec.engine.generation import generate, generate_ids
from taskvec.engine.sweep import sweep_token_ids
from taskvec.prompts import DEFAULT_TEMPLATE, PromptTemplate

__all__ = [
    "DEFAULT_TEMPLATE",
    "PromptTemplate",
    "StopRule",
    "decode_predictions",
    "generate",
    "generate_ids",
    "predict_token_ids",
    "sweep_token_ids",
]
