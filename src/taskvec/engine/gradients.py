"""Gradient head attribution ("attribution patching": Nanda 2023; AtP, Kramár et al. 2024).

The exact indirect effect of a head (:mod:`taskvec.heads.attribution`) needs one forward per (prompt, head):
the head's last-token output ``a`` is set to its clean mean ``ā`` and p(gold) is read again. Attribution
patching replaces that rise by its first-order term ``(ā - a) · ∂p(gold)/∂a``, so one forward and one
backward per batch give every head's estimate for every prompt. The prompts' other tokens run first, without
gradients, into a key/value cache; only the last token's forward is differentiated (nothing at an earlier
position depends on a last-token head output), so the backward costs one token, not the prompt.

The derivative is the *total* one: through every later block, later attention included. It is taken with
respect to a zero tensor ``delta_l`` (B, heads * head_dim) added, by a forward pre-hook, to the input of
block l's attention output projection at the last column only; the projection's input itself stays in the
graph (it is not detached nor replaced by a leaf), so whatever depends on it downstream is differentiated.
Each row's p(gold) depends on that row's deltas only, so the gradient of their sum over the batch gives
every row's gradient at once. ``torch.autograd.grad`` with ``inputs`` = the deltas leaves parameters'
``.grad`` untouched. Gradients are enabled for the forward, also inside a caller's ``torch.no_grad()`` or
``torch.inference_mode()``. Every hook is removed on exit, also when the forward or backward raises.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from taskvec.engine.batching import Batch, collate, encode, length_sorted_chunks
from taskvec.engine.forward import record_batch
from taskvec.engine.hooks import registered
from taskvec.engine.numerics import check_finite
from taskvec.engine.shared_prefix import all_but_last_cache, last_token_rows
from taskvec.errors import TaskvecError
from taskvec.models.head_sites import HeadSite, head_sites
from taskvec.models.loading import LoadedModel

logger = logging.getLogger(__name__)


@dataclass
class HeadGradients:
    """Every head's last-token output on each prompt, and the gradient of p(gold) with respect to it."""

    values: torch.Tensor  # (N, L, n_heads, head_dim) float32: the attention output projection's input, last token
    grads: torch.Tensor  # (N, L, n_heads, head_dim) float32: d p(gold_i) / d values[i] (total derivative)
    probabilities: torch.Tensor  # (N,) float32: p(gold_i) as the next token of prompt i, unpatched


def head_gradients(
    lm: LoadedModel, prompts: Sequence[str], gold: Sequence[int] | torch.Tensor, *, batch_size: int = 16
) -> HeadGradients:
    """Each head's output at the last token of ``prompts[i]`` and the total derivative of p(``gold[i]``) (the
    probability of that token next) with respect to it, through every later block. Works inside
    ``torch.no_grad()``; parameters get no ``.grad``. Prompts of similar length are batched together."""
    gold_ids = _check_inputs(lm, prompts, gold, batch_size)
    sites = head_sites(lm)
    n_heads, head_dim = sites[0].n_heads, sites[0].head_dim
    rows = encode(lm, prompts)
    values = torch.empty(len(rows), len(sites), n_heads, head_dim)
    grads = torch.empty_like(values)
    probabilities = torch.empty(len(rows))
    for group in length_sorted_chunks(rows, batch_size):
        batch = collate(lm, [rows[i] for i in group])
        v, g, p = _batch_gradients(lm, sites, batch, gold_ids[group])
        values[group], grads[group], probabilities[group] = v, g, p
    logger.info("head gradients: %d prompts, %d layers x %d heads; mean p(gold)=%.4f, largest |grad| %.4g",
                len(rows), len(sites), n_heads, float(probabilities.mean()), float(grads.abs().max()))  # fmt: skip
    return HeadGradients(values, grads, probabilities)


