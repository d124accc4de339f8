"""The task vector (Hendel et al.): theta is defined here, once.

theta(S) at layer L is the output of decoder block L at the last token of ICL prompts made of the
demonstrations S and a dummy query (an input of the task apart from S and the real queries), averaged
over the set's dummy queries. It is applied by *replacing* block L's output at the last token of the bare
query prompt (``example:{x}->``) and letting the forward pass go on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from taskvec.core.interfaces import DemoSet, Executor, Predictions
from taskvec.core.sites import Replace, Site
from taskvec.prompts import PromptTemplate


def owners(groups: Sequence[Sequence[object]]) -> torch.Tensor:
    """The group index of every item, the groups flattened in order."""
    return torch.tensor([g for g, group in enumerate(groups) for _ in group], dtype=torch.long)


def group_means(states: torch.Tensor, owner: torch.Tensor, n_groups: int) -> torch.Tensor:
    """The mean of the rows of ``states`` that belong to each group: (n_groups, *states.shape[1:])."""
    sums = torch.zeros(n_groups, *states.shape[1:]).index_add_(0, owner, states)
    counts = torch.bincount(owner, minlength=n_groups).clamp(min=1)
    return sums / counts[:, None, None]


class TaskVectorMethod:
    """Demonstrations -> theta (mean last-token block output over dummy-query prompts); theta -> replace
    the block output at the last token."""

    name = "task_vector"
    acts = "last"
    operation = "replace"

    @classmethod
    def from_settings(cls, settings: dict) -> TaskVectorMethod:
        """The method that applies a saved task vector (it has no settings)."""
        return cls()

    def settings(self) -> dict:
        return {}

    def prompts(self, template: PromptTemplate, sets: Sequence[DemoSet]) -> list[list[str]]:
        """Per set, its demonstrations followed by each of its dummy queries."""
        return [[template.icl_prompt(s.demo_tuples, d) for d in s.dummies] for s in sets]

    def vectors(
        self, executor: Executor, template: PromptTemplate, sets: Sequence[DemoSet], layers: Sequence[int]
    ) -> torch.Tensor:
        """theta of each set at ``layers``: (len(sets), len(layers), H)."""
        return self.from_prompts(executor, self.prompts(template, sets), layers)

    def from_prompts(
        self, executor: Executor, groups: Sequence[Sequence[str]], layers: Sequence[int]
    ) -> torch.Tensor:
        """theta of each group of dummy-query prompts: the mean of their last-token block outputs."""
        return group_means(executor.states(groups, layers), owners(groups), len(groups))

    def vectors_and_predictions(
        self,
        executor: Executor,
        template: PromptTemplate,
        sets: Sequence[DemoSet],
        layers: Sequence[int],
        prompts: Sequence[str],
    ) -> tuple[torch.Tensor, Predictions]:
        """theta of each set, and the next token of ``prompts[i]``, a prompt with set i's demonstrations
        (regular ICL): one request, so that an executor can run each set's demonstrations once."""
        dummies = self.prompts(template, sets)
        groups = [[*d, p] for d, p in zip(dummies, prompts)]
        flags = [[False] * len(d) + [True] for d in dummies]
        states, predictions = executor.states_and_predictions(groups, layers, flags)
        return group_means(states, owners(dummies), len(sets)), predictions

    def edits(self, layer: int, vector: torch.Tensor) -> list[Replace]:
        return [Replace(Site(layer), vector)]
