"""The plain executor: every prompt run whole, next tokens from the model's own logits.

No prefix sharing, no cached sweep, no vocabulary shortlist, no rechecks, and no key/value cache in
generation (each token from a forward over the whole sequence, with the same edits): the reference that the
fast executor is tested against (identical float32 predictions).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from taskvec.core.interfaces import Executor, Made, Method, Predictions
from taskvec.core.sites import RowEdits
from taskvec.engine.forward import check_layers, predict_ids, prompt_states
from taskvec.runtime.base import ExecutorBase


class PlainExecutor(ExecutorBase):
    """Straightforward forwards over whole prompts."""

    reruns_generation = True

    def with_batch_size(self, batch_size: int) -> Executor:
        return PlainExecutor(self.lm, batch_size)

    def states(self, groups: Sequence[Sequence[str]], layers: Sequence[int]) -> torch.Tensor:
        layers = check_layers(self.lm, layers)
        return prompt_states(self.lm, [p for group in groups for p in group], layers, self.batch_size)

    def states_and_predictions(
        self, groups: Sequence[Sequence[str]], layers: Sequence[int], predict: Sequence[Sequence[bool]]
    ) -> tuple[torch.Tensor, Predictions]:
        flagged = [(p, bool(f)) for group, flags in zip(groups, predict) for p, f in zip(group, flags)]
        read = [p for p, f in flagged if not f]
        return self.states([read], layers), self.predict([p for p, f in flagged if f])

    def predict(
        self, prompts: Sequence[str], edits: Sequence[RowEdits] | None = None, *, short: bool = False,
        made: Made | None = None,
    ) -> Predictions:
        self.check_edits(prompts, edits)
        return Predictions(predict_ids(self.lm, prompts, edits, batch_size=self.rows(short))[0])

    def sweep(
        self, prompts: Sequence[str], vectors: torch.Tensor, layers: Sequence[int], method: Method
    ) -> torch.Tensor:
        """One full forward per prompt and layer."""
        layers = self.check_sweep(prompts, vectors, layers)
        return self.sweep_by_forwards(prompts, vectors, layers, method)