def gradient_aie(
    lm: LoadedModel,
    prompts: Sequence[str],
    gold: Sequence[int] | torch.Tensor,
    means: torch.Tensor,
    *,
    batch_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attribution-patching estimate of each head's indirect effect: per prompt, the rise in p(gold) when the
    head's last-token output ``values[i, l, j]`` is set to ``means[l, j]``, replaced by its linear term
    ``est[i, l, j] = (means[l, j] - values[i, l, j]) · grads[i, l, j]``. Returns (``est.mean(0)``, (L, n_heads)
    float32; the unpatched p(gold) of each prompt, (N,)).

    ``means`` (L, n_heads, head_dim) are the clean mean head outputs (``MeanHeadOutputs.means`` of
    :mod:`taskvec.heads.attribution`). Exact for an effect linear in the head's output; AtP's known failure
    is a head whose effect saturates (e.g. p(gold) near 0 or 1), where the estimate can be far off."""
    sites = head_sites(lm)
    expected = (len(sites), sites[0].n_heads, sites[0].head_dim)
    if not isinstance(means, torch.Tensor):
        raise TaskvecError(f"means is a {type(means).__name__}; expected a tensor of shape {expected} (layers, heads, "
                           "head_dim)")  # fmt: skip
    if tuple(means.shape) != expected:
        raise TaskvecError(f"means of shape {tuple(means.shape)}; expected {expected} (layers, heads, head_dim) for "
                           "this model")  # fmt: skip
    means32 = means.detach().float().cpu()
    if not bool(torch.isfinite(means32).all()):
        raise TaskvecError(f"means hold {int((~torch.isfinite(means32)).sum())} NaN or infinite values; expected "
                           "finite mean head outputs")  # fmt: skip
    result = head_gradients(lm, prompts, gold, batch_size=batch_size)
    estimate = ((means32[None] - result.values) * result.grads).sum(-1)  # (N, L, n_heads)
    return estimate.mean(0), result.probabilities


def _check_inputs(
    lm: LoadedModel, prompts: Sequence[str], gold: Sequence[int] | torch.Tensor, batch_size: int
) -> torch.Tensor:
    """``gold`` as a LongTensor (N,), after checking the prompts, the gold ids and the batch size."""
    if isinstance(prompts, str):
        raise TaskvecError(f"prompts is one string ({prompts[:40]!r}); expected a sequence of prompts")
    if len(prompts) == 0:
        raise TaskvecError("no prompts given; expected at least one prompt")
    bad = [p for p in prompts if not isinstance(p, str) or not p]
    if bad:
        raise TaskvecError(f"prompt {bad[0]!r} is not a non-empty string; expected prompt texts")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise TaskvecError(f"batch_size={batch_size!r}; expected a positive integer")
    if isinstance(gold, torch.Tensor):
        if gold.ndim != 1 or gold.dtype.is_floating_point or gold.dtype.is_complex or gold.dtype == torch.bool:
            raise TaskvecError(f"gold is a {gold.dtype} tensor of shape {tuple(gold.shape)}; expected integer "
                               "token ids, one per prompt")  # fmt: skip
        gold = gold.tolist()
    if len(gold) != len(prompts):
        raise TaskvecError(f"{len(gold)} gold token ids for {len(prompts)} prompts; expected one per prompt")
    vocab = _vocab_size(lm)
    ids = []
    for token in gold:
        try:
            index = operator.index(token) if not isinstance(token, bool) else None
        except TypeError:
            index = None
        if index is None or not 0 <= index < vocab:
            raise TaskvecError(f"gold token id {token!r} is not a token of this model; expected an integer "
                               f"0..{vocab - 1}")  # fmt: skip
        ids.append(index)
    return torch.tensor(ids, dtype=torch.long)


def _vocab_size(lm: LoadedModel) -> int:
    unembedding = lm.adapter.unembedding
    size = getattr(unembedding, "out_features", None)
    return int(size) if isinstance(size, int) else int(unembedding.weight.shape[0])


def _last_token_step(lm: LoadedModel, batch: Batch) -> tuple[Batch, object]:
    """What the differentiated forward runs: the last token of every prompt on the key/value cache of the
    others (computed here without gradients: a head's last-token output reaches nothing at earlier positions,
    so the derivative is the same and the backward covers one token instead of the prompt), or the whole batch
    with no cache when a prompt has a single token."""
    if int(batch.attention_mask.sum(dim=1).min()) < 2:
        return batch, None
    with torch.no_grad():
        cache, _ = all_but_last_cache(lm, batch)
    return last_token_rows(batch, cache, 1)


def _batch_gradients(
    lm: LoadedModel, sites: Sequence[HeadSite], batch: Batch, gold: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values, grads) (B, L, n_heads, head_dim) and p(gold) (B,) of one left-padded batch, float32 on the CPU."""
    deltas: dict[int, torch.Tensor] = {}
    values: dict[int, torch.Tensor] = {}

    def make(site: HeadSite):
        def hook(module, args):
            if not args:
                raise TaskvecError(f"block {site.layer}: the attention output projection was called without a "
                                   "positional input; expected the heads' outputs as its first argument")  # fmt: skip
            if site.layer in deltas:
                raise TaskvecError(f"block {site.layer}: the attention output projection ran twice in one forward; "
                                   "expected one call per block")  # fmt: skip
            x = args[0]
            values[site.layer] = x[:, -1, :].detach().float().clone()
            delta = torch.zeros(x.shape[0], x.shape[-1], device=x.device, dtype=torch.float32, requires_grad=True)
            deltas[site.layer] = delta
            last = x[:, -1:, :] + delta.to(x.dtype)[:, None, :]
            return (torch.cat([x[:, :-1, :], last], dim=1), *args[1:])

        return hook

    handles: list = []
    # inference_mode(False): a caller's inference mode would forbid autograd; its tensors are cloned out of it
    with registered(handles), torch.inference_mode(False):
        step, cache = _last_token_step(lm, batch)
        with torch.enable_grad():
            kwargs = {name: value.clone() for name, value in step.model_inputs().items()}
            if lm.adapter.accepts_logits_to_keep:
                kwargs["logits_to_keep"] = 1
            for site in sites:
                handles.append(site.out_proj.register_forward_pre_hook(make(site)))
            out = lm.model(**kwargs, **lm.adapter.cache_inputs(cache))
            logits = out.logits[:, -1, :].float()
            record_batch(step, blocks=lm.num_layers, logit_rows=out.logits.shape[0] * out.logits.shape[1])
            check_finite(logits.detach(), "next-token logits", lm.dtype)
            probs = torch.softmax(logits, dim=-1).gather(1, gold.to(logits.device, copy=True)[:, None])[:, 0]
            missing = [site.layer for site in sites if site.layer not in deltas]
            if missing:
                raise TaskvecError(f"blocks {missing}: the attention output projection did not run in the "
                                   "forward; expected every block's to run")  # fmt: skip
            order = [deltas[site.layer] for site in sites]
            grads = torch.autograd.grad(probs.sum(), order, allow_unused=True)
    n, heads, dim = len(batch), sites[0].n_heads, sites[0].head_dim
    # blocks may sit on different devices (a model split over GPUs): each goes to the CPU before stacking
    stacked_grads = torch.stack([(torch.zeros_like(d) if g is None else g).detach().float().cpu()
                                 for d, g in zip(order, grads)], dim=1)  # fmt: skip
    stacked_values = torch.stack([values[site.layer].cpu() for site in sites], dim=1)
    return (stacked_values.reshape(n, len(sites), heads, dim), stacked_grads.reshape(n, len(sites), heads, dim),
            probs.detach().float().cpu())  # fmt: skip
