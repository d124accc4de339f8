"""The layer sweep: patched predictions at every layer, reusing the query's key/value cache.

Patching changes only the last position, so the keys and values of the query prompt *without* its
last token are the same for every layer. We compute them once, then run the last token alone for
each layer: each extra layer costs one token instead of a whole prompt.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from taskvec.core.layers import best_layer
from taskvec.engine.accounting import record
from taskvec.engine.batching import Batch, chunks, collate, encode
from taskvec.engine.decoding import decode_predictions
from taskvec.engine.forward import check_layers, next_token_logits, patches_for_rows
from taskvec.engine.hooks import patch_last_position, skip_blocks
from taskvec.engine.numerics import check_finite
from taskvec.engine.patching import check_compatible, template_of
from taskvec.engine.shared_prefix import fork_cache
from taskvec.engine.task_vector import TaskVector
from taskvec.engine.validation import check_queries
from taskvec.engine.vocab_argmax import argmax_and_margin, top_two_gap
from taskvec.errors import TaskvecError
from taskvec.models.adapter import returned_cache
from taskvec.models.loading import LoadedModel
from taskvec.prompts import PromptTemplate

logger = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 256  # rows of one last-token forward


@torch.no_grad()
def sweep_token_ids(
    lm: LoadedModel,
    prompts: Sequence[str],
    vectors: torch.Tensor,
    layers: Sequence[int] | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    with_margins: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Greedy next token of prompt i with ``vectors[i, l]`` patched at block l, for each l in ``layers``.

    ``vectors`` is (N, num_layers, H). Returns (len(layers), N), and with ``with_margins`` also each
    prediction's gap between the best and second-best logit (same shape). Prompts are processed in groups of up to
    ``max_rows``; within a group the key/value cache of all tokens but the last is computed once. Then the
    last token runs for several (prompt, layer) rows per forward, adjacent layers together, so that the
    blocks below the chunk's lowest layer can be skipped (their output there is replaced by the patch).
    """
    layers = check_layers(lm, range(lm.num_layers) if layers is None else layers)
    rows = encode(lm, prompts)
    if min(len(r) for r in rows) < 2:
        raise TaskvecError("every prompt needs at least two tokens for the cached sweep")
    out = torch.empty(len(layers), len(rows), dtype=torch.long)
    margins = torch.empty(len(layers), len(rows))
    group_size = min(len(rows), max_rows)  # prompts sharing one prefix forward
    per_forward = max(1, max_rows // group_size)  # layers per last-token forward
    by_depth = sorted(range(len(layers)), key=lambda j: layers[j])
    for group in chunks(len(rows), group_size):
        batch = collate(lm, rows[group])
        prefix_cache, arity = _prefix_cache(lm, batch)
        fast = _fast_path_verified(lm, batch, prefix_cache, arity, vectors[group])
        for part in chunks(len(by_depth), per_forward):
            picked = by_depth[part]
            chunk = [layers[j] for j in picked]
            ids, gaps = _last_token_ids(lm, batch, prefix_cache, vectors[group], chunk, arity, fast, with_margins)
            out[picked, group] = ids.T  # ids, gaps: (n, k)
            if with_margins:
                margins[picked, group] = gaps.T
    return (out, margins) if with_margins else out


def _prefix_cache(lm: LoadedModel, batch: Batch):
    """Keys and values of all tokens but the last, and how a block returns its output (None: a tensor;
    n: a tuple of n items, hidden state first)."""
    arity: list[int | None] = []

    def note_arity(module, args, output):
        arity.append(len(output) if isinstance(output, tuple) else None)

    handle = lm.adapter.layers[0].register_forward_hook(note_arity)
    try:
        out = lm.adapter.base_model(
            input_ids=batch.input_ids[:, :-1],
            attention_mask=batch.attention_mask[:, :-1],
            position_ids=batch.position_ids[:, :-1],
            use_cache=True,
        )
    finally:
        handle.remove()
    record(tokens=int(batch.attention_mask[:, :-1].sum()), padded_tokens=batch.attention_mask[:, :-1].numel(),
           blocks=lm.num_layers)  # fmt: skip
    return returned_cache(out), arity[0]


def _last_token_ids(
    lm: LoadedModel,
    batch: Batch,
    prefix_cache,
    vectors: torch.Tensor,
    chunk: list[int],
    arity,
    fast: bool,
    with_margins: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Next token (n, k) of each prompt's last token with ``vectors[:, l]`` patched at each block l of
    ``chunk``: one forward over n * k rows, prompt-major. ``fast`` skips the blocks below ``min(chunk)``
    and takes the argmax over vocabulary slices instead of building full logits. Also returns the
    predictions' margins (n, k) when asked for, else None."""
    n, k = len(batch), len(chunk)
    cache = fork_cache(prefix_cache)
    if k > 1:
        cache.batch_repeat_interleave(k)
    step = Batch(
        input_ids=batch.input_ids[:, -1:].repeat_interleave(k, dim=0),
        attention_mask=batch.attention_mask.repeat_interleave(k, dim=0),
        position_ids=batch.position_ids[:, -1:].repeat_interleave(k, dim=0),
    )
    patches = patches_for_rows(chunk * n, vectors[:, chunk, :].reshape(n * k, -1))
    skipped = skip_blocks(lm.adapter.layers, min(chunk), arity) if fast else contextlib.nullcontext()
    with skipped, patch_last_position(lm.adapter.layers, patches):
        if fast:
            out = lm.adapter.base_model(**step.model_inputs(), **lm.adapter.cache_inputs(cache))
            hidden = check_finite(out.last_hidden_state[:, -1], "final hidden states", lm.dtype)
            ids, gaps = argmax_and_margin(lm.adapter.unembedding, hidden, with_margin=with_margins)
            record(tokens=n * k, padded_tokens=n * k, blocks=lm.num_layers - 1 - min(chunk), logit_rows=n * k)
        else:
            logits = next_token_logits(lm, step, cache=cache)
            ids, gaps = logits.argmax(dim=-1), top_two_gap(logits) if with_margins else None
    return ids.view(n, k), None if gaps is None else gaps.view(n, k)


def _fast_path_verified(lm: LoadedModel, batch: Batch, prefix_cache, arity, vectors: torch.Tensor) -> bool:
    """Whether the fast path (skipped lower blocks, sliced argmax) gives this model's exact predictions.

    It does for standard decoders: a skipped block's output at the patched position is overwritten and
    its keys/values there are seen by that position only, and the logits are the unembedding of the final
    hidden state up to a monotone map. Models that share keys/values across layers or post-process logits
    otherwise would fail; the check, run once per model, compares both paths and falls back if they differ.
    """
    if lm.adapter.fast_sweep_verified is None:
        chunk = [max(0, lm.num_layers - 2)]
        exact = _last_token_ids(lm, batch, prefix_cache, vectors, chunk, arity, fast=False)[0]
        fast = _last_token_ids(lm, batch, prefix_cache, vectors, chunk, arity, fast=True)[0]
        lm.adapter.fast_sweep_verified = bool(torch.equal(exact, fast))
        if not lm.adapter.fast_sweep_verified:
            logger.warning("the sweep's fast path changes this model's predictions: using full forwards")
    return lm.adapter.fast_sweep_verified


@dataclass
class SweepResult:
    """Predictions (and accuracy when answers were given) of a task vector at each layer."""

    layers: list[int]
    predictions: list[list[str]]  # [layer index][query index]
    accuracy: list[float] | None = None

    @property
    def best_layer(self) -> int | None:
        """The layer with the best accuracy, the first one on ties."""
        return None if self.accuracy is None else best_layer(self.accuracy, self.layers)


def layer_sweep(
    lm: LoadedModel,
    task_vector: TaskVector,
    queries: Sequence[str],
    answers: Sequence[str] | None = None,
    *,
    layers: Sequence[int] | None = None,
    template: PromptTemplate | None = None,
) -> SweepResult:
    """Patch ``task_vector`` at each layer into each query; score against ``answers`` (exact match)."""
    check_compatible(lm, task_vector)
    queries = check_queries(queries)
    if answers is not None and len(answers) != len(queries):
        raise TaskvecError(f"got {len(queries)} queries but {len(answers)} answers; expected one answer per query")
    template = template or template_of(task_vector)
    layers = check_layers(lm, range(lm.num_layers) if layers is None else layers)
    prompts = [template.query_prompt(q) for q in queries]
    vectors = task_vector.vectors.unsqueeze(0).expand(len(prompts), -1, -1)
    ids = sweep_token_ids(lm, prompts, vectors, layers)
    predictions = [decode_predictions(lm, row) for row in ids]
    accuracy = None
    if answers is not None:
        gold = [a.strip() for a in answers]
        accuracy = [sum(p == g for p, g in zip(row, gold)) / len(gold) for row in predictions]
    return SweepResult(layers=layers, predictions=predictions, accuracy=accuracy)
