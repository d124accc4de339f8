"""The shortlisted argmax (bf16 pass + exact float32 slices) equals the plain float32 scan exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from taskvec.engine.sweep import argmax_over_vocab
from taskvec.engine.vocab_argmax import exact_argmax_with_shortlist, shortlist_applies


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
    value, index = exact_argmax_with_shortlist(unembedding, hidden, slice_rows)
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


def test_used_by_argmax_over_vocab_only_where_it_applies():
    unembedding = nn.Linear(32, 700, bias=False)
    hidden = torch.randn(16, 32)
    assert shortlist_applies(unembedding, hidden)
    assert not shortlist_applies(unembedding, hidden[:2])  # too few rows to pay off
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
