"""Forward passes that return only what task-vector work needs.

``next_token_logits`` computes the unembedding at the last position only; ``last_position_states``
runs the decoder blocks (no unembedding) and stops after the deepest block it needs.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Mapping, Sequence

import torch

from taskvec.engine.accounting import record
from taskvec.engine.batching import Batch, collate, encode, length_sorted_chunks
from taskvec.engine.hooks import StopForward, capture_last_position, patch_last_position
from taskvec.engine.numerics import check_finite
from taskvec.engine.vocab_argmax import argmax_and_margin, top_two_gap
from taskvec.errors import TaskvecError
from taskvec.models.loading import LoadedModel

DEFAULT_BATCH_SIZE = 32


@torch.no_grad()
def next_token_logits(lm: LoadedModel, batch: Batch, cache=None) -> torch.Tensor:
    """Logits (B, V) of the token after each row's last position, as float32 on the CPU."""
    kwargs = batch.model_inputs()
    if lm.adapter.accepts_logits_to_keep:
        kwargs["logits_to_keep"] = 1
    out = lm.model(**kwargs, **lm.adapter.cache_inputs(cache))
    record_batch(batch, blocks=lm.num_layers, logit_rows=out.logits.shape[0] * out.logits.shape[1])
    return check_finite(out.logits[:, -1, :].float().cpu(), "next-token logits", lm.dtype)


@torch.no_grad()
def last_position_states(lm: LoadedModel, batch: Batch, layers: Sequence[int]) -> torch.Tensor:
    """Block outputs at the last position, (len(layers), B, H) float32 on the CPU."""
    store: dict[int, torch.Tensor] = {}
    capture = capture_last_position(lm.adapter.layers, sorted(set(layers)), store, stop_after_last=True)
    with capture, contextlib.suppress(StopForward):
        lm.adapter.base_model(**batch.model_inputs(), use_cache=False)
    record_batch(batch, blocks=max(layers) + 1)
    return check_finite(torch.stack([store[layer].float().cpu() for layer in layers]), "hidden states", lm.dtype)


def record_batch(batch: Batch, blocks: int, logit_rows: int = 0) -> None:
    """Count a forward over ``batch``'s new columns (all of them without a cache) for the accounting."""
    new = batch.attention_mask[:, -batch.input_ids.shape[1] :]
    record(tokens=int(new.sum()), padded_tokens=new.numel(), blocks=blocks, logit_rows=logit_rows)


def check_layers(lm: LoadedModel, layers: Sequence[int]) -> list[int]:
    """The layers as plain ints, each checked to be a decoder block of this model."""
    checked = []
    for layer in layers:
        try:
            index = operator.index(layer) if not isinstance(layer, bool) else None
        except TypeError:
            index = None
        if index is None:
            raise TaskvecError(f"layer {layer!r} is not an integer; expected a layer index 0..{lm.num_layers - 1}")
        if not 0 <= index < lm.num_layers:
            raise TaskvecError(f"layer {layer!r} is out of range: this model has layers 0..{lm.num_layers - 1}")
        checked.append(index)
    return checked


def patches_for_rows(layers: Sequence[int], vectors: torch.Tensor) -> Mapping[int, tuple[torch.Tensor, torch.Tensor]]:
    """Group rows by the block they are patched at: {layer: (row indices, vectors)}."""
    by_layer: dict[int, list[int]] = {}
    for row, layer in enumerate(layers):
        by_layer.setdefault(int(layer), []).append(row)
    return {
        layer: (torch.tensor(rows, dtype=torch.long), vectors[torch.tensor(rows, dtype=torch.long)])
        for layer, rows in by_layer.items()
    }


@torch.no_grad()
def predict_token_ids(
    lm: LoadedModel,
    prompts: Sequence[str],
    *,
    patch_layers: Sequence[int] | None = None,
    patch_vectors: torch.Tensor | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    with_margins: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Greedy next token of each prompt (LongTensor, N), optionally patching row i at ``patch_layers[i]``.

    With ``with_margins`` also each prediction's margin (N,): best minus second-best logit (a lower bound).
    """
    rows = encode(lm, prompts)
    result = torch.empty(len(rows), dtype=torch.long)
    margins = torch.empty(len(rows))
    for group in length_sorted_chunks(rows, batch_size):
        batch = collate(lm, [rows[i] for i in group])
        patches = {}
        if patch_layers is not None and patch_vectors is not None:
            patches = patches_for_rows([patch_layers[i] for i in group], patch_vectors[group])
        with patch_last_position(lm.adapter.layers, patches):
            result[group], gaps = next_token_ids_and_margins(lm, batch, with_margins=with_margins)
        if with_margins:
            margins[group] = gaps
    return (result, margins) if with_margins else result


@torch.no_grad()
def next_token_ids(lm: LoadedModel, batch: Batch) -> torch.Tensor:
    """Greedy next token of each row (N,). Once the sweep has verified for this model that the argmax of
    the unembedding of the final hidden state gives its predictions (``fast_sweep_verified``), that path
    is used (no full float32 logits); otherwise the model's own logits."""
    return next_token_ids_and_margins(lm, batch)[0]


@torch.no_grad()
def next_token_ids_and_margins(
    lm: LoadedModel, batch: Batch, *, with_margins: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`next_token_ids`, and with ``with_margins`` each prediction's margin over the runner-up."""
    if not lm.adapter.fast_sweep_verified:
        logits = next_token_logits(lm, batch)
        return logits.argmax(dim=-1), top_two_gap(logits) if with_margins else None
    out = lm.adapter.base_model(**batch.model_inputs(), use_cache=False)
    hidden = check_finite(out.last_hidden_state[:, -1], "final hidden states", lm.dtype)
    record_batch(batch, blocks=lm.num_layers, logit_rows=len(batch))
    return argmax_and_margin(lm.adapter.unembedding, hidden, with_margin=with_margins)
