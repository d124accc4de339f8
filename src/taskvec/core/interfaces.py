"""The two interfaces everything else is written against: a method and an executor.

- A :class:`Method` turns demonstration sets into vectors (one per set and layer) and says how a vector
  is applied (an :data:`~taskvec.core.sites.Edit`). What the method computes is defined there, once.
- An :class:`Executor` runs prompts through the model: it reads block outputs (and any site), predicts next
  tokens and scores given ones (with edits applied), sweeps a vector over layers and generates. How fast
  it does so is its business: :class:`taskvec.runtime.plain.PlainExecutor` runs every prompt whole (the reference);
  :class:`taskvec.runtime.fast.FastExecutor` shares prefixes, caches the sweep, shortlists the vocabulary
  and, with mixed precision, recomputes close calls exactly. Both give the same float32 predictions.

An experiment is written against these two only: it never sees precision, margins or prefix sharing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from taskvec.core.decoding import DEFAULT_STOP, StopRule
from taskvec.core.sites import Edit, RowEdits, Site, Variant
from taskvec.models.loading import LoadedModel
from taskvec.prompts import PromptTemplate


class DemoSet(Protocol):
    """Demonstrations and the dummy queries that end the prompts a vector is extracted from."""

    @property
    def demo_tuples(self) -> list[tuple[str, str]]: ...

    @property
    def dummies(self) -> tuple[str, ...]: ...


@dataclass
class Rechecked:
    """Which predictions were close calls recomputed exactly, and how many of them changed."""

    mask: torch.Tensor
    changed: int

    def summary(self) -> dict[str, int]:
        return {"rechecked": int(self.mask.sum()), "changed": self.changed}


@dataclass
class Predictions:
    """The greedy next token of each prompt (N,), and which were close calls recomputed exactly (None
    when the executor recomputed none: float32, or the plain executor)."""

    ids: torch.Tensor
    rechecked: Rechecked | None = None


@dataclass(frozen=True)
class Made:
    """Where the vectors of some edits came from: edit i is ``method``'s vector of ``sets[i]`` (in
    ``template``) at the edit's layer. An executor that recomputes a close call exactly makes it again."""

    method: Method
    template: PromptTemplate
    sets: Sequence[DemoSet]


class Executor(Protocol):
    """Runs prompts through one model. ``batch_size`` is the number of ICL prompts per forward."""

    lm: LoadedModel
    batch_size: int

    def with_batch_size(self, batch_size: int) -> Executor:
        """The same executor (what it learned about the model included) with another batch size."""
        ...

    def states(self, groups: Sequence[Sequence[str]], layers: Sequence[int]) -> torch.Tensor:
        """Block outputs at the last position of every prompt, (N, len(layers), H) float32, in group order.
        Prompts of one group share their demonstrations (an executor may run their common prefix once)."""
        ...

    def states_and_predictions(
        self, groups: Sequence[Sequence[str]], layers: Sequence[int], predict: Sequence[Sequence[bool]]
    ) -> tuple[torch.Tensor, Predictions]:
        """Block outputs (as :meth:`states`) of the prompts not flagged in ``predict``, and the next token of
        the flagged ones, both in group order."""
        ...

    def predict(
        self, prompts: Sequence[str], edits: Sequence[RowEdits] | None = None, *, short: bool = False,
        made: Made | None = None,
    ) -> Predictions:
        """Greedy next token of each prompt, ``edits[i]`` (an edit, several, or None) applied to prompt i.
        ``short``: bare query prompts
        (several times shorter than ICL prompts). ``made``: where the edits' vectors came from."""
        ...

    def sweep(
        self, prompts: Sequence[str], vectors: torch.Tensor, layers: Sequence[int], method: Method
    ) -> torch.Tensor:
        """Next token (len(layers), N) of prompt i with ``method``'s edits of ``vectors[i, l]`` at each ``l`` of
        ``layers``; ``vectors``: (N, num_layers, H)."""
        ...

    def read(
        self, prompts: Sequence[str], sites: Sequence[Site], edits: Sequence[RowEdits] | None = None
    ) -> dict[Site, torch.Tensor]:
        """The value at each site (block or head output) of each prompt, ``edits[i]`` applied: {site: (N, D)}."""
        ...

    def logprobs(
        self, prompts: Sequence[str], token_ids: Sequence[int], edits: Sequence[RowEdits] | None = None
    ) -> torch.Tensor:
        """Log-probability (N,) of ``token_ids[i]`` as prompt i's next token, ``edits[i]`` applied."""
        ...

    def last_token(self, prompts: Sequence[str], variants: Sequence[Variant], *, gold: Sequence[int] | None = None):
        """Many variants of edits at the last token of every prompt: next token (V, N) of prompt n under variant
        v, and with ``gold`` log p(gold[n]) (V, N) (a ``LastTokenResults``). A variant is the same edits for
        every prompt, or a :class:`~taskvec.core.sites.PerPrompt` with one entry per prompt. An executor may run
        each prompt's tokens but the last once for all variants."""
        ...

    def generate(
        self, prompts: Sequence[str], max_new_tokens: int, edits: Sequence[RowEdits] | None = None,
        stop: StopRule = DEFAULT_STOP,
    ) -> list[str]:
        """Greedy answers (decoded, cut by ``stop``), ``edits[i]`` applied to prompt i at the positions their
        sites name (prompt positions once, generated positions at each new token)."""
        ...


#: Where a method's vector acts: at one layer chosen on dev, at the last prompt token (``"last"``), or at
#: each layer of a range, at every position (``"every"``).
ACTS = ("last", "every")


class Method(Protocol):
    """A way to compress demonstrations into vectors and to apply a vector."""

    name: str
    #: ``"last"`` or ``"every"`` (:data:`ACTS`).
    acts: str
    #: How its edits change a value: ``replace``, ``add`` or ``steer``.
    operation: str

    def vectors(
        self, executor: Executor, template: PromptTemplate, sets: Sequence[DemoSet], layers: Sequence[int]
    ) -> torch.Tensor:
        """One vector per set and layer: (len(sets), len(layers), H)."""
        ...

    def edits(self, layer: int, vector: torch.Tensor) -> list[Edit]:
        """How ``vector`` (hidden size) is applied at ``layer``: the edits of one layer. A method that acts at
        every layer of a range applies the concatenation of its edits over those layers
        (:func:`taskvec.core.methods.edits_at`)."""
        ...

    def settings(self) -> dict:
        """What a vector file records to apply the vector again (besides the vectors): e.g. the scale."""
        ...
