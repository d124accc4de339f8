"""Function vectors (Todd et al. 2024): the top-k heads' mean outputs, projected to the residual and summed.

v = Σ_(li,j) ∈ top-k W_O,lj · ā_lj, where W_O,lj is head j's block of layer li's output projection (no bias).
It is applied by *adding* ``scale * v`` to the output of one decoder block at the last position.

Families with a norm between the attention output and the residual add (gemma2/gemma3, found by
:mod:`taskvec.models.head_sites`): what reaches the residual stream is N(a), not a. An RMS norm divides by
rms(a), so a head's share of the residual is about ``g * (W_O,lj ā_lj) / rms(a_l)``: the norm's gain, with
its scale frozen at the layer's typical attention output (the mean rms of a_l at the last token of the
clean prompts). Without it the terms are 100-1000x too small on gemma-3-270m. The norm module itself
computes the gain (:func:`taskvec.models.head_sites.frozen_norm`), and it is checked to be RMS-type.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from taskvec.core.decoding import decode_predictions
from taskvec.core.interfaces import Executor
from taskvec.core.methods.function_vector import FunctionVectorMethod
from taskvec.core.sites import Add, Site
from taskvec.engine.forward import check_layers
from taskvec.engine.validation import check_queries
from taskvec.errors import TaskvecError
from taskvec.heads.attribution import HeadAttribution, top_heads
from taskvec.models.head_sites import head_sites
from taskvec.models.loading import LoadedModel
from taskvec.prompts import PromptTemplate

logger = logging.getLogger(__name__)


@dataclass
class FunctionVector:
    """A function vector and how it was made (and, once chosen, where and how strongly it is added)."""

    vector: torch.Tensor  # (H,) float32
    heads: list[tuple[int, int]]  # (layer, head), best AIE first
    aie: torch.Tensor  # (L, n_heads) the AIE table the heads were chosen by
    template: PromptTemplate
    norm_corrected: bool  # whether post-attention norms were folded in (see the module docstring)
    layer: int | None = None  # block whose output it is added to
    scale: float = 1.0
    selection: dict = field(default_factory=dict)  # dev accuracy per (layer, k, scale), when chosen on dev

    @property
    def k(self) -> int:
        return len(self.heads)

    @property
    def head_layers(self) -> list[int]:
        return sorted({li for li, _ in self.heads})

    def to_dict(self) -> dict:
        return {
            "k": self.k,
            "heads": [list(h) for h in self.heads],
            "head_layers": self.head_layers,
            "layer": self.layer,
            "scale": self.scale,
            "norm": float(self.vector.norm()),
            "norm_corrected": self.norm_corrected,
            "template": self.template.to_dict(),
            "selection": self.selection,
        }


def function_vector(
    lm: LoadedModel,
    attribution: HeadAttribution,
    k: int,
    template: PromptTemplate,
    *,
    aie: torch.Tensor | None = None,
    layer: int | None = None,
    scale: float = 1.0,
) -> FunctionVector:
    """The function vector of the top-``k`` heads by ``aie`` (default: this task's own AIE table; pass
    :func:`taskvec.heads.attribution.average_aie` of several tasks for a universal head set), from the heads'
    clean means by :class:`~taskvec.core.methods.function_vector.FunctionVectorMethod` (where it is defined)."""
    table = attribution.aie if aie is None else aie
    heads = top_heads(table, k)
    means = attribution.mean_outputs
    method = FunctionVectorMethod(heads, means.attention_rms)
    vector = method.from_means(lm, torch.stack([means.means[li, j] for li, j in heads])[None])[0]
    corrected = any(head_sites(lm)[li].post_norm is not None for li, _ in heads)
    if layer is not None:
        layer = check_layers(lm, [layer])[0]
    return FunctionVector(vector, heads, table.clone(), template, corrected, layer, float(scale))


def random_like(fv: FunctionVector, seed: int = 0) -> FunctionVector:
    """A control: a random direction with the same norm, applied the same way."""
    return replace(fv, vector=random_same_norm(fv.vector[None], seed)[0])


def random_same_norm(vectors: torch.Tensor, seed: int) -> torch.Tensor:
    """Random directions (seeded) with the norms of the rows of ``vectors`` (N, H): the random-vector control
    of every method."""
    gen = torch.Generator().manual_seed(seed)
    directions = torch.randn(vectors.shape, generator=gen)
    return directions * (vectors.norm(dim=-1, keepdim=True) / directions.norm(dim=-1, keepdim=True))


def apply_function_vector(
    executor: Executor,
    fv: FunctionVector,
    queries: Sequence[str],
    layer: int | None = None,
    scale: float | None = None,
) -> list[str]:
    """Greedy first-token answers of the bare query prompts with ``scale * fv.vector`` added to the output
    of block ``layer`` at the last position (defaults: the vector's own layer and scale)."""
    queries = check_queries(queries)
    layer = fv.layer if layer is None else layer
    if layer is None:
        raise TaskvecError("no layer given and the function vector has none; expected a block index")
    layer = check_layers(executor.lm, [layer])[0]
    scale = fv.scale if scale is None else float(scale)
    edits = [[Add(Site(layer), scale * fv.vector)]] * len(queries)
    ids = executor.predict([fv.template.query_prompt(q) for q in queries], edits, short=True).ids
    return decode_predictions(executor.lm, ids)


def accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Exact match of cleaned first-token predictions against stripped answers."""
    if len(predictions) != len(answers):
        raise TaskvecError(f"got {len(predictions)} predictions but {len(answers)} answers; expected one each")
    return sum(p == a.strip() for p, a in zip(predictions, answers)) / len(answers)
