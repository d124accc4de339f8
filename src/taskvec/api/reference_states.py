"""Bare-query reference states of a vector file: the last-token block outputs of the task's own query prompts.

A llama.cpp control vector can only add one fixed vector per block at every position, so two methods need a
typical state of the model to be written as one approximately (``taskvec export --approximate``):

- a task vector *replaces* block L's output h at the last prompt token by theta; the add that does this for a
  typical query is ``theta - mean(h)``, the mean taken over the bare query prompts (template and inputs recorded
  in the file: its dev inputs and dummy queries, else its demonstrations' inputs);
- an In-Context Vector *steers* each state and restores its norm; to first order that is ``strength x |h| x``
  the unit vector, with ``|h|`` the mean norm of the states at that layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from taskvec.api.compat import VectorsWithMetadata, check_compatible
from taskvec.api.extraction import mean_states
from taskvec.api.patching import template_of
from taskvec.engine.forward import DEFAULT_BATCH_SIZE
from taskvec.errors import TaskvecError
from taskvec.models.loading import LoadedModel


@dataclass(frozen=True)
class ReferenceStates:
    """Per layer: the mean last-token block output of the bare query prompts, and the mean of its norm."""

    mean: torch.Tensor  # (num_layers, H) float32
    norm: torch.Tensor  # (num_layers,) float32
    n_prompts: int


def query_inputs(task_vector: VectorsWithMetadata) -> list[str]:
    """The query inputs recorded in the file: dev inputs and dummy queries (in that order, without repeats), else
    the demonstrations' inputs."""
    meta = task_vector.metadata
    found = [*_strings(meta.get("dev_inputs")), *_strings(meta.get("dummy_queries"))]
    if not found:
        found = [str(d[0]) for s in meta.get("demonstration_sets") or [meta.get("demonstrations") or []]
                 for d in s if isinstance(d, (list, tuple)) and d]  # fmt: skip
    if not found:
        raise TaskvecError("the vector file records no query inputs (dev inputs, dummy queries or demonstrations); "
                           "expected a file written by `taskvec extract` or TaskVector.save with demonstrations")
    return list(dict.fromkeys(found))


def _strings(value) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def reference_states(
    lm: LoadedModel, task_vector: VectorsWithMetadata, *, batch_size: int = DEFAULT_BATCH_SIZE
) -> ReferenceStates:
    """The :class:`ReferenceStates` of ``task_vector``'s bare query prompts on ``lm`` (which must fit the file)."""
    check_compatible(lm, task_vector)
    template = template_of(task_vector)
    prompts = [template.query_prompt(x) for x in query_inputs(task_vector)]
    states = mean_states(lm, [[p] for p in prompts], batch_size=batch_size, shared_prefix=False)  # (N, L, H)
    states = states.float()
    return ReferenceStates(states.mean(0), states.norm(dim=-1).mean(0), len(prompts))
