"""Extracting a task vector from demonstrations (theta is defined in :mod:`taskvec.core.methods.task_vector`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from taskvec.api.compat import model_metadata
from taskvec.api.task_vector import TaskVector, sha256_of_json
from taskvec.core.interfaces import Executor
from taskvec.core.methods import TASK_VECTOR
from taskvec.engine.forward import DEFAULT_BATCH_SIZE, check_layers
from taskvec.engine.validation import check_demonstrations
from taskvec.errors import TaskvecError
from taskvec.models.loading import LoadedModel
from taskvec.prompts import DEFAULT_TEMPLATE, PromptTemplate
from taskvec.runtime import make_executor


def mean_states(
    lm: LoadedModel,
    prompt_groups: Sequence[Sequence[str]],
    layers: Sequence[int] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    shared_prefix: bool = True,
) -> torch.Tensor:
    """theta of each group of dummy-query prompts: the mean last-position block output, (groups,
    len(layers), H), computed by the fast executor (``shared_prefix``: each group's demonstrations run
    once) or the plain one."""
    layers = check_layers(lm, range(lm.num_layers) if layers is None else layers)
    executor = make_executor(lm, "fast" if shared_prefix else "plain", batch_size)
    return TASK_VECTOR.from_prompts(executor, prompt_groups, layers)


def extract_task_vector(
    lm: LoadedModel,
    demonstrations: Sequence[tuple[str, str]],
    dummy_queries: Sequence[str] | None = None,
    *,
    template: PromptTemplate = DEFAULT_TEMPLATE,
    n_dummy: int = 2,
    single_token_answers: bool = True,
    executor: Executor | None = None,
) -> TaskVector:
    """theta(S) at every layer, averaged over ICL prompts that end in dummy queries.

    Pass ``dummy_queries`` drawn from the task's inputs, apart from the demonstrations and the real
    queries (the paper's protocol). Without them, each of the last ``n_dummy`` demonstrations is held
    out in turn and its input becomes the dummy query of a prompt made of the other demonstrations: a
    dummy query whose answer stands in the prompt makes a much weaker task vector.

    ``single_token_answers=False`` accepts demonstrations whose answers span several tokens (for
    multi-token decoding with :meth:`TaskVector.apply`); the paper's protocol uses one-token answers.
    ``executor``: how the model is run (default: the fast executor).
    """
    demonstrations = check_demonstrations(lm, demonstrations, template, single_token=single_token_answers)
    if dummy_queries is not None:
        if isinstance(dummy_queries, str) or not dummy_queries:
            raise TaskvecError(f"dummy_queries must be a non-empty list of strings, got {dummy_queries!r}")
        prompts = [template.icl_prompt(demonstrations, q) for q in dummy_queries]
    elif len(demonstrations) < 2:
        raise TaskvecError("with a single demonstration, pass dummy_queries (inputs of the task not in the prompt)")
    else:
        held_out = range(max(0, len(demonstrations) - n_dummy), len(demonstrations))
        dummy_queries = [demonstrations[i][0] for i in held_out]
        prompts = [
            template.icl_prompt(demonstrations[:i] + demonstrations[i + 1 :], demonstrations[i][0]) for i in held_out
        ]
    executor = executor or make_executor(lm, "fast")
    vectors = TASK_VECTOR.from_prompts(executor, [prompts], range(lm.num_layers))[0]
    metadata = {
        **model_metadata(lm),
        "template": template.to_dict(),
        "demonstrations": [list(d) for d in demonstrations],
        "demonstrations_sha256": sha256_of_json([list(d) for d in demonstrations]),
        "dummy_queries": list(dummy_queries),
    }
    return TaskVector(vectors=vectors, metadata=metadata)
