"""In-Context Vectors (Liu, Ye, Xing, Zou, ICML 2024) as a method: defined here, once.

The vector of a demonstration set: for each demonstration, the differences h(answer) - h(input) of the
last-token block outputs at every layer (:func:`taskvec.core.methods.differences.pair_differences`),
concatenated over the layers; over the demonstrations, a centered PCA, and the vector is the first principal
direction (signed as scikit-learn's ``svd_flip`` signs it) plus the mean difference, as the authors' code
returns it, cut back into one vector per layer. With a single demonstration there is no direction to find:
the mean difference is the vector.

Applied (:class:`taskvec.core.sites.Steer`) at every layer of a range (default: all) and every position
(prompt and generated tokens): each token's state, normalized, plus ``strength`` times the layer's unit vector
(up to twice as much where the state points against it), normalized again and brought back to the token's
own norm. ``strength`` is the authors' lambda, chosen on dev.

Departures from the authors' code (docs/methods.md): the edit is made on the block output (the residual
stream), not on the MLP output inside the block, so that it is a vector "added after block N", the way
llama.cpp control vectors act; the embedding output is not part of the PCA (only block outputs are read);
the texts are not stripped of punctuation; the BOS-less families get the same text before the input as
every prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from taskvec.core.interfaces import DemoSet, Executor
from taskvec.core.methods.differences import pair_differences
from taskvec.core.methods.every_layer import EveryPositionMethod
from taskvec.core.sites import ALL, Site, Steer
from taskvec.prompts import PromptTemplate


def first_direction_plus_mean(differences: torch.Tensor) -> torch.Tensor:
    """(n, D) differences -> the first principal direction of the centered rows (unit norm, signed so that
    the row with the largest absolute score projects positively) plus the mean row: (D,)."""
    mean = differences.mean(0)
    if differences.shape[0] < 2:
        return mean
    centered = differences - mean
    u, _, vh = torch.linalg.svd(centered.double(), full_matrices=False)
    sign = torch.sign(u[u[:, 0].abs().argmax(), 0])
    component = (vh[0] * (sign if sign != 0 else 1.0)).to(differences.dtype)
    return component + mean


class InContextVectorMethod(EveryPositionMethod):
    """Demonstrations -> the ICV of each layer; vector -> steer every token's state at each layer."""

    name = "in_context_vector"
    operation = "steer"
    #: The setting chosen on dev (the strength of the edit).
    strength_setting = "strength"
    what = "ICV strength"
    #: The default strength: what the dev search chose most often at every layer on gemma-3-270m (the authors'
    #: 0.1 at every block output turns that model's answers into noise).
    default_strength = 0.01

    def __init__(
        self, strength: float = default_strength, layers: Sequence[int] | None = None, position: int | str = ALL
    ) -> None:
        self.strength = self._configure(strength, layers, position)

    def scaled_settings(self, alpha: float) -> dict:
        """The settings of ``alpha`` times the vector: the edit uses the vector's direction only, so its
        strength is what scales."""
        return {**self.settings(), "strength": self.strength * alpha}

    def vectors(
        self, executor: Executor, template: PromptTemplate, sets: Sequence[DemoSet], layers: Sequence[int]
    ) -> torch.Tensor:
        """The ICV of each set at ``layers``: (len(sets), len(layers), H); the PCA runs over all layers."""
        every = list(range(executor.lm.num_layers))
        diffs = pair_differences(executor, sets, every)  # (S, shots, L, H)
        flat = diffs.flatten(2)
        per_set = torch.stack([first_direction_plus_mean(d) for d in flat]).reshape(diffs.shape[0], *diffs.shape[2:])
        return per_set[:, [every.index(layer) for layer in layers]]

    def edits(self, layer: int, vector: torch.Tensor) -> list[Steer]:
        return [Steer(Site(layer, self.position), vector, self.strength)]
