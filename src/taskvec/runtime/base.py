"""What both executors share: checks of their inputs, and the operations both run the straightforward way
(reading sites, log-probabilities of given tokens, multi-token generation, the per-layer sweep)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from taskvec.core.decoding import DEFAULT_STOP, StopRule
from taskvec.core.interfaces import Method, Predictions
from taskvec.core.sites import RowEdits, Site, Variant, row_edits, variant_edits, variant_rows
from taskvec.engine.forward import DEFAULT_BATCH_SIZE, check_layers
from taskvec.engine.generation import generate
from taskvec.engine.last_token import LastTokenResults, last_token_only
from taskvec.engine.reading import next_token_logprobs, read_sites
from taskvec.errors import TaskvecError
from taskvec.models.loading import LoadedModel

#: Bare query prompts per forward, per unit of ``batch_size`` (they are several times shorter than ICL prompts).
SHORT_PROMPTS_PER_SLOT = 4


class ExecutorBase:
    """An executor of one model with ``batch_size`` ICL prompts per forward."""

    def __init__(self, lm: LoadedModel, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise TaskvecError(f"batch size must be a positive integer, got {batch_size!r}")
        self.lm = lm
        self.batch_size = batch_size

    def predict(
        self, prompts: Sequence[str], edits: Sequence[RowEdits] | None = None, *, short: bool = False, made=None
    ) -> Predictions:
        raise NotImplementedError

    def rows(self, short: bool) -> int:
        """Prompts per forward: ``batch_size``, times ``SHORT_PROMPTS_PER_SLOT`` for bare query prompts."""
        return SHORT_PROMPTS_PER_SLOT * self.batch_size if short else self.batch_size

    def check_edits(self, prompts: Sequence[str], edits: Sequence[RowEdits] | None) -> None:
        if edits is None:
            return
        if len(edits) != len(prompts):
            raise TaskvecError(f"got {len(edits)} edits for {len(prompts)} prompts; expected one entry per prompt")
        check_layers(self.lm, sorted({e.site.layer for entry in edits for e in row_edits(entry)}))

    def check_sweep(self, prompts: Sequence[str], vectors: torch.Tensor, layers: Sequence[int]) -> list[int]:
        layers = check_layers(self.lm, layers)
        if vectors.ndim != 3 or vectors.shape[0] != len(prompts) or vectors.shape[1] != self.lm.num_layers:
            raise TaskvecError(
                f"sweep vectors have shape {tuple(vectors.shape)}; expected ({len(prompts)} prompts, "
                f"{self.lm.num_layers} layers, hidden size)"
            )
        return layers

    def sweep_by_forwards(
        self, prompts: Sequence[str], vectors: torch.Tensor, layers: list[int], method: Method
    ) -> torch.Tensor:
        """The sweep as one forward per prompt and layer: prompt i with ``method``'s edits of ``vectors[i, l]``."""
        found = [
            self.predict(prompts, [method.edits(layer, vectors[i, layer]) for i in range(len(prompts))], short=True).ids
            for layer in layers
        ]
        return torch.stack(found) if found else torch.empty(0, len(prompts), dtype=torch.long)

    def read(
        self, prompts: Sequence[str], sites: Sequence[Site], edits: Sequence[RowEdits] | None = None
    ) -> dict[Site, torch.Tensor]:
        """The value at each site of each prompt (run whole, ``edits[i]`` applied): ``{site: (N, D)}``."""
        self.check_edits(prompts, edits)
        return read_sites(self.lm, prompts, sites, edits, batch_size=self.batch_size)

    def last_token(
        self, prompts: Sequence[str], variants: Sequence[Variant], *, gold: Sequence[int] | None = None
    ) -> LastTokenResults:
        """Next token (V, N) of each prompt under each variant (edits at its last token), and with ``gold`` the
        log-probability (V, N) of ``gold[n]``: here one whole-prompt forward per (prompt, variant)."""
        self.check_variants(prompts, variants, gold)
        ids = torch.empty(len(variants), len(prompts), dtype=torch.long)
        logprobs = None if gold is None else torch.empty(len(variants), len(prompts))
        for v, variant in enumerate(variants):
            edits = variant_rows(variant, len(prompts))
            ids[v] = self.predict(prompts, edits, short=True).ids
            if logprobs is not None:
                logprobs[v] = self.logprobs(prompts, gold, edits)
        return LastTokenResults(ids, logprobs)

    def check_variants(
        self, prompts: Sequence[str], variants: Sequence[Variant], gold: Sequence[int] | None
    ) -> None:
        if not prompts:
            raise TaskvecError("no prompts given; expected at least one")
        if gold is not None and len(gold) != len(prompts):
            raise TaskvecError(f"got {len(gold)} gold tokens for {len(prompts)} prompts; expected one per prompt")
        for variant in variants:
            variant_rows(variant, len(prompts))  # a per-prompt variant has one entry per prompt
        check_layers(self.lm, sorted({e.site.layer for v in variants for e in variant_edits(v)}))
        if not last_token_only(variants):
            raise TaskvecError("every edit of a last-token variant must sit at the last prompt token (position -1)")

    def logprobs(
        self, prompts: Sequence[str], token_ids: Sequence[int], edits: Sequence[RowEdits] | None = None
    ) -> torch.Tensor:
        """Log-probability (N,) of ``token_ids[i]`` as prompt i's next token, ``edits[i]`` applied."""
        self.check_edits(prompts, edits)
        return next_token_logprobs(self.lm, prompts, token_ids, edits, batch_size=self.batch_size)

    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int,
        edits: Sequence[RowEdits] | None = None,
        stop: StopRule = DEFAULT_STOP,
    ) -> list[str]:
        """Greedy answers, ``edits[i]`` applied to prompt i at the positions their sites name: prompt positions
        in the prefill (kept in the key/value cache), generated positions at each new token."""
        self.check_edits(prompts, edits)
        return generate(self.lm, prompts, max_new_tokens, edits=edits, stop=stop, batch_size=self.batch_size,
                        rerun=self.reruns_generation)  # fmt: skip

    #: Whether :meth:`generate` runs the whole sequence again for each token (no cache: the reference).
    reruns_generation = False
