"""Differences of hidden states that every-position methods are made of (In-Context Vectors, mean difference).

- *pairs* (In-Context Vectors, Liu et al. 2024; steering vectors): for each demonstration, the block outputs at
  the last token of the answer alone minus those of the input alone (each text run by itself, as the ICV
  authors do: no template), at every layer;
- *ICL shift*: the block outputs at the last token of the ICL prompt (demonstrations + a dummy query) minus
  those of the bare dummy query prompt, one per dummy query: what the demonstrations change where the task
  vector is read.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from taskvec.core.interfaces import DemoSet, Executor
from taskvec.prompts import PromptTemplate


def pair_differences(executor: Executor, sets: Sequence[DemoSet], layers: Sequence[int]) -> torch.Tensor:
    """h(answer) - h(input) of every demonstration of every set: (len(sets), shots, len(layers), H)."""
    groups = [[x.strip() for x, _ in s.demo_tuples] + [y.strip() for _, y in s.demo_tuples] for s in sets]
    states = executor.states(groups, layers)  # (sets * 2 * shots, L, H), in group order
    shots = len(sets[0].demo_tuples) if sets else 0
    if any(len(s.demo_tuples) != shots for s in sets):
        raise ValueError("every demonstration set must have the same number of demonstrations")
    per_set = states.reshape(len(sets), 2, shots, *states.shape[1:])
    return per_set[:, 1] - per_set[:, 0]


def icl_shifts(
    executor: Executor, template: PromptTemplate, sets: Sequence[DemoSet], layers: Sequence[int]
) -> torch.Tensor:
    """h(ICL prompt ending in a dummy query) - h(bare dummy query prompt) of every dummy query of every set:
    (len(sets), dummies, len(layers), H)."""
    dummies = len(sets[0].dummies) if sets else 0
    if any(len(s.dummies) != dummies for s in sets):
        raise ValueError("every demonstration set must have the same number of dummy queries")
    icl = executor.states([[template.icl_prompt(s.demo_tuples, d) for d in s.dummies] for s in sets], layers)
    bare = executor.states([[template.query_prompt(d) for d in s.dummies] for s in sets], layers)
    return (icl - bare).reshape(len(sets), dummies, *icl.shape[1:])
