"""Reading a forward pass rather than predicting from it: values at sites, log-probabilities of given
tokens. What methods beyond the task vector need (e.g. function vectors: head outputs, and how much a
patched head raises the probability of the answer)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from taskvec.core.sites import Edit, Read, Site
from taskvec.engine.forward import (
    DEFAULT_BATCH_SIZE,
    check_layers,
    edited_batches,
    next_token_logits,
    record_batch,
)
from taskvec.engine.hooks import StopForward, capture_last_position
from taskvec.engine.interventions import intervene
from taskvec.engine.numerics import check_finite
from taskvec.errors import TaskvecError
from taskvec.models.loading import LoadedModel

BATCH = DEFAULT_BATCH_SIZE
RowEdits = Sequence[Edit | None] | None  # one entry per prompt, or None for no edits


@torch.no_grad()
def read_sites(
    lm: LoadedModel, prompts: Sequence[str], sites: Sequence[Site], edits: RowEdits = None, *, batch_size: int = BATCH
) -> dict[Site, torch.Tensor]:
    """The value at each site (a block output or a head's output, at the site's position) of each prompt run
    whole with ``edits[i]`` applied: ``{site: (N, D)}`` float32 on the CPU. Forwards stop after the deepest
    block a site is in."""
    if not sites:
        raise TaskvecError("no sites to read")
    check_layers(lm, [s.layer for s in sites])
    deepest = max(s.layer for s in sites)
    found: dict[Site, torch.Tensor] = {}
    for group, batch, own in edited_batches(lm, prompts, edits, batch_size):
        store: dict[Site, torch.Tensor] = {}
        stop = capture_last_position(lm.adapter.layers, [deepest], {}, stop_after_last=True)
        with intervene(lm.adapter, own, [Read(s) for s in sites], store), stop, contextlib.suppress(StopForward):
            lm.adapter.base_model(**batch.model_inputs(), use_cache=False)
        record_batch(batch, blocks=deepest + 1)
        for site in sites:
            value = check_finite(store[site].float().cpu(), "read values", lm.dtype)
            found.setdefault(site, torch.empty(len(prompts), value.shape[-1]))[group] = value
    return found


@torch.no_grad()
def next_token_logprobs(
    lm: LoadedModel, prompts: Sequence[str], tokens: Sequence[int], edits: RowEdits = None, *, batch_size: int = BATCH
) -> torch.Tensor:
    """Log-probability (N,) of ``tokens[i]`` (a token id) as the next token of prompt i, ``edits[i]`` applied."""
    wanted = torch.as_tensor(list(tokens), dtype=torch.long)
    out = torch.empty(len(prompts))
    for group, batch, own in edited_batches(lm, prompts, edits, batch_size):
        with intervene(lm.adapter, own):
            logits = next_token_logits(lm, batch)
        out[group] = logits.log_softmax(dim=-1).gather(1, wanted[group][:, None])[:, 0]
    return out
