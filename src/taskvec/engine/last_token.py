"""Many edit variants at the last token of each prompt, on a cached prefix: the fast executor's ``last_token``.

Head attribution (one variant per head: its last-token output replaced by its clean mean, scored by the gold
token's log-probability) and a function vector's dev grid (one variant per (layer, k, scale): a vector added to
a block output at the last token, scored by the argmax) both ask the same question: the next token of each
prompt under many variants whose edits all sit at the prompt's last token. Everything before the last token is
the same under every variant, so:

- the key/value cache of every token but the last is computed once per group of prompts, and one unedited
  last-token forward keeps every block's output there (and answers the variants with no edit);
- the last token then runs for many (prompt, variant) rows per forward, variants sorted by their lowest edited
  layer ``low``; the blocks below ``low - 1`` are skipped (they pass their input through) and block ``low - 1``'s
  output is restored from the unedited forward, so a forward costs the blocks from ``low`` up;
- without a gold token the next token comes from the vocabulary shortlist (:mod:`taskvec.engine.vocab_argmax`).

Both shortcuts are checked against full last-token forwards the first time they are used with a
:class:`~taskvec.engine.shortcuts.Shortcuts` (kept by the executor, never on the model), and not used when they
differ. The plain executor answers the same question with one whole-prompt forward per (prompt, variant): the
reference this is tested against.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from taskvec.core.sites import RowEdits, Variant, replacements, variant_edits, variant_rows
from taskvec.engine.accounting import record
from taskvec.engine.batching import Batch, chunks, collate, encode
from taskvec.engine.forward import next_token_logits
from taskvec.engine.hooks import capture_last_position, skip_blocks
from taskvec.engine.interventions import intervene
from taskvec.engine.numerics import check_finite
from taskvec.engine.shared_prefix import all_but_last_cache, fork_cache, last_token_rows
from taskvec.engine.shortcuts import Shortcuts
from taskvec.engine.vocab_argmax import argmax_and_margin, top_two_gap
from taskvec.errors import TaskvecError
from taskvec.models.head_sites import adapter_head_sites
from taskvec.models.loading import LoadedModel

logger = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 128  # (prompt, variant) rows of one last-token forward


@dataclass
class LastTokenResults:
    """Per variant and prompt: the greedy next token, and the gold token's log-probability when asked."""

    ids: torch.Tensor  # (V, N) long
    logprobs: torch.Tensor | None  # (V, N) float32
    margins: torch.Tensor | None = None  # (V, N) best minus second-best logit (a lower bound), when asked for


def last_token_only(variants: Sequence[Variant]) -> bool:
    """Whether every edit of every variant sits at the last prompt token (what the cached path computes)."""
    return all(e.site.position == -1 for v in variants for e in variant_edits(v))


def lowest_layer(variant: Variant, num_layers: int) -> int:
    """The lowest layer a variant edits, for any prompt (``num_layers`` for a variant without edits)."""
    return min((e.site.layer for e in variant_edits(variant)), default=num_layers)


