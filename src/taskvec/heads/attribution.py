"""Head attribution: mean head outputs on clean ICL prompts, and each head's average indirect effect (AIE).

AIE of head (li, j): over shuffled-label prompts, the mean rise in the probability of the gold answer's
first token when that head's last-token output is set to its clean mean ā_lj. Each corrupted prompt's
key/value cache for all tokens but the last is computed once (one forward per group of prompts); then
the last token runs in batches of rows, one unpatched row per prompt and one row per tested head.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from taskvec.engine.accounting import record
from taskvec.engine.batching import collate, encode, length_sorted_chunks
from taskvec.engine.prompts import PromptTemplate
from taskvec.errors import TaskvecError
from taskvec.heads.examples import IclExample, first_answer_tokens
from taskvec.heads.hooks import capture_head_outputs
from taskvec.heads.last_token import DEFAULT_MAX_ROWS, patched_gold_probabilities
from taskvec.models.head_sites import HeadSite, head_sites, rms
from taskvec.models.loading import LoadedModel

logger = logging.getLogger(__name__)


@dataclass
class MeanHeadOutputs:
    """Clean-prompt statistics at the last token, per layer and head."""

    means: torch.Tensor  # (L, n_heads, head_dim) float32: ā_lj
    attention_rms: torch.Tensor  # (L,) mean over prompts of the rms of the projection's output (attention output)
    n_prompts: int


@dataclass
class HeadAttribution:
    """One task's (or an average over tasks') head attribution."""

    aie: torch.Tensor  # (L, n_heads) mean rise in p(gold first token); NaN for heads not tested
    mean_outputs: MeanHeadOutputs
    baseline_probability: float  # mean p(gold first token) of the unpatched corrupted prompts
    n_corrupted: int

    def top_heads(self, k: int) -> list[tuple[int, int]]:
        """The ``k`` heads with the largest AIE, best first (ties: lower layer, then lower head)."""
        return top_heads(self.aie, k)

    def to_dict(self) -> dict:
        return {
            "aie": [[None if torch.isnan(v) else round(float(v), 6) for v in row] for row in self.aie],
            "baseline_probability": self.baseline_probability,
            "n_clean": self.mean_outputs.n_prompts,
            "n_corrupted": self.n_corrupted,
        }


def top_heads(aie: torch.Tensor, k: int) -> list[tuple[int, int]]:
    """The ``k`` (layer, head) pairs with the largest values of ``aie`` (L, n_heads), best first; untested
    heads (NaN) are never chosen."""
    n_layers, n_heads = aie.shape
    tested = ~torch.isnan(aie)
    flat = [(-float(aie[li, j]), li, j) for li in range(n_layers) for j in range(n_heads) if tested[li, j]]
    if not 1 <= k <= len(flat):
        raise TaskvecError(f"k={k!r} heads; expected 1..{len(flat)} (the heads with an attribution)")
    return [(li, j) for _, li, j in sorted(flat)[:k]]


@torch.no_grad()
def mean_head_outputs(lm: LoadedModel, prompts: Sequence[str], *, batch_size: int = 16) -> MeanHeadOutputs:
    """Mean of every head's output at the last token of ``prompts`` (before the output projection)."""
    if not prompts:
        raise TaskvecError("no clean prompts given; expected at least one ICL prompt")
    sites = head_sites(lm)
    rows = encode(lm, prompts)
    total = torch.zeros(len(sites), sites[0].n_heads, sites[0].head_dim)
    rms_total = torch.zeros(len(sites))
    for group in length_sorted_chunks(rows, batch_size):
        batch = collate(lm, [rows[i] for i in group])
        store: dict[int, torch.Tensor] = {}
        with capture_head_outputs(sites, store):
            lm.adapter.base_model(**batch.model_inputs(), use_cache=False)
        record(tokens=int(batch.attention_mask.sum()), padded_tokens=batch.attention_mask.numel(),
               blocks=lm.num_layers)  # fmt: skip
        for site in sites:
            heads = store[site.layer].cpu()  # (B, n, d)
            total[site.layer] += heads.sum(0)
            rms_total[site.layer] += float(rms(attention_output(site, heads)).sum())  # (the weight may be on a GPU)
    return MeanHeadOutputs(total / len(rows), rms_total / len(rows), len(rows))


def attention_output(site: HeadSite, heads: torch.Tensor) -> torch.Tensor:
    """The output projection's output (B, H) from the heads' outputs (B, n_heads, head_dim), bias included."""
    out = site.project(heads).sum(-2)
    bias = site.bias()
    return out if bias is None else out + bias.to(out.device)


def all_heads(lm: LoadedModel) -> list[tuple[int, int]]:
    sites = head_sites(lm)
    return [(site.layer, j) for site in sites for j in range(site.n_heads)]


@torch.no_grad()
def head_attribution(
    lm: LoadedModel,
    clean: Sequence[IclExample],
    corrupted: Sequence[IclExample],
    template: PromptTemplate,
    *,
    heads: Sequence[tuple[int, int]] | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    batch_size: int = 16,
) -> HeadAttribution:
    """AIE of each head in ``heads`` (default: all) for one task; untested heads get NaN.

    ``clean`` gives the mean head outputs; ``corrupted`` are shuffled-label examples (see
    :func:`taskvec.heads.examples.shuffled_examples`) whose gold answer's first token is scored.
    """
    if not corrupted:
        raise TaskvecError("no corrupted prompts given; expected at least one shuffled-label ICL example")
    sites = head_sites(lm)
    tested = all_heads(lm) if heads is None else [(int(li), int(j)) for li, j in heads]
    for li, j in tested:
        if not (0 <= li < len(sites) and 0 <= j < sites[li].n_heads):
            raise TaskvecError(f"head ({li}, {j}) does not exist; expected layer 0..{len(sites) - 1} and head "
                               f"0..{sites[0].n_heads - 1}")  # fmt: skip
    means = mean_head_outputs(lm, [e.prompt(template) for e in clean], batch_size=batch_size)
    gold = torch.tensor(first_answer_tokens(lm, template, corrupted))
    probs = patched_gold_probabilities(lm, [e.prompt(template) for e in corrupted], gold, tested, means.means,
                                       max_rows=max_rows)  # fmt: skip
    rise = probs[:, 1:] - probs[:, :1]  # (P, len(tested))
    aie = torch.full((len(sites), sites[0].n_heads), torch.nan)
    for col, (li, j) in enumerate(tested):
        aie[li, j] = rise[:, col].mean()
    baseline = float(probs[:, 0].mean())
    logger.info("head attribution: %d clean, %d corrupted prompts, %d heads; baseline p=%.4f, best AIE %.4f",
                len(clean), len(corrupted), len(tested), baseline, float(rise.mean(0).max()))  # fmt: skip
    return HeadAttribution(aie, means, baseline, len(corrupted))


def average_aie(attributions: Sequence[HeadAttribution]) -> torch.Tensor:
    """The AIE table averaged over tasks (L, n_heads): the "universal" head ranking."""
    if not attributions:
        raise TaskvecError("no head attributions given; expected at least one task's")
    shapes = {tuple(a.aie.shape) for a in attributions}
    if len(shapes) != 1:
        raise TaskvecError(f"AIE tables of shapes {sorted(shapes)} cannot be averaged; expected one model's")
    return torch.stack([a.aie for a in attributions]).mean(0)
