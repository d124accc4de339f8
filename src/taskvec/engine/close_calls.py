"""Close calls of a mixed-precision run, recomputed in float32.

With ``dtype="mixed"`` (:mod:`taskvec.models.precision`) the decoder blocks multiply in bfloat16, which
moves logits by a few hundredths. A prediction can only differ from the float32 one when its best and
second-best logits are that close, so every prediction whose gap is below a threshold is recomputed with
float32 products, from scratch: a patched prediction gets a float32 theta too (its set's dummy-query
prompts rerun in float32). Predictions with a wide gap keep their mixed-precision answer.

The threshold is empirical: on gemma-3-270m every prediction that mixed precision changed had a gap
below 0.07 logits (bench/bench_run.py measures the agreement of the whole run). The main experiment
rechecks its test predictions (task vector, regular ICL, baseline), not the dev layer sweep.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from taskvec.engine.forward import predict_token_ids
from taskvec.engine.vocab_argmax import MARGIN_RESOLUTION
from taskvec.errors import TaskvecError
from taskvec.models.loading import LoadedModel
from taskvec.models.precision import exact_products

logger = logging.getLogger(__name__)

DEFAULT_RECHECK_MARGIN = 0.1

# theta in float32 of the given sets at the given layers: (len(sets), len(layers), H)
ThetaFn = Callable[[list[int], list[int]], torch.Tensor]


def check_recheck_margin(value: float) -> float:
    if not 0 <= value <= MARGIN_RESOLUTION:
        raise TaskvecError(
            f"recheck margin {value!r} is out of range: expected 0..{MARGIN_RESOLUTION} logits "
            f"(predictions whose top-two logit gap is below it are recomputed in float32)"
        )
    return float(value)


@dataclass
class Rechecked:
    """Which predictions were close calls recomputed in float32, and how many of them changed."""

    mask: torch.Tensor
    changed: int

    def summary(self) -> dict[str, int]:
        return {"rechecked": int(self.mask.sum()), "changed": self.changed}


def close(margins: torch.Tensor, threshold: float) -> torch.Tensor:
    """Which predictions are close calls (a nan margin, no prediction, is not)."""
    return margins < threshold


def recheck_plain(
    lm: LoadedModel,
    parts: Sequence[tuple[Sequence[str], torch.Tensor, torch.Tensor]],
    threshold: float,
    batch_size: int,
) -> list[Rechecked]:
    """Recompute the close calls among unpatched predictions in float32, in place. ``parts`` are
    (prompts, ids (N,), margins (N,)) triples: prompts of one kind (e.g. ICL, or bare queries), each part
    batched on its own so that long and short prompts do not pad each other."""
    done = []
    for prompts, ids, margins in parts:
        mask = close(margins, threshold)
        index = mask.nonzero()[:, 0].tolist()
        before = ids[mask].clone()
        if index:
            with exact_products(lm.model):
                ids[index] = predict_token_ids(lm, [prompts[i] for i in index], batch_size=batch_size)
        done.append(Rechecked(mask, int((ids[mask] != before).sum())))
    return done


def recheck_patched(
    lm: LoadedModel,
    prompts: Sequence[str],
    ids: torch.Tensor,
    margins: torch.Tensor,
    layers: Sequence[int],
    theta: ThetaFn,
    threshold: float,
    batch_size: int,
) -> Rechecked:
    """Recompute the close calls among patched predictions in float32, in place, theta included.

    ``ids`` and ``margins`` are (len(layers), N): prompt i patched at ``layers[j]`` with its own set's
    theta. Sets with a close call get a float32 theta (up to their deepest close call's layer).
    """
    mask = close(margins, threshold)
    rows, cols = mask.nonzero(as_tuple=True)
    if len(rows) == 0:
        return Rechecked(mask, 0)
    before = ids[rows, cols].clone()
    sets = sorted(set(cols.tolist()))
    deepest = max(layers[j] for j in rows.tolist())
    wanted = sorted({layer for layer in layers if layer <= deepest})
    with exact_products(lm.model):
        vectors = theta(sets, wanted)  # (len(sets), len(wanted), H)
        where_set = {s: k for k, s in enumerate(sets)}
        where_layer = {layer: k for k, layer in enumerate(wanted)}
        patch_layers = [layers[j] for j in rows.tolist()]
        patch_vectors = torch.stack(
            [vectors[where_set[i], where_layer[layers[j]]] for j, i in zip(rows.tolist(), cols.tolist())]
        )
        ids[rows, cols] = predict_token_ids(
            lm, [prompts[i] for i in cols.tolist()], patch_layers=patch_layers, patch_vectors=patch_vectors,
            batch_size=batch_size,
        )  # fmt: skip
    changed = int((ids[rows, cols] != before).sum())
    logger.debug("rechecked %d close calls in float32 (%d sets), %d changed", len(rows), len(sets), changed)
    return Rechecked(mask, changed)
