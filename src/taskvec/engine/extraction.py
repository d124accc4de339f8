"""theta extraction: the last prompt token's block outputs on ICL prompts with dummy queries."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from taskvec.engine.batching import collate, encode, length_sorted_chunks
from taskvec.engine.compat import model_metadata
from taskvec.engine.forward import DEFAULT_BATCH_SIZE, check_layers, last_position_states
from taskvec.engine.shared_prefix import run_prompt_groups
from taskvec.engine.task_vector import TaskVector, sha256_of_json
from taskvec.engine.validation import check_demonstrations
from taskvec.errors import TaskvecError
from taskvec.models.loading import LoadedModel
from taskvec.prompts import DEFAULT_TEMPLATE, PromptTemplate


@torch.no_grad()
def mean_states(
    lm: LoadedModel,
    prompt_groups: Sequence[Sequence[str]],
    layers: Sequence[int] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    shared_prefix: bool = True,
) -> torch.Tensor:
    """For each group of prompts, the mean last-position block output: (groups, len(layers), H).

    With ``shared_prefix`` (prompts of a group share their demonstrations), each group's common token
    prefix runs once (:mod:`taskvec.engine.shared_prefix`); otherwise every prompt runs whole, all groups
    batched together. Either way the forward passes stop after the deepest layer.
    """
    layers = check_layers(lm, range(lm.num_layers) if layers is None else layers)
    if shared_prefix:
        out = run_prompt_groups(lm, prompt_groups, layers=layers, batch_size=batch_size)
        return group_means(out.states, out.owner, len(prompt_groups))
    flat = [p for group in prompt_groups for p in group]
    owner = torch.tensor([g for g, group in enumerate(prompt_groups) for _ in group])
    rows = encode(lm, flat)
    states: torch.Tensor | None = None
    for group in length_sorted_chunks(rows, batch_size):
        got = last_position_states(lm, collate(lm, [rows[i] for i in group]), layers)  # (L, b, H)
        if states is None:
            states = torch.empty(len(flat), len(layers), got.shape[-1])
        states[group] = got.transpose(0, 1)
    assert states is not None
    return group_means(states, owner, len(prompt_groups))


def group_means(states: torch.Tensor, owner: torch.Tensor, n_groups: int) -> torch.Tensor:
    sums = torch.zeros(n_groups, *states.shape[1:]).index_add_(0, owner, states)
    counts = torch.bincount(owner, minlength=n_groups).clamp(min=1)
    return sums / counts[:, None, None]


def extract_task_vector(
    lm: LoadedModel,
    demonstrations: Sequence[tuple[str, str]],
    dummy_queries: Sequence[str] | None = None,
    *,
    template: PromptTemplate = DEFAULT_TEMPLATE,
    n_dummy: int = 2,
    single_token_answers: bool = True,
) -> TaskVector:
    """theta(S) at every layer, averaged over ICL prompts that end in dummy queries.

    Pass ``dummy_queries`` drawn from the task's inputs, apart from the demonstrations and the real
    queries (the paper's protocol). Without them, each of the last ``n_dummy`` demonstrations is held
    out in turn and its input becomes the dummy query of a prompt made of the other demonstrations: a
    dummy query whose answer stands in the prompt makes a much weaker task vector.

    ``single_token_answers=False`` accepts demonstrations whose answers span several tokens (for
    multi-token decoding with :meth:`TaskVector.apply`); the paper's protocol uses one-token answers.
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
    vectors = mean_states(lm, [prompts])[0]
    metadata = {
        **model_metadata(lm),
        "template": template.to_dict(),
        "demonstrations": [list(d) for d in demonstrations],
        "demonstrations_sha256": sha256_of_json([list(d) for d in demonstrations]),
        "dummy_queries": list(dummy_queries),
    }
    return TaskVector(vectors=vectors, metadata=metadata)
