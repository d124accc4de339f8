"""Head attribution: mean head outputs on clean ICL prompts, and each head's average indirect effect (AIE).

AIE of head (li, j): over shuffled-label prompts, the mean rise in the probability of the gold answer's
first token when that head's last-token output is set to its clean mean ā_lj. Both are executor calls: the
means a read of every head site, the effects one ``last_token`` call with one variant per head (the fast
executor runs each corrupted prompt's tokens but the last once, and skips the blocks below each head's layer;
the plain one runs every (prompt, head) whole).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from taskvec.core.interfaces import Executor
from taskvec.core.sites import Replace, Site
from taskvec.engine.gradients import gradient_aie
from taskvec.errors import TaskvecError
from taskvec.heads.examples import IclExample, first_answer_tokens
from taskvec.models.head_sites import HeadSite, head_sites, rms
from taskvec.models.loading import LoadedModel
from taskvec.prompts import PromptTemplate

logger = logging.getLogger(__name__)

#: How head effects are measured: patched forwards (exact) or attribution patching (gradient).
ATTRIBUTIONS = ("exact", "gradient")


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
    method: str = "exact"  # "exact" (patched forwards) or "gradient" (attribution patching's linear estimate)

    def top_heads(self, k: int) -> list[tuple[int, int]]:
        """The ``k`` heads with the largest AIE, best first (ties: lower layer, then lower head)."""
        return top_heads(self.aie, k)

    def to_dict(self) -> dict:
        return {
            "aie": [[None if torch.isnan(v) else round(float(v), 6) for v in row] for row in self.aie],
            "baseline_probability": self.baseline_probability,
            "n_clean": self.mean_outputs.n_prompts,
            "n_corrupted": self.n_corrupted,
            **({"method": self.method} if self.method != "exact" else {}),
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


def head_site_list(lm: LoadedModel) -> list[Site]:
    """Every head of the model as a read/edit site at the last prompt token, layer by layer."""
    sites = head_sites(lm)
    return [Site(site.layer, head=j) for site in sites for j in range(site.n_heads)]


@torch.no_grad()
def mean_head_outputs(executor: Executor, prompts: Sequence[str]) -> MeanHeadOutputs:
    """Mean of every head's output at the last token of ``prompts`` (before the output projection), read by
    ``executor``; with the mean rms of each layer's attention output there."""
    if not prompts:
        raise TaskvecError("no clean prompts given; expected at least one ICL prompt")
    sites = head_sites(executor.lm)
    read = executor.read(prompts, head_site_list(executor.lm))
    means = torch.zeros(len(sites), sites[0].n_heads, sites[0].head_dim)
    attention_rms = torch.zeros(len(sites))
    for site in sites:
        heads = torch.stack([read[Site(site.layer, head=j)] for j in range(site.n_heads)], dim=1)  # (N, n, d)
        means[site.layer] = heads.mean(0)
        attention_rms[site.layer] = rms(attention_output(site, heads)).mean()  # (the weight may be on a GPU)
    return MeanHeadOutputs(means, attention_rms, len(prompts))


def attention_output(site: HeadSite, heads: torch.Tensor) -> torch.Tensor:
    """The output projection's output (B, H) from the heads' outputs (B, n_heads, head_dim), bias included."""
    out = site.project(heads).sum(-2)
    bias = site.bias()
    return out if bias is None else out + bias.to(out.device)


def all_heads(lm: LoadedModel) -> list[tuple[int, int]]:
    return [(site.layer, site.head) for site in head_site_list(lm)]


@torch.no_grad()
def head_attribution(
    executor: Executor,
    clean: Sequence[IclExample],
    corrupted: Sequence[IclExample],
    template: PromptTemplate,
    *,
    heads: Sequence[tuple[int, int]] | None = None,
    attribution: str = "exact",
) -> HeadAttribution:
    """AIE of each head in ``heads`` (default: all) for one task; untested heads get NaN.

    ``clean`` gives the mean head outputs; ``corrupted`` are shuffled-label examples (see
    :func:`taskvec.heads.examples.shuffled_examples`) whose gold answer's first token is scored.
    ``attribution="exact"``: one :meth:`~taskvec.core.interfaces.Executor.last_token` call, the unpatched prompt
    and one variant per head (its last-token output replaced by its clean mean). ``"gradient"``: attribution
    patching (:mod:`taskvec.engine.gradients`), one forward and backward per corrupted prompt, the linear
    estimate of each head's effect.
    """
    if attribution not in ATTRIBUTIONS:
        raise TaskvecError(f"attribution {attribution!r}; expected one of {', '.join(ATTRIBUTIONS)}")
    if not corrupted:
        raise TaskvecError("no corrupted prompts given; expected at least one shuffled-label ICL example")
    lm = executor.lm
    sites = head_sites(lm)
    tested = all_heads(lm) if heads is None else [(int(li), int(j)) for li, j in heads]
    for li, j in tested:
        if not (0 <= li < len(sites) and 0 <= j < sites[li].n_heads):
            raise TaskvecError(f"head ({li}, {j}) does not exist; expected layer 0..{len(sites) - 1} and head "
                               f"0..{sites[0].n_heads - 1}")  # fmt: skip
    means = mean_head_outputs(executor, [e.prompt(template) for e in clean])
    gold = first_answer_tokens(lm, template, corrupted)
    prompts = [e.prompt(template) for e in corrupted]
    aie = torch.full((len(sites), sites[0].n_heads), torch.nan)
    if attribution == "gradient":
        estimate, probabilities = gradient_aie(lm, prompts, gold, means.means, batch_size=executor.batch_size)
        for li, j in tested:
            aie[li, j] = estimate[li, j]
        baseline = float(probabilities.mean())
    else:
        variants = [[]] + [[Replace(Site(li, head=j), means.means[li, j])] for li, j in tested]
        probs = executor.last_token(prompts, variants, gold=gold).logprobs.exp().T  # (P, 1 + len(tested))
        rise = probs[:, 1:] - probs[:, :1]
        for col, (li, j) in enumerate(tested):
            aie[li, j] = rise[:, col].mean()
        baseline = float(probs[:, 0].mean())
    logger.info("head attribution (%s): %d clean, %d corrupted prompts, %d heads; baseline p=%.4f, best AIE %.4f",
                attribution, len(clean), len(corrupted), len(tested), baseline,
                float(aie[~torch.isnan(aie)].max()))  # fmt: skip
    return HeadAttribution(aie, means, baseline, len(corrupted), attribution)


def average_aie(attributions: Sequence[HeadAttribution]) -> torch.Tensor:
    """The AIE table averaged over tasks (L, n_heads): the "universal" head ranking."""
    if not attributions:
        raise TaskvecError("no head attributions given; expected at least one task's")
    shapes = {tuple(a.aie.shape) for a in attributions}
    if len(shapes) != 1:
        raise TaskvecError(f"AIE tables of shapes {sorted(shapes)} cannot be averaged; expected one model's")
    return torch.stack([a.aie for a in attributions]).mean(0)