@torch.no_grad()
def last_token_variants(
    lm: LoadedModel,
    prompts: Sequence[str],
    variants: Sequence[Variant],
    *,
    gold: Sequence[int] | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    shortcuts: Shortcuts | None = None,
    with_margins: bool = False,
) -> LastTokenResults:
    """Next token of each prompt under each variant (edits at the last token only), on a cached prefix; with
    ``gold``, also log p(gold[n]) (from full logits); with ``with_margins``, how close each call was.
    ``shortcuts``: where the skip and shortlist checks are kept (a fresh one when None)."""
    if not last_token_only(variants):
        raise TaskvecError("every edit of a last-token variant must sit at the last prompt token (position -1)")
    shortcuts = shortcuts if shortcuts is not None else Shortcuts()
    if any(e.site.head is not None for v in variants for e in variant_edits(v)):
        adapter_head_sites(lm.adapter)  # found before any hook is in place (the skipped forwards nest two blocks)
    rows = encode(lm, prompts)
    per_prompt = [variant_rows(v, len(rows)) for v in variants]
    if min(len(r) for r in rows) < 2:
        raise TaskvecError("every prompt needs at least two tokens for the cached last-token forward")
    gold_ids = None if gold is None else torch.as_tensor(list(gold), dtype=torch.long)
    ids = torch.empty(len(variants), len(rows), dtype=torch.long)
    logprobs = None if gold_ids is None else torch.empty(len(variants), len(rows))
    margins = torch.empty(len(variants), len(rows)) if with_margins else None
    lows = [lowest_layer(v, lm.num_layers) for v in variants]
    unedited = [v for v in range(len(variants)) if lows[v] == lm.num_layers]
    edited = sorted((v for v in range(len(variants)) if lows[v] < lm.num_layers), key=lambda v: lows[v])
    group_size = max(1, min(len(rows), max_rows // 2))
    for group in chunks(len(rows), group_size):
        batch = collate(lm, rows[group])
        cache, arity = all_but_last_cache(lm, batch)
        own_gold = None if gold_ids is None else gold_ids[group]
        base_ids, base_lp, base_margins, states = _unedited(lm, batch, cache, own_gold, with_margins)
        for v in unedited:
            ids[v, group] = base_ids
            if logprobs is not None:
                logprobs[v, group] = base_lp
            if margins is not None:
                margins[v, group] = base_margins
        per_forward = max(1, max_rows // len(batch))
        for part in chunks(len(edited), per_forward):
            picked = edited[part]
            chosen = [[per_prompt[v][i] for i in range(len(rows))[group]] for v in picked]
            run = _Rows(lm, batch, cache, chosen, states, arity, own_gold, shortcuts, with_margins)
            fast = _shortcuts_ok(run, shortcuts)
            got_ids, got_lp, got_margins = run.forward(fast)
            where = torch.tensor(picked)[:, None], torch.arange(len(rows))[group][None, :]
            ids[where] = got_ids.T
            if logprobs is not None:
                logprobs[where] = got_lp.T
            if margins is not None:
                margins[where] = got_margins.T
    return LastTokenResults(ids, logprobs, margins)


def _unedited(lm: LoadedModel, batch: Batch, cache, gold: torch.Tensor | None, with_margins: bool):
    """The unedited last token: its next token, log p(gold) (or None), its margin (or None), and its block
    outputs (n, L, H)."""
    store: dict[int, torch.Tensor] = {}
    step = Batch(batch.input_ids[:, -1:], batch.attention_mask, batch.position_ids[:, -1:])
    with capture_last_position(lm.adapter.layers, list(range(lm.num_layers)), store):
        logits = next_token_logits(lm, step, cache=fork_cache(cache))
    states = torch.stack([store[i] for i in range(lm.num_layers)], dim=1)
    margins = top_two_gap(logits.float()) if with_margins else None
    return logits.argmax(-1), _gold_logprob(logits, gold), margins, states


def _gold_logprob(logits: torch.Tensor, gold: torch.Tensor | None) -> torch.Tensor | None:
    if gold is None:
        return None
    return torch.log_softmax(logits.float(), dim=-1).gather(1, gold.to(logits.device).unsqueeze(1)).squeeze(1).cpu()


@dataclass
class _Rows:
    """One last-token forward: every prompt of ``batch`` under each of ``chosen`` variants, prompt-major
    (``chosen[c][i]``: variant c's edits for prompt i of the batch)."""

    lm: LoadedModel
    batch: Batch
    cache: object
    chosen: list[list[RowEdits]]
    states: torch.Tensor  # (n, L, H) unedited block outputs at the last token
    arity: int | None
    gold: torch.Tensor | None
    shortcuts: Shortcuts
    with_margins: bool = False

    @property
    def low(self) -> int:
        return min(lowest_layer(row, self.lm.num_layers) for v in self.chosen for row in v)

    def forward(self, fast: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(n, k) next tokens, (n, k) log p(gold) or None, (n, k) margins or None; ``fast``: skip the blocks
        below ``low - 1`` (restoring block ``low - 1``'s output) and, without gold, take the argmax over the
        shortlist."""
        lm, n, k = self.lm, len(self.batch), len(self.chosen)
        step, own = last_token_rows(self.batch, self.cache, k)
        edits = [self.chosen[c][i] for i in range(n) for c in range(k)]
        with self._skipped(fast), intervene(lm.adapter, edits):
            if fast and self.gold is None and self.shortcuts.shortlist is not False:
                out = lm.adapter.base_model(**step.model_inputs(), **lm.adapter.cache_inputs(own))
                hidden = check_finite(out.last_hidden_state[:, -1], "final hidden states", lm.dtype)
                ids, margins = argmax_and_margin(lm.adapter.unembedding, hidden, with_margin=self.with_margins,
                                                 cache=self.shortcuts.cache)  # fmt: skip
                record(tokens=n * k, padded_tokens=n * k, blocks=lm.num_layers - self.low, logit_rows=n * k)
                return ids.view(n, k), None, None if margins is None else margins.view(n, k)
            logits = next_token_logits(lm, step, cache=own)
        gold = None if self.gold is None else self.gold.repeat_interleave(k)
        lp = _gold_logprob(logits, gold)
        margins = top_two_gap(logits.float()).view(n, k) if self.with_margins else None
        return logits.argmax(-1).view(n, k), None if lp is None else lp.view(n, k), margins

    def _skipped(self, fast: bool):
        stack = contextlib.ExitStack()
        low, k = self.low, len(self.chosen)
        if fast and low > 0:
            kept = self.states[:, low - 1].repeat_interleave(k, dim=0)
            stack.enter_context(skip_blocks(self.lm.adapter.layers, low - 1, self.arity))
            stack.enter_context(intervene(self.lm.adapter.layers, replacements([low - 1] * len(kept), kept)))
        return stack


def _shortcuts_ok(run: _Rows, shortcuts: Shortcuts) -> bool:
    """Whether skipping lower blocks (and the shortlist) gives the full forwards' answers on this model: checked
    once per :class:`Shortcuts`, on the first forward that would skip."""
    if shortcuts.last_token is not None:
        return shortcuts.last_token
    if run.low == 0:
        return False  # nothing to skip here: check on a later forward
    full_ids, full_lp, _ = run.forward(False)
    fast_ids, fast_lp, _ = run.forward(True)
    ok = bool(torch.equal(full_ids, fast_ids))
    if full_lp is not None and fast_lp is not None:
        ok = ok and bool(torch.allclose(full_lp, fast_lp, rtol=1e-4, atol=1e-5))
    shortcuts.last_token = ok
    if not ok:
        logger.warning("skipping unedited lower blocks changes this model's last-token answers: using full forwards")
    return ok
