"""Choosing a function vector's layer, k and scale on dev queries (first best, like the task vector's layer).

Every (layer, k, scale) of the grid is scored on the same dev queries. Adding a vector changes only
the last position, so each dev prompt's key/value cache of all tokens but the last is computed once;
the last token then runs for many (prompt, configuration) rows per forward, each row adding its own
vector at its own block.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import nn

from taskvec.core.decoding import decode_predictions
from taskvec.engine.batching import Batch, chunks, collate, encode
from taskvec.engine.forward import check_layers, next_token_logits
from taskvec.engine.prompts import PromptTemplate
from taskvec.engine.shared_prefix import last_token_rows
from taskvec.engine.validation import check_queries
from taskvec.errors import TaskvecError
from taskvec.heads.attribution import HeadAttribution
from taskvec.heads.function_vector import FunctionVector, accuracy, function_vector
from taskvec.heads.hooks import add_to_block_output
from taskvec.heads.last_token import DEFAULT_MAX_ROWS, lower_blocks_skipped, prefix_cache, unpatched_last_token
from taskvec.models.loading import LoadedModel

logger = logging.getLogger(__name__)

#: Whether skipping the lower blocks gives this model's exact tokens (checked once per model).
_SKIP_VERIFIED: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()

DEFAULT_KS = (1, 2, 5, 10)
DEFAULT_SCALES = (0.5, 1.0, 2.0, 4.0)


@torch.no_grad()
def added_vector_token_ids(
    lm: LoadedModel,
    prompts: Sequence[str],
    variants: Sequence[tuple[int, torch.Tensor]],
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    skip_lower: bool = True,
) -> torch.Tensor:
    """Greedy next token (len(variants), P) of each prompt with ``vector`` added to block ``layer``'s output
    at the last position, for each ``(layer, vector)`` of ``variants``; cached prefix per prompt group.
    ``skip_lower``: a forward runs only the blocks from its lowest layer up, the blocks below giving their
    unpatched outputs (checked once per model against full forwards, as head attribution does)."""
    rows = encode(lm, prompts)
    if min(len(r) for r in rows) < 2:
        raise TaskvecError("every prompt needs at least two tokens for the cached last-token forward")
    out = torch.empty(len(variants), len(rows), dtype=torch.long)
    order = sorted(range(len(variants)), key=lambda v: variants[v][0])  # by layer: forwards skip more
    group_size = max(1, min(len(rows), max_rows // 2))
    for group in chunks(len(rows), group_size):
        batch = collate(lm, rows[group])
        cache = prefix_cache(lm, batch)
        _, states, arity = unpatched_last_token(lm, batch, cache, torch.zeros(len(batch), dtype=torch.long))
        per_forward = max(1, max_rows // len(batch))
        for part in chunks(len(order), per_forward):
            picked = order[part]
            chosen = [variants[v] for v in picked]
            skip = skip_lower and _skip_ok(lm, batch, cache, chosen, states, arity)
            out[torch.tensor(picked)[:, None], torch.arange(len(rows))[group][None, :]] = _last_token_ids(
                lm, batch, cache, chosen, states if skip else None, arity
            ).T
    return out


def _last_token_ids(lm: LoadedModel, batch: Batch, cache, chosen, states, arity) -> torch.Tensor:
    """(n, k) next token of each prompt under each chosen (layer, vector), prompt-major rows. With ``states``
    (n, L, H), the blocks below the lowest chosen layer are skipped (their outputs restored from ``states``)."""
    n, k = len(batch), len(chosen)
    step, own = last_token_rows(batch, cache, k)
    hidden = chosen[0][1].shape[-1]
    additions: dict[int, torch.Tensor] = {}
    for c, (layer, vector) in enumerate(chosen):
        rows = torch.arange(n) * k + c
        additions.setdefault(layer, torch.zeros(n * k, hidden))[rows] = vector.float()
    low = min(layer for layer, _ in chosen)
    with lower_blocks_skipped(lm, states, low, k, arity), add_to_block_output(lm.adapter.layers, additions):
        logits = next_token_logits(lm, step, cache=own)
    return logits.argmax(-1).view(n, k)


def _skip_ok(lm: LoadedModel, batch: Batch, cache, chosen, states, arity) -> bool:
    """Whether skipping lower blocks gives the full forwards' tokens on this model (checked once)."""
    if lm.model in _SKIP_VERIFIED:
        return _SKIP_VERIFIED[lm.model]
    if min(layer for layer, _ in chosen) == 0:
        return False  # nothing to skip here: check on a later chunk
    ok = torch.equal(_last_token_ids(lm, batch, cache, chosen, None, arity),
                     _last_token_ids(lm, batch, cache, chosen, states, arity))  # fmt: skip
    _SKIP_VERIFIED[lm.model] = ok
    if not ok:
        logger.warning("skipping unchanged lower blocks changes this model's predictions: using full forwards")
    return ok


