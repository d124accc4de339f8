"""Mean difference (the steering-vector baseline) as a method: defined here, once.

The vector of a demonstration set at each layer is a mean of differences of last-token block outputs
(:mod:`taskvec.core.methods.differences`): ``pairs`` (h(answer) - h(input) over the demonstrations: the
In-Context Vector's differences, averaged instead of reduced by PCA) or ``icl_shift`` (h(ICL prompt) - h(bare
query prompt) over the dummy queries). It is applied by *adding* ``scale`` times it to the block output at
each layer of a range (default: all) and every position, prompt and generated tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from taskvec.core.interfaces import DemoSet, Executor
from taskvec.core.methods.differences import icl_shifts, pair_differences
from taskvec.core.methods.every_layer import EveryPositionMethod
from taskvec.core.sites import ALL, Add, Site
from taskvec.prompts import PromptTemplate

DIFFERENCES = ("pairs", "icl_shift")


class MeanDifferenceMethod(EveryPositionMethod):
    """Demonstrations -> the mean difference at each layer; vector -> add ``scale`` times it at every position."""

    name = "mean_difference"
    operation = "add"
    differences = "pairs"
    #: The setting chosen on dev (the strength of the edit).
    strength_setting = "scale"
    what = "mean-difference scale"
    #: The default scale at every layer (the dev search's usual choice there for the ICL shift on gemma-3-270m).
    default_strength = 0.1

    def __init__(
        self, scale: float = default_strength, layers: Sequence[int] | None = None, position: int | str = ALL
    ) -> None:
        self.scale = self._configure(scale, layers, position)

    def settings(self) -> dict:
        return {**super().settings(), "differences": self.differences}

    def vectors(
        self, executor: Executor, template: PromptTemplate, sets: Sequence[DemoSet], layers: Sequence[int]
    ) -> torch.Tensor:
        """The mean difference of each set at ``layers``: (len(sets), len(layers), H)."""
        if self.differences == "pairs":
            return pair_differences(executor, sets, layers).mean(1)
        return icl_shifts(executor, template, sets, layers).mean(1)

    def edits(self, layer: int, vector: torch.Tensor) -> list[Add]:
        return [Add(Site(layer, self.position), self.scale * vector)]


class IclShiftMethod(MeanDifferenceMethod):
    """The mean difference of the ICL shift: h(ICL prompt) - h(bare query prompt) over the dummy queries."""

    name = "icl_shift"
    differences = "icl_shift"
