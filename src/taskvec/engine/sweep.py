"""The cached layer sweep: patched predictions at every layer, reusing the query's key/value cache.

Patching changes only the last position, so the keys and values of the query prompt *without* its
last token are the same for every layer. We compute them once, then run the last token alone for
each layer: each extra layer costs one token instead of a whole prompt.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import torch

from taskvec.core.sites import replacements
from taskvec.engine.accounting import record
from taskvec.engine.batching import Batch, chunks, collate, encode
from taskvec.engine.forward import check_layers, next_token_logits
from taskvec.engine.hooks import skip_blocks
from taskvec.engine.interventions import intervene
from taskvec.engine.numerics import check_finite
from taskvec.engine.shared_prefix import all_but_last_cache, last_token_rows
from taskvec.engine.shortcuts import Shortcuts
from taskvec.engine.vocab_argmax import argmax_and_margin
from taskvec.errors import TaskvecError
from taskvec.models.loading import LoadedModel

logger = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 256  # rows of one last-token forward


@torch.no_grad()
def sweep_token_ids(
    lm: LoadedModel,
    prompts: Sequence[str],
    vectors: torch.Tensor,
    layers: Sequence[int] | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    *,
    shortcuts: Shortcuts | None = None,
) -> torch.Tensor:
    """Greedy next token of prompt i with its block output at l replaced by ``vectors[i, l]`` at the last
    position, for each l in ``layers``: (len(layers), N).

    ``vectors`` is (N, num_layers, H). Prompts are processed in groups of up to ``max_rows``; within a group
    the key/value cache of all tokens but the last is computed once. Then the last token runs for several
    (prompt, layer) rows per forward, adjacent layers together, so that the blocks below the chunk's lowest
    layer can be skipped (their output there is replaced anyway) once ``shortcuts`` (checked on the first
    group when not yet; a fresh :class:`Shortcuts` when None) says it is exact for this model.
    """
    shortcuts = shortcuts if shortcuts is not None else Shortcuts()
    layers = check_layers(lm, range(lm.num_layers) if layers is None else layers)
    rows = encode(lm, prompts)
    if min(len(r) for r in rows) < 2:
        raise TaskvecError("every prompt needs at least two tokens for the cached sweep")
    out = torch.empty(len(layers), len(rows), dtype=torch.long)
    group_size = min(len(rows), max_rows)  # prompts sharing one prefix forward
    per_forward = max(1, max_rows // group_size)  # layers per last-token forward
    by_depth = sorted(range(len(layers)), key=lambda j: layers[j])
    for group in chunks(len(rows), group_size):
        batch = collate(lm, rows[group])
        prefix_cache, arity = all_but_last_cache(lm, batch)
        fast = _fast_path_verified(lm, batch, prefix_cache, arity, vectors[group], shortcuts)
        for part in chunks(len(by_depth), per_forward):
            picked = by_depth[part]
            chunk = [layers[j] for j in picked]
            ids = _last_token_ids(lm, batch, prefix_cache, vectors[group], chunk, arity, fast, shortcuts)
            out[picked, group] = ids.T  # ids: (n, k)
    return out


def _last_token_ids(
    lm: LoadedModel,
    batch: Batch,
    prefix_cache,
    vectors: torch.Tensor,
    chunk: list[int],
    arity,
    fast: bool,
    shortcuts: Shortcuts | None = None,
) -> torch.Tensor:
    """Next token (n, k) of each prompt's last token with ``vectors[:, l]`` replacing block l's output, for
    each l of ``chunk``: one forward over n * k rows, prompt-major. ``fast`` skips the blocks below
    ``min(chunk)`` and takes the argmax over a vocabulary shortlist instead of building full logits."""
    n, k = len(batch), len(chunk)
    step, cache = last_token_rows(batch, prefix_cache, k)
    edits = replacements(chunk * n, vectors[:, chunk, :].reshape(n * k, -1))
    skipped = skip_blocks(lm.adapter.layers, min(chunk), arity) if fast else contextlib.nullcontext()
    with skipped, intervene(lm.adapter, edits):
        if fast:
            out = lm.adapter.base_model(**step.model_inputs(), **lm.adapter.cache_inputs(cache))
            hidden = check_finite(out.last_hidden_state[:, -1], "final hidden states", lm.dtype)
            ids = argmax_and_margin(lm.adapter.unembedding, hidden, cache=shortcuts.cache if shortcuts else None)[0]
            record(tokens=n * k, padded_tokens=n * k, blocks=lm.num_layers - 1 - min(chunk), logit_rows=n * k)
        else:
            ids = next_token_logits(lm, step, cache=cache).argmax(dim=-1)
    return ids.view(n, k)


def _fast_path_verified(
    lm: LoadedModel, batch: Batch, prefix_cache, arity, vectors: torch.Tensor, shortcuts: Shortcuts
) -> bool:
    """Whether the fast path (skipped lower blocks, shortlist argmax) gives this model's exact predictions.

    It does for standard decoders: a skipped block's output at the patched position is overwritten and
    its keys/values there are seen by that position only, and the logits are the unembedding of the final
    hidden state up to a monotone map. Models that share keys/values across layers or post-process logits
    otherwise would fail; the check, run once per :class:`Shortcuts`, compares both paths and falls back if
    they differ (then neither shortcut is used for this model); when they agree, both are.
    """
    if shortcuts.skip_blocks is None:
        chunk = [max(0, lm.num_layers - 2)]
        exact = _last_token_ids(lm, batch, prefix_cache, vectors, chunk, arity, fast=False)
        fast = _last_token_ids(lm, batch, prefix_cache, vectors, chunk, arity, fast=True, shortcuts=shortcuts)
        shortcuts.skip_blocks = bool(torch.equal(exact, fast))
        if not shortcuts.skip_blocks:
            logger.warning("the sweep's fast path changes this model's predictions: using full forwards")
        shortcuts.shortlist = shortcuts.skip_blocks  # the check covered the shortlist too
    return shortcuts.skip_blocks
