"""Applying theta: patch it into the forward pass on the bare query, at the last position."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from taskvec.engine.compat import check_compatible
from taskvec.engine.forward import (
    DEFAULT_BATCH_SIZE,
    check_layers,
    check_queries,
    decode_predictions,
    predict_token_ids,
)
from taskvec.engine.prompts import PromptTemplate
from taskvec.engine.task_vector import TaskVector
from taskvec.errors import TaskvecError
from taskvec.models.loading import LoadedModel


def template_of(task_vector: TaskVector) -> PromptTemplate:
    """The prompt template stored with the task vector (the default one when none is stored)."""
    stored = task_vector.metadata.get("template")
    if not stored:
        return PromptTemplate()
    if not isinstance(stored, dict) or not all(
        k in ("query", "separator", "answer_prefix", "input_prefix") and isinstance(v, str) for k, v in stored.items()
    ):
        raise TaskvecError(
            f"task vector metadata has template {stored!r}; expected an object with string fields "
            "query, separator, answer_prefix and optionally input_prefix"
        )
    return PromptTemplate(**stored)


def apply_task_vector(
    lm: LoadedModel,
    task_vector: TaskVector,
    queries: Sequence[str],
    layer: int | None = None,
    *,
    template: PromptTemplate | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[str]:
    """Zero-shot answers to ``queries`` with theta patched in at ``layer``.

    The bare query prompt (``example:{x}->``) is run; the output of decoder block ``layer`` at the
    last position is REPLACED by theta (the whole residual stream there), and the forward pass goes
    on. Returns the greedy next token of each query, decoded and stripped.
    """
    check_compatible(lm, task_vector)
    prompts, chosen, theta = patch_inputs(lm, task_vector, check_queries(queries), layer, template)
    ids = patched_token_ids(lm, prompts, theta, [chosen] * len(prompts), batch_size)
    return decode_predictions(lm, ids)


def patch_inputs(
    lm: LoadedModel,
    task_vector: TaskVector,
    queries: list[str],
    layer: int | None,
    template: PromptTemplate | None,
) -> tuple[list[str], int, torch.Tensor]:
    """The bare query prompts, the checked layer (default: the vector's own) and theta there, one row per
    prompt: what patching ``task_vector`` into ``queries`` needs, for one-token and multi-token answers."""
    chosen = task_vector.layer if layer is None else layer
    if chosen is None:
        raise TaskvecError("no layer given and this task vector has no chosen layer; pass layer=...")
    (chosen,) = check_layers(lm, [chosen])
    template = template or template_of(task_vector)
    prompts = [template.query_prompt(q) for q in queries]
    return prompts, chosen, task_vector.at(chosen).expand(len(prompts), -1)


def patched_token_ids(
    lm: LoadedModel,
    prompts: Sequence[str],
    vectors: torch.Tensor,
    layers: Sequence[int],
    batch_size: int = DEFAULT_BATCH_SIZE,
    with_margins: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Greedy next token of prompt i with ``vectors[i]`` patched at block ``layers[i]`` (full forward)."""
    check_layers(lm, layers)
    return predict_token_ids(
        lm, prompts, patch_layers=list(layers), patch_vectors=vectors, batch_size=batch_size, with_margins=with_margins
    )
