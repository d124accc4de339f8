"""The function vector (Todd et al. 2024) as a method: defined here, once.

Given a head set (chosen by head attribution, :mod:`taskvec.heads.attribution`), the function vector of a
demonstration set is the sum over those heads of their mean last-token output on the set's ICL prompts (its
demonstrations followed by each dummy query, as for the task vector), each pushed through its head's block
of the attention output projection (and the post-attention norm where the family has one, frozen at the
layer's typical scale: :func:`taskvec.models.head_sites.project_heads`). It is applied by *adding*
``scale`` times the vector to block L's output at the last token of the bare query prompt.

The vector does not depend on the layer it is added at: :meth:`FunctionVectorMethod.vectors` repeats it
along the layer axis so that it fits the same sweep and edit interface as the task vector.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from taskvec.core.interfaces import DemoSet, Executor
from taskvec.core.methods.task_vector import group_means, owners
from taskvec.core.sites import Add, Site
from taskvec.errors import TaskvecError
from taskvec.models.head_sites import project_heads
from taskvec.models.loading import LoadedModel
from taskvec.prompts import PromptTemplate


class FunctionVectorMethod:
    """Demonstrations -> the chosen heads' mean outputs, projected and summed; vector -> add ``scale`` times
    it to the block output at the last token."""

    name = "function_vector"
    acts = "last"
    operation = "add"

    def __init__(
        self, heads: Sequence[tuple[int, int]] = (), attention_rms: torch.Tensor | None = None, scale: float = 1.0
    ) -> None:
        """``heads``: (layer, head) pairs; ``attention_rms``: (num_layers,) typical attention-output rms on
        clean prompts (used only by families with a post-attention norm). Without heads the method can only
        apply a vector (e.g. one read from a file), not make one."""
        self.heads = [(int(li), int(j)) for li, j in heads]
        self.attention_rms = None if attention_rms is None else attention_rms.float()
        self.scale = float(scale)

    @classmethod
    def from_settings(cls, settings: dict) -> FunctionVectorMethod:
        """The method that applies a saved function vector: files store the vector with its scale applied."""
        return cls(scale=float(settings.get("applied_scale", 1.0)))

    def settings(self) -> dict:
        return {"applied_scale": self.scale}

    def prompts(self, template: PromptTemplate, sets: Sequence[DemoSet]) -> list[list[str]]:
        """Per set, its demonstrations followed by each of its dummy queries."""
        return [[template.icl_prompt(s.demo_tuples, d) for d in s.dummies] for s in sets]

    def vectors(
        self, executor: Executor, template: PromptTemplate, sets: Sequence[DemoSet], layers: Sequence[int]
    ) -> torch.Tensor:
        """The function vector of each set, repeated for every layer of ``layers``: (len(sets), len(layers), H)."""
        groups = self.prompts(template, sets)
        per_set = self.from_prompts(executor, groups)
        return per_set[:, None, :].expand(len(groups), len(layers), per_set.shape[-1]).clone()

    def from_prompts(self, executor: Executor, groups: Sequence[Sequence[str]]) -> torch.Tensor:
        """The function vector (len(groups), H) of each group of ICL prompts (means over the group)."""
        if not self.heads or self.attention_rms is None:
            raise TaskvecError("a function vector needs at least one (layer, head) and the attention rms to be made")
        sites = [Site(li, head=j) for li, j in self.heads]
        read = executor.read([p for group in groups for p in group], sites)
        values = torch.stack([read[site] for site in sites], dim=1)  # (N, k, head_dim)
        return self.from_means(executor.lm, group_means(values, owners(groups), len(groups)))

    def from_means(self, lm: LoadedModel, means: torch.Tensor) -> torch.Tensor:
        """The function vector (S, H) of the heads' mean outputs ``means`` (S, k, head_dim): each through its
        head's block of the output projection (and the frozen post-attention norm), summed over heads."""
        if not self.heads or self.attention_rms is None:
            raise TaskvecError("a function vector needs at least one (layer, head) and the attention rms to be made")
        return project_heads(lm, means, self.heads, self.attention_rms).sum(1)

    def edits(self, layer: int, vector: torch.Tensor) -> list[Add]:
        return [Add(Site(layer), self.scale * vector)]
