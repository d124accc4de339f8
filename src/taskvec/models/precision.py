"""Mixed precision: the decoder blocks' matrix products in bfloat16, everything else in float32.

``load_model(..., dtype="mixed")`` keeps the model in float32 (embeddings, norms, residual stream,
attention, unembedding) and runs only the linear layers inside the decoder blocks in bfloat16, which
CPUs with bf16 matrix units do several times faster. Compared with a model cast to bfloat16 whole, the
residual stream keeps float32 precision, so far fewer predictions change (measured in
``bench/bench_run.py``).

The float32 weights stay in place: :func:`exact_products` switches a model back to float32 products,
which is how close calls of a mixed-precision run are recomputed exactly (see
:mod:`taskvec.engine.close_calls`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

MIXED = "mixed"


class MixedLinear(nn.Module):
    """A linear layer whose product runs in bfloat16 (input and weight rounded, result back in the
    input's dtype), or in the weight's own dtype while ``exact`` is set."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # the same parameters: state dicts and checksums are unchanged
        self.bias = linear.bias
        self.register_buffer("weight_bf16", linear.weight.detach().to(torch.bfloat16), persistent=False)
        self.exact = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.exact:
            return F.linear(x, self.weight, self.bias)
        y = F.linear(x.to(torch.bfloat16), self.weight_bf16).to(x.dtype)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def enable_mixed_precision(blocks: nn.ModuleList) -> int:
    """Replace every float32 ``nn.Linear`` inside the decoder blocks by a :class:`MixedLinear`; returns
    how many were replaced."""
    replaced = 0
    for block in blocks:
        for parent in list(block.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear and child.weight.dtype == torch.float32:
                    setattr(parent, name, MixedLinear(child))
                    replaced += 1
    return replaced


def mixed_layers(model: nn.Module) -> list[MixedLinear]:
    return [m for m in model.modules() if isinstance(m, MixedLinear)]


def is_mixed(model: nn.Module) -> bool:
    return any(isinstance(m, MixedLinear) for m in model.modules())


@contextmanager
def exact_products(model: nn.Module) -> Iterator[None]:
    """Inside the block, a mixed-precision model computes in float32 like a plain float32 model."""
    layers = mixed_layers(model)
    before = [m.exact for m in layers]
    for m in layers:
        m.exact = True
    try:
        yield
    finally:
        for m, was in zip(layers, before):
            m.exact = was
