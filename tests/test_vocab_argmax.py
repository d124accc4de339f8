"""The shortlisted argmax (bf16 pass + exact float32 slices) equals the plain float32 scan exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from taskvec.engine.vocab_argmax import (
    MARGIN_RESOLUTION,
    argmax_and_margin,
    argmax_over_vocab,
    exact_argmax_with_shortlist,
    shortlist_applies,
)


def plain_scan(weight: torch.Tensor, hidden: torch.Tensor, slice_rows: int) -> torch.Tensor:
    best_value = torch.full((hidden.shape[0],), -torch.inf)
    best_index = torch.zeros(hidden.shape[0], dtype=torch.long)
    for start in range(0, weight.shape[0], slice_rows):
        value, index = F.linear(hidden, weight[start : start + slice_rows]).max(dim=-1)
        better = value > best_value
        best_value = torch.where(better, value, best_value)
        best_index = torch.where(better, index + start, best_index)
    return best_index


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("slice_rows", [64, 500, 4096])
def test_equals_the_plain_scan(seed, slice_rows):
    generator = torch.Generator().manual_seed(seed)
    unembedding = nn.Linear(96, 3000, bias=False)
    unembedding.weight.data = torch.randn(3000, 96, generator=generator)
    unembedding.weight.data[2900:] = unembedding.weight.data[100:200]  # exact ties across slices: first index wins
    hidden = torch.randn(40, 96, generator=generator) * (1 + 3 * seed)
    hidden[:5] = unembedding.weight.data[100:105] * 2  # rows whose best logit is tied with a later duplicate
    value, index, margin = exact_argmax_with_shortlist(unembedding, hidden, slice_rows)
    expected = plain_scan(unembedding.weight.data, hidden, slice_rows)

    # Tokens 2900..2999 duplicate 100..199: a tie between copies may go either way (float32 rounding decides),
    # any other difference from the plain scan is a bug.
    def same_token(a: int, b: int) -> bool:
        return a == b or {a, b} in ({t, t + 2800} for t in range(100, 200))

    assert all(same_token(int(a), int(b)) for a, b in zip(index, expected))
    assert all(int(i) in (100 + r, 2900 + r) for r, i in enumerate(index[:5]))
    full = F.linear(hidden, unembedding.weight.data)
    torch.testing.assert_close(value, full.gather(1, index[:, None])[:, 0])
    torch.testing.assert_close(value, full.max(dim=1).values)
    # The margin is a lower bound of the gap to the runner-up, and exact where the runner-up was computed.
    top2 = full.topk(2, dim=1).values
    gap = top2[:, 0] - top2[:, 1]
    rounding = 1e-5 * top2[:, 0].abs() + 1e-4  # products of different row subsets differ in the last bits
    assert bool((margin <= gap + rounding).all())
    assert bool((margin[:5].abs() <= rounding[:5]).all())  # the tied duplicates: no gap


@pytest.mark.parametrize("rows", [3, 40])
def test_margins_of_argmax_over_vocab(rows):
    generator = torch.Generator().manual_seed(7)
    unembedding = nn.Linear(64, 2000, bias=False)
    unembedding.weight.data = torch.randn(2000, 64, generator=generator)
    hidden = torch.randn(rows, 64, generator=generator) * 4
    hidden[-2:] = unembedding.weight.data[5] * 0.5 + unembedding.weight.data[9] * 0.5  # near-ties
    ids, margin = argmax_and_margin(unembedding, hidden, 256, with_margin=True)
    full = F.linear(hidden, unembedding.weight.data)
    assert torch.equal(ids, full.argmax(dim=1))
    top2 = full.topk(2, dim=1).values
    gap = top2[:, 0] - top2[:, 1]
    assert bool((margin <= gap + 1e-4).all())
    assert bool((margin >= 0).all())
    if rows < 8:
        with_bias = nn.Linear(64, 2000, bias=True)  # the plain scan: exact margins
        with_bias.weight.data, with_bias.bias.data = unembedding.weight.data, torch.zeros(2000)
        torch.testing.assert_close(argmax_and_margin(with_bias, hidden, 256, with_margin=True)[1], gap)
    close = gap < MARGIN_RESOLUTION  # close calls get their exact gap on the shortlist path too
    torch.testing.assert_close(margin[close], gap[close], atol=1e-4, rtol=1e-5)
    assert bool((margin[~close] >= MARGIN_RESOLUTION - 1e-4).all())


def test_used_by_argmax_over_vocab_only_where_it_applies(monkeypatch):
    from taskvec.engine import vocab_argmax

    unembedding = nn.Linear(32, 700, bias=False)
    hidden = torch.randn(16, 32)
    assert isinstance(vocab_argmax.bf16_products_fast(), bool)  # measured on this CPU, once
    monkeypatch.setattr(vocab_argmax, "bf16_products_fast", lambda: False)  # a CPU without bf16 matrix units
    assert not shortlist_applies(unembedding, hidden)
    assert torch.equal(argmax_over_vocab(unembedding.float(), hidden, 128), plain_scan(unembedding.weight, hidden, 128))
    monkeypatch.setattr(vocab_argmax, "bf16_products_fast", lambda: True)
    assert shortlist_applies(unembedding, hidden)
    assert shortlist_applies(unembedding, hidden[:1])  # it halves the memory read even for one row
    assert not shortlist_applies(nn.Linear(32, 700, bias=True), hidden)
    assert not shortlist_applies(unembedding.to(torch.bfloat16), hidden)
    assert torch.equal(argmax_over_vocab(unembedding.float(), hidden, 128), plain_scan(unembedding.weight, hidden, 128))


def test_weight_change_rebuilds_the_bf16_copy():
    unembedding = nn.Linear(16, 300, bias=False)
    hidden = torch.randn(10, 16)
    first = exact_argmax_with_shortlist(unembedding, hidden, 64)[1]
    with torch.no_grad():
        unembedding.weight.mul_(-1)
    second = exact_argmax_with_shortlist(unembedding, hidden, 64)[1]
    assert torch.equal(second, plain_scan(unembedding.weight, hidden, 64))
    assert not torch.equal(first, second)


@pytest.mark.parametrize("seed", range(3))
def test_slice_bound_covers_every_logit(seed):
    """No float32 logit of a slice exceeds its bf16 maximum plus the bound, even for hidden states with
    outlier coordinates (like a final norm's output) and rows of very different norms."""
    from taskvec.engine.vocab_argmax import _U, ShortlistCache, slice_bound

    generator = torch.Generator().manual_seed(seed)
    unembedding = nn.Linear(128, 2048, bias=False)
    unembedding.weight.data = torch.randn(2048, 128, generator=generator) * torch.rand(2048, 1, generator=generator)
    hidden = torch.randn(64, 128, generator=generator) * 10
    hidden[:, :4] *= 50  # a few large coordinates
    w16, norms = ShortlistCache().weights(unembedding, 256)
    h16 = hidden.bfloat16()
    approx = F.linear(h16, w16).float().view(64, 8, 256)
    exact = F.linear(hidden, unembedding.weight.detach()).view(64, 8, 256)
    approx_max = approx.amax(-1)
    upper = approx_max + slice_bound(hidden, h16, norms) + approx_max.abs() * (_U / (1 - _U))
    assert bool((exact.amax(-1) <= upper).all())
    lower = approx.amin(-1) - slice_bound(hidden, h16, norms) - approx.amin(-1).abs() * (_U / (1 - _U))
    assert bool((exact.amin(-1) >= lower).all())
    # and it is tight: within a few times the largest actual error
    assert float(slice_bound(hidden, h16, norms).max()) < 20 * float((exact - approx).abs().max())
