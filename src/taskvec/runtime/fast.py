"""The fast executor: the same predictions as the plain one, with less work.

- prompts of a group (a set's dummy-query prompts and its ICL prompt) run their common demonstrations
  once (:mod:`taskvec.engine.shared_prefix`);
- the layer sweep reuses each query's key/value cache and skips the blocks below a replaced output
  (:mod:`taskvec.engine.sweep`), and next tokens come from a vocabulary shortlist
  (:mod:`taskvec.engine.vocab_argmax`); both shortcuts are checked on this model the first time they are
  needed, and what was learned (and the bfloat16 copy of the unembedding) is kept here
  (:class:`~taskvec.engine.shortcuts.Shortcuts`), never on the model;
- with mixed precision (:mod:`taskvec.models.precision`), predictions whose top-two logit gap is below
  ``recheck_margin`` are recomputed with float32 products; an edited prediction gets its vector made again
  in float32 by the method that made it (:class:`~taskvec.core.interfaces.Made`). See
  :mod:`taskvec.engine.close_calls`. The layer sweep is not rechecked (it only chooses the layer).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from taskvec.core.interfaces import Executor, Made, Method, Predictions, Rechecked
from taskvec.core.sites import RowEdits, Variant, is_last_token_replace, row_edits, variant_rows
from taskvec.engine.accounting import stage
from taskvec.engine.close_calls import DEFAULT_RECHECK_MARGIN, check_recheck_margin, close
from taskvec.engine.forward import DEFAULT_BATCH_SIZE, predict_ids
from taskvec.engine.last_token import LastTokenResults, last_token_variants
from taskvec.engine.shared_prefix import run_prompt_groups
from taskvec.engine.shortcuts import Shortcuts
from taskvec.engine.sweep import sweep_token_ids
from taskvec.models.loading import LoadedModel
from taskvec.models.precision import MIXED, exact_products
from taskvec.runtime.base import ExecutorBase

#: Sets per shared-prefix chunk when their ICL prompts also predict, per unit of batch size.
SETS_PER_SLOT = 2
#: (prompt, layer) rows of one last-token forward of the cached sweep, per unit of batch size.
SWEEP_ROWS_PER_SLOT = 8
#: (prompt, variant) rows of one cached last-token forward, per unit of batch size.
LAST_TOKEN_ROWS_PER_SLOT = 4


class FastExecutor(ExecutorBase):
    """Shared prefixes, cached sweep, vocabulary shortlist; close calls rechecked under mixed precision."""

    def __init__(
        self,
        lm: LoadedModel,
        batch_size: int = DEFAULT_BATCH_SIZE,
        *,
        recheck_margin: float | None = DEFAULT_RECHECK_MARGIN,
        shortcuts: Shortcuts | None = None,
    ) -> None:
        """``recheck_margin``: with mixed precision, predictions closer than this are recomputed in float32
        (None: none are)."""
        super().__init__(lm, batch_size)
        self.recheck_margin = None if recheck_margin is None else check_recheck_margin(recheck_margin)
        self.shortcuts = shortcuts if shortcuts is not None else Shortcuts()
        self.rechecks = self.recheck_margin is not None and lm.precision == MIXED

    def with_batch_size(self, batch_size: int) -> Executor:
        return FastExecutor(self.lm, batch_size, recheck_margin=self.recheck_margin, shortcuts=self.shortcuts)

    def states(self, groups: Sequence[Sequence[str]], layers: Sequence[int]) -> torch.Tensor:
        return run_prompt_groups(self.lm, groups, layers=layers, batch_size=self.batch_size).states

    def states_and_predictions(
        self, groups: Sequence[Sequence[str]], layers: Sequence[int], predict: Sequence[Sequence[bool]]
    ) -> tuple[torch.Tensor, Predictions]:
        out = run_prompt_groups(
            self.lm, groups, layers=layers, predict=predict, batch_size=SETS_PER_SLOT * self.batch_size,
            with_margins=self.rechecks,
        )  # fmt: skip
        flags = torch.tensor([bool(f) for fs in predict for f in fs])
        ids = out.token_ids[flags]
        rechecked = None
        if out.margins is not None:
            prompts = [p for group, fs in zip(groups, predict) for p, f in zip(group, fs) if f]
            rechecked = self._recheck(prompts, ids, out.margins[flags], None, None)
        return out.states[~flags], Predictions(ids, rechecked)

    def predict(
        self, prompts: Sequence[str], edits: Sequence[RowEdits] | None = None, *, short: bool = False,
        made: Made | None = None,
    ) -> Predictions:
        self.check_edits(prompts, edits)
        ids, margins = predict_ids(
            self.lm, prompts, edits, batch_size=self.rows(short), with_margins=self.rechecks, shortcuts=self.shortcuts
        )
        rechecked = None if margins is None else self._recheck(prompts, ids, margins, edits, made)
        return Predictions(ids, rechecked)

    def sweep(
        self, prompts: Sequence[str], vectors: torch.Tensor, layers: Sequence[int], method: Method
    ) -> torch.Tensor:
        """The cached sweep when the method's edit is one replacement of a block output at the last prompt
        token (what the cached sweep computes exactly); else one forward per layer."""
        layers = self.check_sweep(prompts, vectors, layers)
        if layers and is_last_token_replace(method.edits(layers[0], vectors[0, layers[0]]), layers[0]):
            rows = SWEEP_ROWS_PER_SLOT * self.batch_size
            return sweep_token_ids(self.lm, prompts, vectors, layers, max_rows=rows, shortcuts=self.shortcuts)
        return self.sweep_by_forwards(prompts, vectors, layers, method)

    def last_token(
        self, prompts: Sequence[str], variants: Sequence[Variant], *, gold: Sequence[int] | None = None
    ) -> LastTokenResults:
        """The cached last-token path (:mod:`taskvec.engine.last_token`): one prefix forward per group of
        prompts, lower blocks skipped, shortlist argmax (each checked once against full forwards). Under mixed
        precision, next tokens closer than ``recheck_margin`` are recomputed with float32 products, as
        :meth:`predict` does (log-probabilities are not rechecked)."""
        self.check_variants(prompts, variants, gold)
        rows = LAST_TOKEN_ROWS_PER_SLOT * self.batch_size
        found = last_token_variants(self.lm, prompts, variants, gold=gold, max_rows=rows, shortcuts=self.shortcuts,
                                    with_margins=self.rechecks)  # fmt: skip
        if found.margins is not None:
            for v, variant in enumerate(variants):
                self._recheck(prompts, found.ids[v], found.margins[v], variant_rows(variant, len(prompts)), None)
        return found

    def _recheck(
        self,
        prompts: Sequence[str],
        ids: torch.Tensor,
        margins: torch.Tensor,
        edits: Sequence[RowEdits] | None,
        made: Made | None,
    ) -> Rechecked:
        """Recompute the close calls among ``ids`` with float32 products, in place; an edit's vector is
        made again in float32 when ``made`` says how."""
        mask = close(margins, self.recheck_margin or 0.0)
        index = mask.nonzero()[:, 0].tolist()
        before = ids[mask].clone()
        if index:
            with stage("recheck"), exact_products(self.lm.model):
                again = None if edits is None else self._exact_edits([edits[i] for i in index], index, made)
                close_prompts = [prompts[i] for i in index]
                ids[index] = predict_ids(
                    self.lm, close_prompts, again, batch_size=self.batch_size, shortcuts=self.shortcuts
                )[0]
        return Rechecked(mask, int((ids[mask] != before).sum()))

    def _exact_edits(self, edits: list[RowEdits], index: list[int], made: Made | None) -> list[RowEdits]:
        """The rows' edits with their vectors made again (now in float32) by ``made.method``: a row's edits are
        the method's edits at each layer they touch (one for a task vector, several for a method that acts at
        every layer)."""
        if made is None:
            return edits
        rows = [list(dict.fromkeys(e.site.layer for e in row_edits(entry))) for entry in edits]
        wanted = sorted({layer for layers in rows for layer in layers})
        vectors = made.method.vectors(self, made.template, [made.sets[i] for i in index], wanted)
        return [[e for layer in layers for e in made.method.edits(layer, vectors[k, wanted.index(layer)])]
                for k, layers in enumerate(rows)]  # fmt: skip