def select_function_vector(
    lm: LoadedModel,
    attribution: HeadAttribution,
    template: PromptTemplate,
    dev_queries: Sequence[str],
    dev_answers: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    scales: Sequence[float] = DEFAULT_SCALES,
    aie: torch.Tensor | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    scorer: Callable[[Sequence[str]], float] | None = None,
    refine_layers: int | None = None,
) -> FunctionVector:
    """The function vector whose (layer, k, scale) has the best dev accuracy; ties go to the first in
    (layer, k, scale) order, lowest first. All scores are kept in ``selection``. ``scorer``: the dev accuracy
    of a list of predictions (default: exact match with ``dev_answers``; a task passes its own rule).

    ``refine_layers=n``: a coarse-to-fine search instead of the full grid. Every layer is scored with every k
    at the middle scale, then the ``n`` best layers with every (k, scale); the best of all scored
    configurations wins (the same tie rule). Far fewer forwards (e.g. 120 instead of 288 configurations on an
    18-layer model with 4 ks and 4 scales, n=3), at the risk of missing a layer whose best scale is far from
    the middle one."""
    dev_queries = check_queries(dev_queries)
    if len(dev_answers) != len(dev_queries):
        raise TaskvecError(f"got {len(dev_queries)} dev queries but {len(dev_answers)} answers; expected one "
                           "answer per query")  # fmt: skip
    layers = check_layers(lm, range(lm.num_layers) if layers is None else layers)
    n_heads = int((~torch.isnan(attribution.aie if aie is None else aie)).sum())
    ks, scales = sorted({min(int(k), n_heads) for k in ks}), sorted({float(s) for s in scales})
    if not layers or not ks or not scales:
        raise TaskvecError(f"layers={layers}, ks={ks}, scales={scales}; expected at least one value each")
    fvs = {k: function_vector(lm, attribution, k, template, aie=aie) for k in ks}
    prompts = [template.query_prompt(q) for q in dev_queries]
    score = scorer or (lambda predictions: accuracy(predictions, dev_answers))
    scored: dict[tuple[int, int, float], float] = {}

    def evaluate(configs: list[tuple[int, int, float]]) -> None:
        configs = [c for c in configs if c not in scored]
        if configs:
            variants = [(layer, s * fvs[k].vector) for layer, k, s in configs]
            ids = added_vector_token_ids(lm, prompts, variants, max_rows=max_rows)
            scored.update({c: score(decode_predictions(lm, row)) for c, row in zip(configs, ids)})

    if refine_layers:
        middle = scales[len(scales) // 2]
        evaluate([(layer, k, middle) for layer in layers for k in ks])
        per_layer = {layer: max(scored[(layer, k, middle)] for k in ks) for layer in layers}
        chosen = sorted(layers, key=lambda layer: (-per_layer[layer], layer))[:refine_layers]
        evaluate([(layer, k, s) for layer in sorted(chosen) for k in ks for s in scales])
    else:
        evaluate([(layer, k, s) for layer in layers for k in ks for s in scales])
    grid = sorted(scored)
    scores = [scored[c] for c in grid]
    best = max(range(len(grid)), key=lambda i: (scores[i], -i))
    layer, k, scale = grid[best]
    logger.info("function vector chosen on %d dev queries: layer %d, k %d, scale %g (dev accuracy %.3f)",
                len(dev_queries), layer, k, scale, scores[best])  # fmt: skip
    if scores[best] == 0:
        logger.warning("no function-vector configuration answered any dev query: the first one (layer %d, k %d, "
                       "scale %g) is kept, but this task has no working function vector here",
                       layer, k, scale)  # fmt: skip
    table = {"grid": [{"layer": g[0], "k": g[1], "scale": g[2], "dev_accuracy": a} for g, a in zip(grid, scores)],
             "best_dev_accuracy": scores[best], "none_worked": scores[best] == 0,
             "search": f"refine {refine_layers}" if refine_layers else "full"}  # fmt: skip
    return replace(fvs[k], layer=layer, scale=scale, selection=table)
