"""Last-token forwards on a cached prefix: p(gold) with single heads patched, many (prompt, head) rows at once.

Patching changes only the last position, so each prompt's key/value cache of all tokens but the last is
computed once. The unpatched last token runs first (its p(gold) and its block outputs are kept); then
rows patched at heads of layers >= l0 skip blocks 0..l0-1, whose output at the last position is the
unpatched one, by passing the input through those blocks and restoring the kept block output at l0-1
(as the layer sweep's fast path does). Checked once per model against full last-token forwards.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Sequence

import torch
from torch import nn

from taskvec.core.sites import replacements
from taskvec.engine.accounting import record
from taskvec.engine.batching import Batch, chunks, collate, encode
from taskvec.engine.forward import next_token_logits
from taskvec.engine.hooks import capture_last_position, skip_blocks
from taskvec.engine.interventions import intervene
from taskvec.engine.shared_prefix import fork_cache, last_token_rows
from taskvec.errors import TaskvecError
from taskvec.heads.hooks import HeadPatch, patch_heads
from taskvec.models.adapter import returned_cache
from taskvec.models.head_sites import HeadSite, head_sites
from taskvec.models.loading import LoadedModel

logger = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 128  # rows of one last-token forward
#: Whether skipping the unpatched lower blocks gives this model's exact probabilities (checked once).
_SKIP_VERIFIED: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def prefix_cache(lm: LoadedModel, batch: Batch):
    """Keys and values of every row's tokens but the last."""
    out = lm.adapter.base_model(
        input_ids=batch.input_ids[:, :-1],
        attention_mask=batch.attention_mask[:, :-1],
        position_ids=batch.position_ids[:, :-1],
        use_cache=True,
    )
    record(tokens=int(batch.attention_mask[:, :-1].sum()), padded_tokens=batch.attention_mask[:, :-1].numel(),
           blocks=lm.num_layers)  # fmt: skip
    return returned_cache(out)


@torch.no_grad()
def patched_gold_probabilities(
    lm: LoadedModel,
    prompts: Sequence[str],
    gold: torch.Tensor,
    heads: Sequence[tuple[int, int]],
    values: torch.Tensor,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    skip_lower: bool = True,
) -> torch.Tensor:
    """p(gold[i]) after prompt i, unpatched (column 0) and with head ``heads[c]`` set to ``values[l, j]`` at
    the last token (column c + 1): (P, 1 + len(heads)). ``skip_lower``: rows run only the blocks from the
    lowest patched layer of their forward up (when verified for this model)."""
    sites = head_sites(lm)
    rows = encode(lm, prompts)
    if min(len(r) for r in rows) < 2:
        raise TaskvecError("every prompt needs at least two tokens for the cached last-token forward")
    out = torch.empty(len(rows), 1 + len(heads))
    order = sorted(range(len(heads)), key=lambda c: heads[c][0])  # by layer: chunks skip more
    group_size = max(1, min(len(rows), max_rows // 2))
    for group in chunks(len(rows), group_size):
        batch = collate(lm, rows[group])
        cache = prefix_cache(lm, batch)
        base, states, arity = unpatched_last_token(lm, batch, cache, gold[group])
        out[group, 0] = base
        per_forward = max(1, max_rows // len(batch))
        for part in chunks(len(order), per_forward):
            picked = order[part]
            chosen = [heads[c] for c in picked]
            skip = skip_lower and _skip_ok(lm, sites, batch, cache, chosen, values, gold[group], states, arity)
            probs = _patched(lm, sites, batch, cache, chosen, values, gold[group], states if skip else None, arity)
            out[group, torch.tensor(picked) + 1] = probs
    return out


def unpatched_last_token(lm: LoadedModel, batch: Batch, cache, gold: torch.Tensor):
    """p(gold) of each row's last token, its block outputs there (n, L, H), and how blocks return (arity)."""
    arity: list[int | None] = []
    handle = lm.adapter.layers[0].register_forward_hook(
        lambda m, a, o: arity.append(len(o) if isinstance(o, tuple) else None)
    )
    store: dict[int, torch.Tensor] = {}
    step = Batch(batch.input_ids[:, -1:], batch.attention_mask, batch.position_ids[:, -1:])
    try:
        with capture_last_position(lm.adapter.layers, list(range(lm.num_layers)), store):
            logits = next_token_logits(lm, step, cache=fork_cache(cache))
    finally:
        handle.remove()
    states = torch.stack([store[i] for i in range(lm.num_layers)], dim=1)
    return _gold_probability(logits, gold), states, arity[0]


def _gold_probability(logits: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, dim=-1).gather(1, gold.unsqueeze(1)).exp().squeeze(1)


def _patched(lm, sites: list[HeadSite], batch: Batch, cache, chosen, values, gold, states, arity) -> torch.Tensor:
    """(n, k) p(gold) for each of the n prompts with each of the k chosen heads patched, prompt-major rows.
    With ``states`` (n, L, H), blocks below the lowest chosen layer are skipped."""
    n, k = len(batch), len(chosen)
    step, own = last_token_rows(batch, cache, k)
    patches = [HeadPatch(row=i * k + c, layer=h[0], head=h[1], value=values[h[0], h[1]])
               for i in range(n) for c, h in enumerate(chosen)]  # fmt: skip
    with lower_blocks_skipped(lm, states, min(h[0] for h in chosen), k, arity), patch_heads(sites, patches):
        logits = next_token_logits(lm, step, cache=own)
    return _gold_probability(logits, gold.repeat_interleave(k)).view(n, k)


def lower_blocks_skipped(lm: LoadedModel, states: torch.Tensor | None, low: int, k: int, arity: int | None):
    """For last-token rows (k per prompt, prompt-major) whose edits all sit at block ``low`` or above: blocks
    below ``low`` pass their input through and block ``low - 1``'s output is restored from the unpatched
    ``states`` (n, L, H). A no-op without ``states`` or when ``low`` is 0."""
    stack = contextlib.ExitStack()
    if states is not None and low > 0:
        kept = states[:, low - 1].repeat_interleave(k, dim=0)
        stack.enter_context(skip_blocks(lm.adapter.layers, low - 1, arity))
        stack.enter_context(intervene(lm.adapter.layers, replacements([low - 1] * len(kept), kept)))
    return stack


def _skip_ok(lm, sites, batch, cache, chosen, values, gold, states, arity) -> bool:
    """Whether skipping lower blocks gives the full forwards' probabilities on this model (checked once,
    on the first chunk that would skip)."""
    if lm.model in _SKIP_VERIFIED:
        return _SKIP_VERIFIED[lm.model]
    if min(h[0] for h in chosen) == 0:
        return False  # nothing to skip here: check on a later chunk
    full = _patched(lm, sites, batch, cache, chosen, values, gold, None, arity)
    fast = _patched(lm, sites, batch, cache, chosen, values, gold, states, arity)
    ok = bool(torch.allclose(full, fast, rtol=1e-4, atol=1e-6))
    _SKIP_VERIFIED[lm.model] = ok
    if not ok:
        logger.warning("skipping unpatched lower blocks changes this model's probabilities: using full forwards")
    return ok
