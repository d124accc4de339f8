"""Forward passes that return only what task-vector work needs.

``next_token_logits`` computes the unembedding at the last position only; ``last_position_states``
runs the decoder blocks (no unembedding) and stops after the deepest block it needs.
"""

from __future__ import annotations

import contextlib
import logging
import operator
from collections.abc import Iterator, Sequence

import torch

from taskvec.core.sites import Edit, replacements
from taskvec.engine.accounting import record
from taskvec.engine.batching import Batch, collate, encode, length_sorted_chunks
from taskvec.engine.hooks import StopForward, capture_last_position
from taskvec.engine.interventions import intervene
from taskvec.engine.numerics import check_finite
from taskvec.engine.shortcuts import Shortcuts
from taskvec.engine.vocab_argmax import argmax_and_margin, top_two_gap
from taskvec.errors import TaskvecError
from taskvec.models.loading import LoadedModel

logger = logging.getLogger(__name__)

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


@torch.no_grad()
def prompt_states(lm: LoadedModel, prompts: Sequence[str], layers: Sequence[int], batch_size: int) -> torch.Tensor:
    """Block outputs at the last position of each prompt run whole, (N, len(layers), H) float32: prompts of
    similar length batched together, each forward stopping after the deepest of ``layers``."""
    rows = encode(lm, prompts)
    states = torch.empty(len(rows), len(layers), lm.model.config.get_text_config().hidden_size)
    for group in length_sorted_chunks(rows, batch_size):
        states[group] = last_position_states(lm, collate(lm, [rows[i] for i in group]), layers).transpose(0, 1)
    return states


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


def edited_batches(
    lm: LoadedModel, prompts: Sequence[str], edits: Sequence[Edit | None] | None, batch_size: int
) -> Iterator[tuple[list[int], Batch, Sequence[Edit | None]]]:
    """Prompts of similar length batched together: (their indices, the batch, their edits)."""
    rows = encode(lm, prompts)
    for group in length_sorted_chunks(rows, batch_size):
        yield group, collate(lm, [rows[i] for i in group]), [edits[i] for i in group] if edits is not None else ()


@torch.no_grad()
def predict_ids(
    lm: LoadedModel,
    prompts: Sequence[str],
    edits: Sequence[Edit | None] | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    with_margins: bool = False,
    shortcuts: Shortcuts | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Greedy next token of each prompt (LongTensor, N), ``edits[i]`` applied to prompt i, and with
    ``with_margins`` each prediction's margin (N,): best minus second-best logit (a lower bound), else None.

    Without ``shortcuts`` the model's own logits decide; with them, the vocabulary shortlist once it is
    verified for this model (on the first batch, against the logits)."""
    result = torch.empty(len(prompts), dtype=torch.long)
    margins = torch.empty(len(prompts)) if with_margins else None
    for group, batch, own in edited_batches(lm, prompts, edits, batch_size):
        with intervene(lm.adapter, own):
            result[group], gaps = next_token_ids_and_margins(lm, batch, with_margins=with_margins, shortcuts=shortcuts)
        if margins is not None:
            margins[group] = gaps
    return result, margins


def predict_token_ids(
    lm: LoadedModel,
    prompts: Sequence[str],
    *,
    patch_layers: Sequence[int] | None = None,
    patch_vectors: torch.Tensor | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> torch.Tensor:
    """Greedy next token of each prompt by the model's own logits, row i's block output at
    ``patch_layers[i]`` replaced by ``patch_vectors[i]`` at the last position when given."""
    edits = None
    if patch_layers is not None and patch_vectors is not None:
        edits = replacements(check_layers(lm, patch_layers), patch_vectors)
    return predict_ids(lm, prompts, edits, batch_size=batch_size)[0]


@torch.no_grad()
def next_token_ids_and_margins(
    lm: LoadedModel, batch: Batch, *, with_margins: bool = False, shortcuts: Shortcuts | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Greedy next token of each row (N,), and with ``with_margins`` its margin over the runner-up.

    With ``shortcuts`` whose vocabulary shortlist is verified, the argmax of the unembedding of the final
    hidden state (no full float32 logits); not yet checked, both ways on this batch, and the check kept."""
    if shortcuts is None or shortcuts.shortlist is False:
        return _by_logits(lm, batch, with_margins)
    if shortcuts.shortlist is None:
        exact = _by_logits(lm, batch, with_margins)
        shortcuts.shortlist = bool(torch.equal(exact[0], _by_shortlist(lm, batch, False, shortcuts)[0]))
        if not shortcuts.shortlist:
            logger.warning("the vocabulary shortlist changes this model's predictions: using full logits")
        return exact
    return _by_shortlist(lm, batch, with_margins, shortcuts)


def _by_logits(lm: LoadedModel, batch: Batch, with_margins: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    logits = next_token_logits(lm, batch)
    return logits.argmax(dim=-1), top_two_gap(logits) if with_margins else None


def _by_shortlist(
    lm: LoadedModel, batch: Batch, with_margins: bool, shortcuts: Shortcuts
) -> tuple[torch.Tensor, torch.Tensor | None]:
    out = lm.adapter.base_model(**batch.model_inputs(), use_cache=False)
    hidden = check_finite(out.last_hidden_state[:, -1], "final hidden states", lm.dtype)
    record_batch(batch, blocks=lm.num_layers, logit_rows=len(batch))
    return argmax_and_margin(lm.adapter.unembedding, hidden, with_margin=with_margins, cache=shortcuts.cache)
