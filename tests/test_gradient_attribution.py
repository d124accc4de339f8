"""Gradient head attribution (attribution patching): taskvec.engine.gradients against finite differences.

The gradient is checked against the exact change of p(gold) when one head's last-token output moves a small
step towards the mean (patched with ``intervene``, as the exact attribution patches it), on every head of every
tiny model family: in float32 with forward differences, and in a float64 copy of the model, where central
differences match to many digits and forward differences converge to the estimate as the step shrinks.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from tiny_models import make_tiny_model

from taskvec.core.sites import Replace, Site
from taskvec.engine.batching import Batch, collate, encode
from taskvec.engine.forward import next_token_logits
from taskvec.engine.gradients import HeadGradients, gradient_aie, head_gradients
from taskvec.engine.interventions import intervene
from taskvec.errors import TaskvecError
from taskvec.models.adapter import ArchitectureAdapter
from taskvec.models.head_sites import head_sites
from taskvec.models.loading import LoadedModel

pytestmark = pytest.mark.usefixtures("single_thread")

#: Prompts of different lengths (so batches are left-padded), and clean ones whose mean head outputs are ā.
PROMPTS = ["ab:c\nde:f\ngh:", "xy:z\nuv:", "hello world:"]
CLEAN = ["ab:b\ncd:d\nef:", "kl:l\nmn:", "zz:z\nyy:", "pq:q\n"]
ANSWERS = ["i", "w", "!"]


def gold_ids(lm: LoadedModel, answers=ANSWERS) -> list[int]:
    return [lm.tokenizer(a, add_special_tokens=False)["input_ids"][0] for a in answers]


def clean_means(lm: LoadedModel) -> torch.Tensor:
    """Mean head outputs at the last token of CLEAN (L, n_heads, head_dim), as MeanHeadOutputs.means is."""
    return head_gradients(lm, CLEAN, gold_ids(lm, ["a"] * len(CLEAN)), batch_size=1).values.mean(0)


@functools.cache
def float64_copy(family: str) -> LoadedModel:
    """A float64 copy of the family's tiny model (the cached float32 one is not touched). Run it on one prompt a
    batch: in float64 some families' masks (llama, gemma3) give NaN at left-padding columns, and 0 x NaN
    attention weights then spoil the real tokens."""
    lm = make_tiny_model(family)
    model = copy.deepcopy(lm.model).double().eval()
    adapter = ArchitectureAdapter.from_model(model, lm.tokenizer)
    return LoadedModel(model=model, tokenizer=lm.tokenizer, adapter=adapter, model_id=f"{lm.model_id}-float64")


def family_of(lm: LoadedModel) -> str:
    return lm.model_id.removeprefix("tiny-")


@torch.no_grad()
def gold_probabilities(lm: LoadedModel, batch: Batch, gold: list[int], edits=()) -> torch.Tensor:
    """p(gold[i]) after row i of ``batch`` with ``edits[i]`` applied to row i, from the model's logits in its own
    dtype (next_token_logits rounds them to float32, which would hide float64's precision), as float64."""
    with intervene(lm.adapter, edits):
        logits = lm.model(**batch.model_inputs(), use_cache=False).logits[:, -1, :].double()
    return torch.softmax(logits, dim=-1)[torch.arange(len(gold)), torch.tensor(gold)]


def stepped_probabilities(
    lm: LoadedModel, batch: Batch, gold: list[int], result: HeadGradients, means: torch.Tensor, layer: int,
    head: int, eps: float,
) -> torch.Tensor:  # fmt: skip
    """p(gold) with head (layer, head)'s last-token output of each row set to values + eps * (means - values)."""
    values = result.values[:, layer, head].double()  # the step in float64, so that an up and a down step
    stepped = values + eps * (means[layer, head].double() - values)  # differ by exactly 2 eps (means - values)
    edits = [[Replace(Site(layer, head=head), v.to(lm.dtype))] for v in stepped]
    return gold_probabilities(lm, batch, gold, edits)


def linear_estimates(result: HeadGradients, means: torch.Tensor) -> torch.Tensor:
    """(means - values) . grads per prompt: (N, L, n_heads)."""
    return ((means[None].double() - result.values.double()) * result.grads.double()).sum(-1)


def all_heads(lm: LoadedModel) -> list[tuple[int, int]]:
    return [(site.layer, j) for site in head_sites(lm) for j in range(site.n_heads)]


# ------------------------------------------------------------------------------------- finite differences
def test_head_sites_are_the_intervention_sites(lm):
    """The gradient's sites and intervene's head sites are the same modules (one head locator; the test below
    relies on it): a head edit hooks exactly the projection head_sites names."""
    sites = head_sites(lm)
    assert sites[0].n_heads == lm.adapter.num_heads
    for site in sites:
        before = len(site.out_proj._forward_pre_hooks)
        with intervene(lm.adapter, [[Replace(Site(site.layer, head=1), torch.zeros(site.head_dim))]]):
            assert len(site.out_proj._forward_pre_hooks) == before + 1
        assert len(site.out_proj._forward_pre_hooks) == before


def test_forward_differences_match_the_linear_estimate(lm):
    """float32: (p(values + eps (means - values)) - p) / eps is (means - values) . grads, on every head and
    prompt; and the returned probabilities are softmax(next_token_logits) at gold."""
    gold = gold_ids(lm)
    means = clean_means(lm)
    result = head_gradients(lm, PROMPTS, gold)
    batch = collate(lm, encode(lm, PROMPTS))
    expected = torch.softmax(next_token_logits(lm, batch), dim=-1)[torch.arange(len(gold)), torch.tensor(gold)]
    torch.testing.assert_close(result.probabilities, expected, rtol=1e-5, atol=1e-8)
    base = gold_probabilities(lm, batch, gold)
    estimates = linear_estimates(result, means)
    scale = float(estimates.abs().max())
    assert scale > 0
    eps = 1e-3
    for layer, head in all_heads(lm):
        stepped = stepped_probabilities(lm, batch, gold, result, means, layer, head, eps)
        torch.testing.assert_close((stepped - base) / eps, estimates[:, layer, head], rtol=3e-2, atol=3e-3 * scale,
                                   msg=lambda m, at=(layer, head): f"head {at}: {m}")  # fmt: skip


def test_central_differences_match_in_float64(lm):
    """float64: central differences (second-order accurate) equal the estimate to ~1e-3 of the largest one, on
    every head, lower layers included (the gradient runs through later attention). Not to more digits:
    transformers runs some steps in float32 even in a float64 model (eager attention's softmax, RMS norms),
    which adds ~1e-10 noise to p, so the step cannot be much smaller than 1e-2 (below, that noise dominates)."""
    lm64 = float64_copy(family_of(lm))
    means = clean_means(lm64)
    eps = 1e-2
    for prompt, gold in zip(PROMPTS, gold_ids(lm64)):  # one prompt a batch: see float64_copy
        result = head_gradients(lm64, [prompt], [gold])
        batch = collate(lm64, encode(lm64, [prompt]))
        estimates = linear_estimates(result, means)
        scale = float(estimates.abs().max())
        for layer, head in all_heads(lm64):
            up = stepped_probabilities(lm64, batch, [gold], result, means, layer, head, eps)
            down = stepped_probabilities(lm64, batch, [gold], result, means, layer, head, -eps)
            slopes = (up - down) / (2 * eps)
            torch.testing.assert_close(slopes, estimates[:, layer, head], rtol=3e-3, atol=2e-3 * scale,
                                       msg=lambda m, at=(layer, head): f"head {at}: {m}")  # fmt: skip


def test_estimate_is_the_limit_of_small_steps(lm):
    """float64: the forward-difference error shrinks in proportion to the step (first order), so the estimate
    is the exact effect's slope at eps -> 0."""
    lm64 = float64_copy(family_of(lm))
    means = clean_means(lm64)
    errors = {1e-2: 0.0, 1e-3: 0.0}
    norm = 0.0
    for prompt, gold in zip(PROMPTS, gold_ids(lm64)):  # one prompt a batch: see float64_copy
        result = head_gradients(lm64, [prompt], [gold])
        batch = collate(lm64, encode(lm64, [prompt]))
        base = gold_probabilities(lm64, batch, [gold])
        estimates = linear_estimates(result, means).flatten(1)
        norm += float(estimates.pow(2).sum())
        for eps in errors:
            slopes = torch.stack([(stepped_probabilities(lm64, batch, [gold], result, means, li, j, eps) - base) / eps
                                  for li, j in all_heads(lm64)], dim=1)  # fmt: skip
            errors[eps] += float((slopes - estimates).pow(2).sum())
    assert errors[1e-3] ** 0.5 < errors[1e-2] ** 0.5 / 5, errors
    assert errors[1e-3] ** 0.5 < 1e-2 * norm**0.5, errors


def test_estimate_is_zero_when_means_are_the_values(lm):
    """One prompt whose own head outputs are the means: nothing moves, so every estimate is exactly zero."""
    gold = gold_ids(lm)[:1]
    values = head_gradients(lm, PROMPTS[:1], gold).values[0]
    aie, probabilities = gradient_aie(lm, PROMPTS[:1], gold, values)
    assert aie.shape == values.shape[:2] and aie.dtype == torch.float32
    assert torch.equal(aie, torch.zeros_like(aie))
    assert probabilities.shape == (1,) and 0 < float(probabilities[0]) < 1


def test_gradient_aie_is_the_mean_of_the_per_prompt_estimates(lm):
    gold = gold_ids(lm)
    means = clean_means(lm)
    result = head_gradients(lm, PROMPTS, gold)
    aie, probabilities = gradient_aie(lm, PROMPTS, gold, means)
    sites = head_sites(lm)
    assert aie.shape == (len(sites), sites[0].n_heads) and aie.dtype == torch.float32
    torch.testing.assert_close(aie.double(), linear_estimates(result, means).mean(0), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(probabilities, result.probabilities, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ no side effects
def _hook_counts(model: torch.nn.Module) -> list[tuple[int, int, int]]:
    return [(len(m._forward_pre_hooks), len(m._forward_hooks), len(m._backward_hooks)) for m in model.modules()]


def test_leaves_no_hooks_and_no_parameter_grads(lm):
    gold = gold_ids(lm)
    batch = collate(lm, encode(lm, PROMPTS))
    before_logits = next_token_logits(lm, batch)
    before_hooks = _hook_counts(lm.model)
    outside = head_gradients(lm, PROMPTS, gold)
    with torch.no_grad():
        inside = head_gradients(lm, PROMPTS, gold)
    with torch.inference_mode():
        in_inference = head_gradients(lm, PROMPTS, gold)
    assert torch.is_grad_enabled()
    for other in (inside, in_inference):
        for name in ("values", "grads", "probabilities"):
            assert torch.equal(getattr(other, name), getattr(outside, name)), name
            assert not getattr(other, name).requires_grad
    assert float(outside.grads.abs().max()) > 0
    assert _hook_counts(lm.model) == before_hooks
    assert torch.equal(next_token_logits(lm, batch), before_logits)
    assert all(p.grad is None for p in lm.model.parameters())


def test_hooks_are_removed_when_the_forward_raises(lm):
    before_hooks = _hook_counts(lm.model)

    def fail(module, args, output):
        raise RuntimeError("boom in the last block")

    handle = lm.adapter.layers[-1].register_forward_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            head_gradients(lm, PROMPTS, gold_ids(lm))
    finally:
        handle.remove()
    assert _hook_counts(lm.model) == before_hooks
    assert all(p.grad is None for p in lm.model.parameters())


# ------------------------------------------------------------------------------------------------ batching
def test_batched_equals_one_prompt_at_a_time(lm):
    gold = gold_ids(lm)
    batched = head_gradients(lm, PROMPTS, gold, batch_size=len(PROMPTS))
    single = [head_gradients(lm, [p], [g], batch_size=1) for p, g in zip(PROMPTS, gold)]
    sites = head_sites(lm)
    assert batched.values.shape == (len(PROMPTS), len(sites), sites[0].n_heads, sites[0].head_dim)
    assert batched.grads.shape == batched.values.shape and batched.probabilities.shape == (len(PROMPTS),)
    assert {t.dtype for t in (batched.values, batched.grads, batched.probabilities)} == {torch.float32}
    for name in ("values", "grads", "probabilities"):
        ours = getattr(batched, name)
        theirs = torch.cat([getattr(s, name) for s in single])
        scale = float(theirs.abs().max())
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5 * scale, msg=lambda m, n=name: f"{n}: {m}")


def test_results_follow_the_prompt_order_not_the_length_order(lm):
    """Batches are sorted by length: row i of the result is still prompt i."""
    gold = gold_ids(lm)
    forward = head_gradients(lm, PROMPTS, gold, batch_size=2)
    backward = head_gradients(lm, PROMPTS[::-1], gold[::-1], batch_size=2)
    torch.testing.assert_close(forward.grads, backward.grads.flip(0), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(forward.probabilities, backward.probabilities.flip(0), rtol=1e-5, atol=1e-8)


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_input_is_a_taskvec_error_naming_the_value(lm):
    gold = gold_ids(lm)
    sites = head_sites(lm)
    shape = (len(sites), sites[0].n_heads, sites[0].head_dim)
    with pytest.raises(TaskvecError, match="no prompts"):
        head_gradients(lm, [], [])
    with pytest.raises(TaskvecError, match="2 gold token ids for 3 prompts"):
        head_gradients(lm, PROMPTS, gold[:2])
    with pytest.raises(TaskvecError, match="one string"):
        head_gradients(lm, "abc", [1, 2, 3])
    with pytest.raises(TaskvecError, match="prompt ''"):
        head_gradients(lm, ["ab", ""], [1, 2])
    with pytest.raises(TaskvecError, match="gold token id 100000 "):
        head_gradients(lm, PROMPTS, [gold[0], 100000, gold[2]])
    with pytest.raises(TaskvecError, match="gold token id -1 "):
        head_gradients(lm, PROMPTS, [gold[0], -1, gold[2]])
    with pytest.raises(TaskvecError, match=r"gold token id 1\.5 "):
        head_gradients(lm, PROMPTS, [gold[0], 1.5, gold[2]])
    with pytest.raises(TaskvecError, match=r"torch\.float32 tensor"):
        head_gradients(lm, PROMPTS, torch.tensor(gold, dtype=torch.float32))
    with pytest.raises(TaskvecError, match="batch_size=0"):
        head_gradients(lm, PROMPTS, gold, batch_size=0)
    wrong = (shape[0] + 1, *shape[1:])
    with pytest.raises(TaskvecError, match=rf"means of shape \({wrong[0]}, {wrong[1]}, {wrong[2]}\); expected"):
        gradient_aie(lm, PROMPTS, gold, torch.zeros(wrong))
    with pytest.raises(TaskvecError, match="means is a list; expected a tensor"):
        gradient_aie(lm, PROMPTS, gold, [[0.0]])
    with pytest.raises(TaskvecError, match="NaN or infinite"):
        gradient_aie(lm, PROMPTS, gold, torch.full(shape, float("nan")))
    with pytest.raises(TaskvecError, match="no prompts"):
        gradient_aie(lm, [], [], torch.zeros(shape))
    # a gold tensor of integers is accepted
    result = head_gradients(lm, PROMPTS, torch.tensor(gold))
    assert result.probabilities.shape == (len(PROMPTS),)
